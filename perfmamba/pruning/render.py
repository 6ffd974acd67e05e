"""Files from pruning records: JSON, CSV (plain numbers), Markdown and PNG plots, each written atomically
(temporary name beside the target, then ``os.replace``)."""

from __future__ import annotations

import csv
import io
import math
import os

from perfmamba.fileio import save_figure_atomic, write_text_atomic
from perfmamba.report.format import human_bytes, human_count


def write_csv_atomic(path: str, rows: list) -> None:
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    write_text_atomic(path, buf.getvalue())


def _fmt(v, spec=".4g", none="-"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sizes(sizes) -> str:
    return str(sizes[0]) if len(set(sizes)) == 1 else ",".join(map(str, sizes))


# -------------------------------------------------------------------------------------------- prune
def prune_markdown(rep: dict) -> str:
    b, a = rep["before"], rep["after"]
    lines = [f"# Pruned {rep['model']} ({rep['family']})", "",
             f"Method `{rep['method']}`, ratio {rep['ratio']:g} ({rep['budget']} budget, multiple "
             f"{rep['multiple']}), bridge `{rep['bridge']}`.", "",
             f"Calibration: {rep['calibration']['sequences']} x {rep['calibration']['length']} tokens of "
             f"{rep['calibration']['source']} ({rep['calibration']['split']}).", "",
             _table(["", "before", "after"], [
                 ["d_state per layer", _sizes(b["d_state_per_layer"]), _sizes(a["d_state_per_layer"])],
                 ["parameters", human_count(b["parameters"]), human_count(a["parameters"])],
                 ["state cache per sequence", human_bytes(b["state_cache_bytes_per_sequence"]),
                  human_bytes(a["state_cache_bytes_per_sequence"])],
                 ["bits per byte", _fmt(b.get("bits_per_byte"), ".4f"), _fmt(a.get("bits_per_byte"), ".4f")]])]
    ev = rep.get("evaluation")
    if ev:
        lines += ["", f"Bits per byte on {ev['bytes']} bytes of {ev['source']} ({ev['split']}), context "
                      f"{ev['context']}."]
    errs = rep.get("heldout_layer_error")
    if errs:
        lines += ["", "Relative mixer-output error per layer on held-out text (lower is better):", "",
                  _table(["layer"] + list(errs), [[i] + [_fmt(errs[k][i], ".3f") for k in errs]
                                                  for i in range(len(next(iter(errs.values()))))])]
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in rep["files"]), ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- sweep
def sweep_markdown(res: dict, plots: list) -> str:
    from perfmamba.pruning.sweep import best_tradeoff
    s = res["settings"]
    lines = [f"# State pruning sweep: {res['model']} ({res['family']})", "",
             f"Device: {res['environment']['device']}; torch {res['environment']['torch']}; "
             f"{res['environment']['date']}.", "",
             f"Budget `{s['budget']}`, multiple {s['multiple']}, bridge `{s['bridge']}`; calibration "
             f"{res['calibration']['sequences']} x {res['calibration']['length']} tokens of "
             f"{res['calibration']['source']} ({res['calibration']['split']}); bits per byte on "
             f"{res['evaluation']['bytes']} bytes of {res['evaluation']['source']} ({res['evaluation']['split']}),"
             f" context {res['evaluation']['context']}.  Unpruned: "
             f"{res['baseline_bits_per_byte']:.4f} bits/byte.", ""]
    methods = list(dict.fromkeys(r["method"] for r in res["accuracy"]))
    ratios = sorted(set(r["ratio"] for r in res["accuracy"]))
    by = {(r["method"], r["ratio"]): r for r in res["accuracy"]}
    lines += ["## Bits per byte (change vs unpruned)", "",
              _table(["ratio", "kept"] + methods,
                     [[f"{q:g}", _sizes(by[(methods[0], q)]["kept_sizes"])]
                      + [f"{by[(m, q)]['bits_per_byte']:.4f} ({by[(m, q)]['bpb_change_pct']:+.2f}%)" for m in methods]
                      for q in ratios]), ""]
    if res.get("comparisons"):
        lines += _comparison_table(res)
    if res["speed"]:
        lines += _speed_tables(res)
    best = best_tradeoff(res["rows"])
    if best:
        key = max((k for k in best if k.startswith("prefill_speedup_L")), key=lambda k: int(k.rsplit("L", 1)[1]))
        length = key.rsplit("L", 1)[1]
        mem = best.get("peak_reduction_pct_L" + length)
        mem = f"{mem:.1f}% less prefill peak memory, " if mem is not None else ""
        served = sorted((k for k in best if k.startswith("decode_peak_reduction_pct_B") and best[k] is not None),
                        key=lambda k: int(k.rsplit("B", 1)[1]))
        if served:
            mem += f"{best[served[-1]]:.1f}% less peak memory serving batch {served[-1].rsplit('B', 1)[1]}, "
        lines += [f"**Best within 2% bits/byte:** `{best['method']}` at ratio {best['ratio']:g}: "
                  f"{best[key]:.2f}x prefill at L={length}, {mem}{best['bpb_change_pct']:+.2f}% bits/byte.", ""]
    lines += [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _comparison_table(res: dict) -> list:
    comps = res["comparisons"]
    ref, n, samples = comps[0]["method"], comps[0]["windows"], comps[0]["samples"]
    return [f"## `{ref}` against the other scores, window by window", "",
            f"Difference of the bits/byte changes (`{ref}` minus the other, percentage points of the unpruned "
            f"bits/byte; negative: `{ref}` is better) on the same {n} evaluation windows, with a 95% paired "
            f"bootstrap interval ({samples} resamples of the windows). An interval that contains 0 is a tie "
            f"at this amount of text. Removed in common: of the state channels `{ref}` removes, the share "
            f"that the other score removes too.", "",
            _table(["ratio", "against", "difference", "95% interval", "removed in common"],
                   [[f"{c['ratio']:g}", c["against"], f"{c['diff_pct']:+.2f}",
                     f"{c['low_pct']:+.2f} to {c['high_pct']:+.2f}",
                     "-" if c.get("removed_shared") is None else f"{100 * c['removed_shared']:.0f}%"]
                    for c in comps]), ""]


def _speed_tables(res: dict) -> list:
    base = next((s for s in res["speed"] if s["kept_sizes"] == res["original_sizes"]), None)
    lengths = [p["length"] for p in res["speed"][0]["prefill"]]
    batches = [d["batch"] for d in res["speed"][0]["decode"]]
    # decode peak memory is measured on CUDA only; older results have no such field
    served_peak = any(d.get("peak_bytes") is not None for sp in res["speed"] for d in sp["decode"])
    rows = []
    for sp in res["speed"]:
        row = [_sizes(sp["kept_sizes"])]
        for i, p in enumerate(sp["prefill"]):
            if p["status"] != "ok":
                row += [p["status"], p["status"]]
                continue
            b = base["prefill"][i] if base else None
            speedup = f" ({p['tokens_per_s'] / b['tokens_per_s']:.2f}x)" if b and b["tokens_per_s"] else ""
            mem = human_bytes(p["peak_bytes"]) if p["peak_bytes"] is not None else "-"
            if p["peak_bytes"] is not None and b and b["peak_bytes"]:
                mem += f" ({100 * (p['peak_bytes'] / b['peak_bytes'] - 1):+.1f}%)"
            row += [f"{human_count(p['tokens_per_s'])}{speedup}", mem]
        for i, d in enumerate(sp["decode"]):
            if d["status"] != "ok":
                row += [d["status"]] * (2 if served_peak else 1)
                continue
            b = base["decode"][i] if base else None
            speedup = f" ({d['tokens_per_s'] / b['tokens_per_s']:.2f}x)" if b and b["tokens_per_s"] else ""
            row += [f"{human_count(d['tokens_per_s'])}{speedup}"]
            if served_peak:
                mem = human_bytes(d["peak_bytes"]) if d.get("peak_bytes") is not None else "-"
                if d.get("peak_bytes") is not None and b and b.get("peak_bytes"):
                    mem += f" ({100 * (d['peak_bytes'] / b['peak_bytes'] - 1):+.1f}%)"
                row += [mem]
        row += [human_bytes(sp["decode"][0]["state_cache_bytes"] / batches[0]) if sp["decode"] else "-"]
        rows.append(row)
    header = ["d_state"]
    for length in lengths:
        header += [f"prefill tok/s L={length}", f"peak mem L={length}"]
    for b in batches:
        header += [f"decode tok/s B={b}"] + ([f"serving peak mem B={b}"] if served_peak else [])
    header += ["state cache / seq"]
    graph = "CUDA graph" if res["speed"][0]["prefill"][0].get("cuda_graph") else "eager"
    return ["## Speed and memory (batch 1 prefill; " + graph + f"; {res['speed'][0]['dtype']})", "",
            _table(header, rows), ""]


def sweep_plots(res: dict, directory: str) -> list:
    """PNG files written into ``directory``; returns their names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []

    def save(fig, name):
        save_figure_atomic(fig, os.path.join(directory, name), dpi=120)
        plt.close(fig)
        names.append(name)

    methods = list(dict.fromkeys(r["method"] for r in res["accuracy"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in methods:
        pts = sorted((r["ratio"], r["bits_per_byte"]) for r in res["accuracy"] if r["method"] == m)
        ax.plot(*zip(*pts), marker="o", label=m, linewidth=2.5 if m == "delta" else 1.2)
    ax.set_xlabel("pruning ratio (fraction of state channels removed)")
    ax.set_ylabel("bits per byte (held-out)")
    ax.set_title(f"{res['model']}: accuracy vs pruning ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "bpb_vs_ratio.png")

    if res["speed"]:
        _speed_plots(res, save, plt)
    return names


def _speed_plots(res, save, plt) -> None:
    total0 = sum(res["original_sizes"])
    pts = sorted(res["speed"], key=lambda s: -sum(s["kept_sizes"]))
    x = [1 - sum(s["kept_sizes"]) / total0 for s in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, p0 in enumerate(pts[0]["prefill"]):
        tps = [s["prefill"][i]["tokens_per_s"] for s in pts]
        mem = [s["prefill"][i]["peak_bytes"] for s in pts]
        ax1.plot(x, [v if v is not None else float("nan") for v in tps], marker="o", label=f"L={p0['length']}")
        if any(m is not None for m in mem):
            ax2.plot(x, [m / 2**20 if m is not None else float("nan") for m in mem], marker="o",
                     label=f"L={p0['length']}")
    ax1.set(xlabel="fraction of state channels removed", ylabel="prefill tokens/s", title="prefill throughput")
    ax2.set(xlabel="fraction of state channels removed", ylabel="peak memory (MiB)", title="prefill peak memory")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not ax2.lines:
        ax2.text(0.5, 0.5, "peak memory is measured on CUDA devices only", ha="center", va="center",
                 transform=ax2.transAxes)
    save(fig, "prefill.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, d0 in enumerate(pts[0]["decode"]):
        ax1.plot(x, [s["decode"][i]["tokens_per_s"] or float("nan") for s in pts], marker="o",
                 label=f"batch {d0['batch']}")
    ax2.plot(x, [s["decode"][0]["state_cache_bytes"] / pts[0]["decode"][0]["batch"] / 2**10 for s in pts],
             marker="o")
    ax1.set(xlabel="fraction of state channels removed", ylabel="decode tokens/s", title="decode throughput")
    ax2.set(xlabel="fraction of state channels removed", ylabel="KiB per sequence", title="state cache")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    save(fig, "decode.png")

    rows = res["rows"]
    keys = sorted({k for r in rows for k in r if k.startswith("prefill_speedup_L") and r[k] is not None},
                  key=lambda k: int(k.rsplit("L", 1)[1]))
    if keys:
        key = keys[-1]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for m in dict.fromkeys(r["method"] for r in rows):
            pts_m = [(r[key], r["bpb_change_pct"]) for r in rows if r["method"] == m and r.get(key) is not None]
            if pts_m:
                ax.scatter(*zip(*pts_m), label=m, s=40 if m == "delta" else 20)
        front = _pareto([(r[key], r["bpb_change_pct"]) for r in rows if r.get(key) is not None])
        if front:
            ax.step(*zip(*front), where="post", color="gray", alpha=0.5, label="Pareto front")
        ax.axhline(2.0, color="red", linestyle=":", linewidth=1, label="+2% bits/byte")
        ax.set(xlabel=f"prefill speedup at L={key.rsplit('L', 1)[1]}", ylabel="bits/byte change (%)",
               title="accuracy vs speed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "pareto.png")


def _pareto(points: list) -> list:
    """Points not beaten in both speedup (higher) and bits/byte change (lower), by increasing speedup."""
    front = []
    for sp, loss in sorted(points, key=lambda p: (-p[0], p[1])):
        if not front or loss < front[-1][1]:
            front.append((sp, loss))
    return sorted(front)
