"""`perfmamba profile` and `perfmamba compare`: argument parsing, progress bar, output files.

``register(subparsers)`` adds both commands to the main parser (perfmamba/cli.py).  Every bad option is
one line on stderr and exit status 2 (PerfMambaError, or argparse's own errors, made one line here);
Ctrl-C during a sweep keeps what was finished, written, and exits 130.
"""

from __future__ import annotations

import os
import sys

from perfmamba.errors import PerfMambaError

EXIT_INTERRUPTED = 130


def _one_line_errors(parser, command: str) -> None:
    """argparse prints the usage and the error; make it the error alone, as every other perfmamba error."""

    def error(message: str):
        print(f"perfmamba {command}: error: {message} (see perfmamba {command} --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        # Unknown options would otherwise reach the main parser, which prints its usage as well.
        namespace, extras = parse_known(args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    parser.parse_known_args = parse_known_args


def _split(values) -> list:
    """["64,256", "1024"] -> ["64", "256", "1024"]."""
    if values is None:
        return None
    return [v for item in values for v in str(item).replace(",", " ").split()]


def _int_option(value, name: str, minimum: int):
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) < minimum:
        raise PerfMambaError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    return int(text)


def register(subparsers) -> None:
    from perfmamba.profiling.sweep import CPU_SEQLENS, DEFAULT_MODELS, GPU_SEQLENS

    p = subparsers.add_parser(
        "profile", help="where time, memory and bytes go in Mamba-1 / Mamba-2 blocks, per component, across L",
        description="Profile Mamba blocks (or whole models) per component across sequence lengths: measured time, "
                    "analytic FLOPs and bytes, achieved rates, roofline bound, memory, scaling, launch overhead. "
                    "Writes results.json, components.csv, configs.csv, report.md and PNG plots to --out.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"preset name, demo model (demo-mamba1, demo-mamba2) or checkpoint directory (default: "
                        f"{' '.join(DEFAULT_MODELS)}, random weights)")
    p.add_argument("--out", default="perfmamba-profile", metavar="DIR", help="output directory (default: %(default)s)")
    p.add_argument("--seqlens", "--lengths", "-L", nargs="+", metavar="L",
                   help=f"sequence lengths (default: {' '.join(map(str, GPU_SEQLENS))} on a GPU, "
                        f"{' '.join(map(str, CPU_SEQLENS))} on a CPU)")
    p.add_argument("--batch", "-b", nargs="+", default=["1"], metavar="B", dest="batches",
                   help="batch sizes (default: 1)")
    p.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 (default: bfloat16 on a GPU, "
                                                   "float32 on a CPU)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--backend", default="auto", help="ref | triton | auto (default: auto: triton on a GPU)")
    p.add_argument("--mode", default="both", help="prefill | decode | both (default: both)")
    p.add_argument("--scope", default="block", help="block (one block, default) | model (the whole model)")
    p.add_argument("--whole-model", action="store_const", const="model", dest="scope",
                   help="same as --scope model")
    p.add_argument("--layer", default="0", help="which block to profile with --scope block (default: 0)")
    p.add_argument("--repeats", default=None, help="timed samples per measurement (default: 20 on a GPU, 3 on a CPU)")
    p.add_argument("--warmup", default=None, help="warm-up calls before timing (default: 3 on a GPU, 1 on a CPU)")
    p.add_argument("--threads", default=None, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--trace", action="store_true", help="also write a Chrome / Perfetto trace per configuration")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--remeasure", action="store_true", help="measure the machine's ceilings again (else cached)")
    p.set_defaults(func=cmd_profile)
    _one_line_errors(p, "profile")

    c = subparsers.add_parser("compare", help="per-component ratios (B / A) between two profile runs",
                              description="Per-component time, FLOP, byte and memory ratios B / A between two "
                                          "`perfmamba profile` runs (e.g. before and after pruning).")
    c.add_argument("run_a", metavar="RUN_A", help="output directory (or results.json) of the first run")
    c.add_argument("run_b", metavar="RUN_B", help="output directory (or results.json) of the second run")
    c.add_argument("--match", default="auto",
                   help="pair models by name, or in order (auto: by name when the runs share names)")
    c.add_argument("--csv", default=None, metavar="PATH", help="also write the ratios as CSV")
    c.set_defaults(func=cmd_compare)
    _one_line_errors(c, "compare")


# ---------------------------------------------------------------------------------------------- profile
def settings_from_args(args):
    from perfmamba.profiling.sweep import DEFAULT_MODELS, SweepSettings

    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise PerfMambaError(f"--out {out} exists and is not a directory; choose another path")
    return SweepSettings(
        models=list(args.models) or list(DEFAULT_MODELS), seqlens=_split(args.seqlens), batches=_split(args.batches),
        mode=args.mode, scope=args.scope, layer=_int_option(args.layer, "layer", 0), dtype=args.dtype,
        device=args.device, backend=args.backend, repeats=_int_option(args.repeats, "repeats", 1),
        warmup=_int_option(args.warmup, "warmup", 0), threads=_int_option(args.threads, "threads", 1),
        trace_dir=os.path.join(out, "traces") if args.trace else None, remeasure_ceilings=args.remeasure)


def written_summary(paths) -> str:
    """The files a run wrote, by name, its PNG plots counted: "components.csv, ..., results.json and 4 plots"."""
    names = sorted(os.path.basename(p) for p in paths if not p.endswith(".png"))
    plots = sum(p.endswith(".png") for p in paths)
    if plots:
        names.append(f"{plots} plot{'s' if plots > 1 else ''}")
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def cmd_profile(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from perfmamba.profiling.records import ERROR, OOM
    from perfmamba.profiling.sweep import resolve, run_sweep
    from perfmamba.report.profile_files import write_data_files, write_outputs
    from perfmamba.report.profile_tables import print_summary

    settings = settings_from_args(args)
    resolved = resolve(settings)  # every option checked before any work
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise PerfMambaError(f"cannot create --out {args.out} ({e.strerror}); choose another path") from None

    err = Console(stderr=True)
    columns = (TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("starting", total=None)
        run = run_sweep(settings, resolved=resolved,
                        progress=lambda done, total, desc: bar.update(task, completed=done, total=total,
                                                                       description=desc),
                        on_config=lambda partial: write_data_files(partial, args.out))
    written = write_outputs(run, args.out, plots=not args.no_plots)
    print_summary(run)
    print(f"wrote {len(written)} files to {args.out}/ ({written_summary(written)})"
          + (f"; traces in {settings.trace_dir}/" if settings.trace_dir else ""))
    for c in run.configs:
        if c.status == OOM:
            print(f"note: {c.model} {c.mode} L={c.seqlen} batch={c.batch} ran out of memory (recorded as oom)",
                  file=sys.stderr)
        elif c.status == ERROR:
            print(f"warning: {c.model} {c.mode} L={c.seqlen} batch={c.batch} failed: {c.error}", file=sys.stderr)
    if run.interrupted:
        print(f"perfmamba profile: interrupted; the {len(run.configs)} finished configurations are in {args.out}/",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if any(c.status == ERROR for c in run.configs) else 0


# ---------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from perfmamba.profiling.compare import CompareRow, compare_runs, geomean_ratio
    from perfmamba.profiling.records import load_run
    from perfmamba.fileio import write_text_atomic
    from perfmamba.report.profile_files import records_csv
    from perfmamba.report.profile_tables import print_compare, wide_console

    a, b = load_run(args.run_a), load_run(args.run_b)
    rows = compare_runs(a, b, args.match)
    console = wide_console()
    print_compare(rows, f"B / A — A: {args.run_a}, B: {args.run_b}", console)
    g = geomean_ratio(rows)
    if g == g:
        console.print(f"whole-unit time B / A, geometric mean over {sum(r.component == 'whole' for r in rows)} "
                      f"configurations: {g:.3f}")
    if args.csv:
        write_text_atomic(args.csv, records_csv(rows, CompareRow))
        console.print(f"wrote {args.csv}")
    return 0
