"""``perfmamba <command>``: thin wrappers over the library.

Every command turns a :class:`PerfMambaError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from perfmamba.errors import PerfMambaError


# ---------------------------------------------------------------------------------------------- info
def _load_for_info(name: str, dtype: str | None):
    """Presets are built on the meta device (no memory, instant, even for 2.8b); checkpoints load fully,
    so that a damaged file is reported."""
    import torch

    from perfmamba.api import _resolve_dtype, load_model
    from perfmamba.config import get_preset, preset_names
    from perfmamba.models.lm import MambaLM

    if name in preset_names():
        with torch.device("meta"):
            return MambaLM(get_preset(name), dtype=_resolve_dtype(dtype) or torch.float32)
    return load_model(name, device="cpu", dtype=dtype)


def cmd_info(args) -> int:
    from perfmamba.models.summary import model_summary
    from perfmamba.report.format import human_bytes, human_count

    summary = model_summary(_load_for_info(args.model, args.dtype))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = summary["config"]
    console.print(f"[bold]{args.model}[/bold]: {summary['family']}, d_model {cfg['d_model']}, "
                  f"{cfg['n_layer']} layers, d_state {cfg['d_state']}, vocab {cfg['vocab_size']}, "
                  f"{summary['dtype']}, {human_count(summary['parameters'])} parameters")
    table = Table(title="Parameters per component (all layers)")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    for comp, count in summary["parameters_per_component"].items():
        table.add_row(comp, human_count(count), f"{100 * count / summary['parameters']:.1f}%")
    console.print(table)
    shapes = Table(title="Mixer parameter shapes (layer 0)")
    shapes.add_column("parameter")
    shapes.add_column("shape", justify="right")
    for name, shape in summary["layer_parameter_shapes"].items():
        shapes.add_row(name, " x ".join(map(str, shape)))
    console.print(shapes)
    cache = summary["state_cache_bytes_per_sequence"]
    console.print(f"State cache per sequence: {human_bytes(cache['total'])} "
                  f"(conv {human_bytes(cache['conv'])}, ssm {human_bytes(cache['ssm'])})")
    return 0


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perfmamba", description="Profile, run and prune Mamba-1 / Mamba-2 models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters per component, layer shapes and state-cache bytes of a model")
    p.add_argument("model", help="preset name (e.g. mamba-130m, mamba2-130m) or checkpoint directory")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_info)

    from perfmamba.eval.cli import register as register_eval_train
    register_eval_train(sub)  # eval, train
    from perfmamba.profiling.cli_commands import register as register_profiling
    register_profiling(sub)  # profile, compare
    from perfmamba.pruning.cli_commands import register as register_pruning
    register_pruning(sub)  # prune, prune-sweep
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PerfMambaError as e:
        print(f"perfmamba {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"perfmamba {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
