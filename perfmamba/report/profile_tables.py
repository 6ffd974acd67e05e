"""Tables of a profile run (and of a comparison), as rows of strings: printed with rich, written as Markdown.

Human formatting lives here: records keep plain numbers.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

from perfmamba.profiling.components import profiled_components
from perfmamba.profiling.records import FUSED, OK, ProfileRun
from perfmamba.report.format import human_bytes, human_count, human_seconds


def short_name(model: str) -> str:
    """A checkpoint path shown by its directory name (records keep the name as given)."""
    return os.path.basename(os.path.normpath(model)) if ("/" in model or os.sep in model) else model


def _isnum(x) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))


def pct(x, signed: bool = False) -> str:
    if not _isnum(x):
        return "-"
    return f"{100 * x:+.0f}%" if signed else f"{100 * x:.0f}%"


def secs(x) -> str:
    return human_seconds(x) if _isnum(x) else "-"


def nbytes(x) -> str:
    return human_bytes(x) if _isnum(x) else "n/a"


def rate(x, unit: str) -> str:
    return f"{human_count(x)}{unit}" if _isnum(x) else "-"


def flops(x) -> str:
    return human_count(x) if _isnum(x) else "-"


def number(x, fmt: str = "{:.2f}") -> str:
    return fmt.format(x) if _isnum(x) else "-"


def groups(run: ProfileRun) -> "OrderedDict":
    """(model, family, scope, mode, batch) -> [ConfigRecord sorted by L], in run order."""
    out = OrderedDict()
    for c in run.configs:
        out.setdefault((c.model, c.family, c.scope, c.mode, c.batch), []).append(c)
    for k in out:
        out[k].sort(key=lambda c: c.seqlen)
    return out


def components_of(run: ProfileRun, conf) -> list:
    """The ComponentRecords of one configuration, in canonical order."""
    rows = [r for r in run.components if (r.model, r.scope, r.mode, r.seqlen, r.batch) ==
            (conf.model, conf.scope, conf.mode, conf.seqlen, conf.batch)]
    order = {name: i for i, name in enumerate(profiled_components(conf.family, conf.scope))}
    return sorted(rows, key=lambda r: order.get(r.component, 99))


# ---------------------------------------------------------------------------------------------- summary
SUMMARY_HEADERS = ("model", "mode", "batch", "L", "status", "time", "Σ parts vs whole", "ssm share", "top part",
                   "ssm bound", "tokens/s", "kernels", "GPU busy", "peak mem", "activations")
SHORT_HEADERS = ("model", "mode", "B", "L", "status", "time", "Σ/whole", "ssm", "top part", "ssm bound", "tok/s",
                 "kernels", "GPU busy", "peak mem", "act.")
_EMPTY = ("-", "n/a", "")


def drop_empty_columns(headers, rows) -> tuple:
    """Leave out the columns that hold nothing in any row (e.g. GPU-only columns on a CPU run)."""
    keep = [i for i in range(len(headers)) if not rows or any(row[i] not in _EMPTY for row in rows)]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]


def summary_rows(run: ProfileRun) -> list:
    rows = []
    for c in run.configs:
        comps = components_of(run, c)
        if c.status != OK:
            rows.append([short_name(c.model), c.mode, str(c.batch), str(c.seqlen), c.status.upper()] + ["-"] * 9
                        + [nbytes(c.activation_bytes)])
            continue
        ran = [r for r in comps if r.status == OK]
        top = max(ran, key=lambda r: r.time_median_s) if ran else None
        ssm = next((r for r in comps if r.component == "ssm"), None)
        # busy time comes from a profiled call and wall time from unprofiled ones: shown at most 100%
        busy = (pct(min(c.gpu_busy_fraction, 1.0)) + (" ⚠ launch" if c.launch_bound else "")
                if _isnum(c.gpu_busy_fraction) else "n/a")
        rows.append([short_name(c.model), c.mode, str(c.batch), str(c.seqlen), c.status, secs(c.whole_time_median_s),
                     pct(c.sum_vs_whole, signed=True), pct(c.ssm_time_share),
                     f"{top.component} {pct(top.time_share)}" if top else "-", ssm.bound if ssm else "-",
                     rate(c.tokens_per_s, ""), number(c.kernels, "{:.0f}"), busy, nbytes(c.peak_mem_bytes),
                     nbytes(c.activation_bytes)])
    return rows


def wide_console():
    """A rich Console; written to a log or a pipe, 160 columns wide rather than squeezed into 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def print_summary(run: ProfileRun, console=None) -> None:
    from rich.table import Table

    console = console or wide_console()
    headers, rows = drop_empty_columns(SHORT_HEADERS, summary_rows(run))
    table = Table(title=f"perfmamba profile — {run.environment.get('device', '')}, {run.settings.get('dtype', '')}, "
                        f"backend {run.settings.get('resolved_backend', '')}, {run.settings.get('scope', '')}")
    for h in headers:
        table.add_column(h, justify="left" if h in ("model", "mode", "status", "top part", "ssm bound") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ---------------------------------------------------------------------------------------------- markdown
def markdown_table(headers, rows) -> str:
    def cell(x):
        return str(x).replace("|", "\\|")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def time_by_length_rows(run: ProfileRun, confs: list) -> tuple:
    """Rows: component; columns: each L -> 'time (share)'; last row the whole unit."""
    headers = ["component"] + [f"L={c.seqlen}" for c in confs]
    per_conf = [{r.component: r for r in components_of(run, c)} for c in confs]
    names = list(per_conf[0]) if per_conf else []
    rows = []
    for name in names:
        row = [name]
        for c, comps in zip(confs, per_conf):
            r = comps.get(name)
            if r is None or c.status != OK:
                row.append(c.status.upper() if c.status != OK else "-")
            elif r.status == FUSED:
                row.append(f"in {r.fused_into}")
            else:
                row.append(f"{secs(r.time_median_s)} ({pct(r.time_share)})")
        rows.append(row)
    rows.append(["**whole (one call)**"] + [secs(c.whole_time_median_s) if c.status == OK else c.status.upper()
                                            for c in confs])
    rows.append(["Σ parts vs whole"] + [pct(c.sum_vs_whole, signed=True) for c in confs])
    return headers, rows


DETAIL_HEADERS = ("component", "time [p10–p90]", "share", "FLOPs", "matmul FLOPs", "bytes", "FLOP/B", "FLOP/s",
                  "B/s", "of roof", "bound", "kernels", "GPU busy", "peak mem", "activations", "state")


def detail_rows(run: ProfileRun, conf) -> tuple:
    rows = []
    for r in components_of(run, conf):
        if r.status == FUSED:
            rows.append([r.component, f"fused into {r.fused_into}"] + ["-"] * (len(DETAIL_HEADERS) - 2))
            continue
        rows.append([r.component, f"{secs(r.time_median_s)} [{secs(r.time_p10_s)}–{secs(r.time_p90_s)}]",
                     pct(r.time_share), flops(r.flops), flops(r.matmul_flops), nbytes(r.bytes),
                     number(r.intensity), rate(r.achieved_flops_per_s, "FLOP/s"),
                     rate(r.achieved_bytes_per_s, "B/s"), pct(r.roofline_fraction), r.bound or "-",
                     number(r.kernels, "{:.0f}"), secs(r.gpu_time_s), nbytes(r.peak_mem_bytes),
                     nbytes(r.activation_bytes),
                     nbytes(r.state_read_bytes + r.state_write_bytes)])
    return drop_empty_columns(DETAIL_HEADERS, rows)


SCALING_HEADERS = ("component", "L range", "time slope", "time slope, 2 longest L", "peak-mem slope",
                   "activation slope", "FLOP slope")


def scaling_rows(run: ProfileRun, key: tuple) -> list:
    model, _family, scope, mode, batch = key
    rows = []
    for s in run.scaling:
        if (s.model, s.scope, s.mode, s.batch) == (model, scope, mode, batch):
            rows.append([s.component, f"{s.seqlen_min}–{s.seqlen_max} ({s.n_points})", number(s.time_slope),
                         number(s.time_slope_tail), number(s.peak_mem_slope), number(s.activation_slope),
                         number(s.flops_slope)])
    return drop_empty_columns(SCALING_HEADERS, rows)


LAUNCH_HEADERS = ("model", "mode", "batch", "L", "kernels", "host time", "GPU busy", "wall", "GPU busy share", "flag")


def launch_rows(run: ProfileRun) -> list:
    rows = []
    for c in run.configs:
        if c.status == OK and _isnum(c.kernels):
            rows.append([short_name(c.model), c.mode, str(c.batch), str(c.seqlen), f"{c.kernels:.0f}", secs(c.host_s),
                         secs(c.gpu_busy_s), secs(c.wall_s), pct(min(c.gpu_busy_fraction, 1.0)),
                         "GPU waits for launches" if c.launch_bound else ""])
    return rows


# ---------------------------------------------------------------------------------------------- compare
COMPARE_HEADERS = ("model A → B", "mode", "batch", "L", "component", "time A", "time B", "time B/A", "FLOPs B/A",
                   "bytes B/A", "peak mem B/A", "activations B/A")


def compare_rows(rows: list) -> list:
    def pair(r):
        a, b = short_name(r.model_a), short_name(r.model_b)
        return a if a == b else f"{a} → {b}"

    return [[pair(r), r.mode, str(r.batch),
             str(r.seqlen), r.component, secs(r.time_a_s), secs(r.time_b_s), number(r.time_ratio, "{:.3g}"),
             number(r.flops_ratio, "{:.3g}"), number(r.bytes_ratio, "{:.3g}"), number(r.peak_mem_ratio, "{:.3g}"),
             number(r.activation_ratio, "{:.3g}")] for r in rows]


def print_compare(rows: list, title: str, console=None) -> None:
    from rich.table import Table

    console = console or wide_console()
    table = Table(title=title)
    for i, h in enumerate(COMPARE_HEADERS):
        table.add_column(h, justify="left" if i < 2 or h == "component" else "right")
    for row in compare_rows(rows):
        table.add_row(*row)
    console.print(table)
