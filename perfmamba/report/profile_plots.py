"""PNG plots of a profile run (matplotlib, Agg backend): share vs L, time vs L, roofline, peak memory vs L.

Each figure has one panel per (model, mode) (first batch size); colours are fixed per component so that
all figures read alike.
"""

from __future__ import annotations

import math
import os

from perfmamba.fileio import save_figure_atomic
from perfmamba.profiling.records import OK, ProfileRun
from perfmamba.report.format import human_bytes, human_count, human_seconds
from perfmamba.report.profile_tables import components_of, groups, short_name

PLOTS = {"share": "share_vs_L.png", "time": "time_vs_L.png", "roofline": "roofline.png", "memory": "memory_vs_L.png"}

_COLORS = {"embedding": "#7f7f7f", "norm": "#bcbd22", "in_proj": "#1f77b4", "conv1d": "#ff7f0e",
           "x_proj": "#2ca02c", "dt_proj": "#98df8a", "ssm": "#d62728", "gate_norm": "#9467bd",
           "out_proj": "#17becf", "lm_head": "#8c564b"}
_MARKERS = {"mamba1": "o", "mamba2": "s"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and x == x and x > 0


def _panels(run: ProfileRun) -> list:
    """[(key, [ConfigRecord by L])] for the first batch size of each (model, mode)."""
    seen, out = set(), []
    for key, confs in groups(run).items():
        model, _f, _s, mode, _b = key
        if (model, mode) not in seen:
            seen.add((model, mode))
            out.append((key, confs))
    return out


def _format_axis(axis, fn) -> None:
    """Human tick labels (1 ms, 4 MiB, 10 G) on a log axis; minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fn(v)))
    axis.set_minor_formatter(NullFormatter())


def _length_axis(ax, seqlens) -> None:
    """log2 x axis labelled at the measured lengths."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(seqlens))
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t // 1024}K" if t >= 1024 and t % 1024 == 0 else str(t) for t in ticks])
        from matplotlib.ticker import NullFormatter
        ax.xaxis.set_minor_formatter(NullFormatter())


def _grid(plt, n: int, width: float = 5.2, height: float = 3.8):
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _save(fig, path: str) -> None:
    save_figure_atomic(fig, path, dpi=110)


def _title(key) -> str:
    model, _family, scope, mode, batch = key
    return f"{short_name(model)} — {scope} {mode}, batch {batch}"


def plot_share(run: ProfileRun, path: str) -> None:
    plt = _plt()
    panels = _panels(run)
    fig, axes = _grid(plt, len(panels))
    for ax, (key, confs) in zip(axes, panels):
        labels = [f"{c.seqlen // 1024}K" if c.seqlen >= 1024 and c.seqlen % 1024 == 0 else str(c.seqlen)
                  for c in confs]
        bottoms = [0.0] * len(confs)
        per_conf = [{r.component: r for r in components_of(run, c)} for c in confs]
        names = list(per_conf[0]) if per_conf else []
        for name in names:
            vals = [(d[name].time_share if d.get(name) is not None and d[name].status == OK else 0.0)
                    for d in per_conf]
            vals = [v * 100 if _ok(v) else 0.0 for v in vals]
            if not any(vals):
                continue
            ax.bar(labels, vals, bottom=bottoms, color=_COLORS.get(name), label=name, width=0.7)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
        for i, c in enumerate(confs):
            if c.status != OK:
                ax.text(i, 50, c.status.upper(), ha="center", va="center", rotation=90, color="crimson")
        ax.set_ylim(0, 100)
        ax.set_xlabel("sequence length L" if key[3] == "prefill" else "context length L (one decode step)")
        ax.set_ylabel("share of summed component time (%)")
        ax.set_title(_title(key), fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Where the time goes: component share vs L")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_time(run: ProfileRun, path: str) -> None:
    plt = _plt()
    panels = _panels(run)
    fig, axes = _grid(plt, len(panels))
    for ax, (key, confs) in zip(axes, panels):
        per_conf = [{r.component: r for r in components_of(run, c)} for c in confs]
        names = list(per_conf[0]) if per_conf else []
        for name in names:
            pts = [(c.seqlen, d[name].time_median_s) for c, d in zip(confs, per_conf)
                   if d.get(name) is not None and d[name].status == OK and _ok(d[name].time_median_s)]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=_COLORS.get(name), label=name)
        whole = [(c.seqlen, c.whole_time_median_s) for c in confs if c.status == OK and _ok(c.whole_time_median_s)]
        if whole:
            ax.plot(*zip(*whole), "k--", marker="x", ms=4, label="whole (one call)")
        for c in confs:
            if c.status != OK:
                ax.axvline(c.seqlen, color="crimson", ls=":", lw=1)
                ax.text(c.seqlen, 0.5, c.status.upper(), transform=ax.get_xaxis_transform(), color="crimson",
                        rotation=90, fontsize=8)
        _length_axis(ax, [c.seqlen for c in confs])
        ax.set_yscale("log")
        ax.set_xlabel("L")
        ax.set_ylabel("time per call")
        _format_axis(ax.yaxis, human_seconds)
        ax.set_title(_title(key), fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Time vs L per component (log-log)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_roofline(run: ProfileRun, path: str) -> None:
    plt = _plt()
    ceil = run.ceilings
    peak, bw, vec = ceil.get("matmul_flops_per_s"), ceil.get("copy_bytes_per_s"), ceil.get("vector_flops_per_s")
    modes = [m for m in ("prefill", "decode") if any(c.mode == m for c in run.configs)]
    fig, axes = _grid(plt, max(len(modes), 1), width=6.2, height=4.6)
    for ax, mode in zip(axes, modes):
        pts = [r for r in run.components if r.mode == mode and r.status == OK and _ok(r.intensity)
               and _ok(r.achieved_flops_per_s)]
        if not pts or not (peak and bw):
            ax.set_title(f"{mode}: nothing measured")
            continue
        lo = min(min(r.intensity for r in pts), peak / bw) / 4
        hi = max(max(r.intensity for r in pts), peak / bw) * 4
        xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(xs, [min(peak, x * bw) for x in xs], "k-", lw=1.5,
                label=f"measured roof: {human_count(peak)}FLOP/s matmul, {human_count(bw)}B/s")
        if vec and vec < peak:
            ax.plot(xs, [min(vec, x * bw) for x in xs], "k--", lw=1,
                    label=f"vector roof (fp32, non-matmul work): {human_count(vec)}FLOP/s")
        if ceil.get("datasheet_flops_per_s") and ceil.get("datasheet_bytes_per_s"):
            dp, db = ceil["datasheet_flops_per_s"], ceil["datasheet_bytes_per_s"]
            ax.plot(xs, [min(dp, x * db) for x in xs], color="gray", ls=":", lw=1, label="datasheet roof")
        seqlens = sorted({r.seqlen for r in pts})
        size = {L: 10 + 50 * i / max(len(seqlens) - 1, 1) for i, L in enumerate(seqlens)}
        for r in pts:
            ax.scatter(r.intensity, r.achieved_flops_per_s, s=size[r.seqlen], c=_COLORS.get(r.component, "k"),
                       marker=_MARKERS.get(r.family, "^"), alpha=0.75, edgecolors="none")
        for name in sorted({r.component for r in pts}, key=list(_COLORS).index):
            ax.scatter([], [], c=_COLORS.get(name), marker="o", label=name)
        for fam, mk in _MARKERS.items():
            if any(r.family == fam for r in pts):
                ax.scatter([], [], c="white", edgecolors="k", marker=mk, label=fam)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte, analytic)")
        ax.set_ylabel("achieved FLOP/s")
        _format_axis(ax.yaxis, lambda v: human_count(v))
        ax.set_title(f"{mode}: components at every L (marker grows with L)", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Roofline — {run.environment.get('device', '')}, {run.settings.get('dtype', '')}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_memory(run: ProfileRun, path: str) -> None:
    plt = _plt()
    modes = [m for m in ("prefill", "decode") if any(c.mode == m for c in run.configs)]
    fig, axes = _grid(plt, max(len(modes), 1))
    measured_any = False
    for ax, mode in zip(axes, modes):
        for i, (key, confs) in enumerate(p for p in _panels(run) if p[0][3] == mode):
            color = f"C{i}"
            meas = [(c.seqlen, c.peak_mem_bytes) for c in confs if c.status == OK and _ok(c.peak_mem_bytes)]
            if meas:
                measured_any = True
                ax.plot(*zip(*meas), "-o", ms=3, color=color, label=f"{short_name(key[0])}: measured peak")
            act = [(c.seqlen, c.activation_bytes) for c in confs if _ok(c.activation_bytes)]
            if act:
                ax.plot(*zip(*act), "--", color=color, label=f"{short_name(key[0])}: activations (analytic)")
            state = [(c.seqlen, c.state_cache_bytes) for c in confs if _ok(c.state_cache_bytes)]
            if state:
                ax.plot(*zip(*state), ":", color=color, label=f"{short_name(key[0])}: state cache")
            for c in confs:
                if c.status != OK:
                    ax.axvline(c.seqlen, color="crimson", ls=":", lw=1)
        _length_axis(ax, [c.seqlen for c in run.configs if c.mode == mode])
        from matplotlib.ticker import LogLocator
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_locator(LogLocator(base=4))
        ax.set_xlabel("L")
        ax.set_ylabel("bytes")
        _format_axis(ax.yaxis, human_bytes)
        ax.set_title(f"{mode}" + ("" if measured_any else " (measured peak n/a on this device)"), fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Memory vs L (peak allocated above inputs during one call)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_plots(run: ProfileRun, out_dir: str) -> list:
    """Write every plot; returns the file names (relative to out_dir)."""
    makers = {"share": plot_share, "time": plot_time, "roofline": plot_roofline, "memory": plot_memory}
    for key, fn in makers.items():
        fn(run, os.path.join(out_dir, PLOTS[key]))
    return [PLOTS[k] for k in makers]
