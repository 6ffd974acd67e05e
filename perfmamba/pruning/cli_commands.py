"""``perfmamba prune`` and ``perfmamba prune-sweep`` (registered into the main parser by ``register``).

Every bad option is one line on stderr and exit status 2: values are checked here or in the library
(PerfMambaError), and argparse's own errors in these subcommands are shortened to one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_CALIB = "cpython-docs"


# ------------------------------------------------------------------------------------------- parsing
def _one_line_error(parser):
    def error(message):
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
    return error


def _float_list(text: str) -> list:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _int_list(text: str) -> list:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _flatten(values) -> list:
    out = []
    for v in values or []:
        out += v if isinstance(v, list) else [v]
    return out


def _common(p) -> None:
    p.add_argument("model", help="checkpoint directory, preset, or demo model name")
    p.add_argument("--budget", default="uniform", help="uniform (same ratio per layer) | global (by score)")
    p.add_argument("--multiple", type=int, default=1, help="snap kept state sizes to multiples of this (e.g. 8)")
    p.add_argument("--calib", default=DEFAULT_CALIB,
                   help="calibration text: cpython-docs (built in), a text file or directory, or hf:NAME[:CONFIG]")
    p.add_argument("--calib-split", default="train", help="split of --calib (train | validation | test | all)")
    p.add_argument("--calib-seqs", type=int, default=16, help="calibration sequences (default 16)")
    p.add_argument("--calib-len", type=int, default=1024, help="tokens per calibration sequence (default 1024)")
    p.add_argument("--tokenizer", default=None, help="byte or a tokenizer.json (default: the model's)")
    p.add_argument("--eval-data", default=None, help="held-out text for bits/byte (default: --calib's source)")
    p.add_argument("--eval-split", default="validation", help="split of --eval-data (default validation)")
    p.add_argument("--context", type=int, default=1024, help="evaluation context in tokens (default 1024)")
    p.add_argument("--ridge", type=float, default=1e-2, help="ridge of the refit bridge (default 1e-2)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default 0)")
    p.add_argument("--out", required=True, help="output directory")


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="remove low-activity SSM state channels and write the smaller model")
    _common(p)
    p.add_argument("--method", default="delta",
                   help="delta (default) | random | magnitude | energy | output | taylor | balanced | delta-gate | "
                        "delta-abs | delta-out")
    p.add_argument("--ratio", type=float, default=0.25, help="fraction of state channels removed (default 0.25)")
    p.add_argument("--bridge", default="none", help="none | compat (also an original-layout checkpoint) | "
                                                     "refit (compat + least-squares refit of D and out_proj)")
    p.add_argument("--eval-bytes", type=int, default=65536,
                   help="bytes of held-out text for bits/byte before and after (0: skip; default 65536)")
    p.add_argument("--format", default="hf", help="checkpoint layout: hf (default) | mamba_ssm")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.error = _one_line_error(p)
    p.set_defaults(func=cmd_prune)

    p = subparsers.add_parser("prune-sweep", help="accuracy vs speed of every scoring method at several ratios")
    _common(p)
    p.add_argument("--methods", type=lambda s: s.replace(",", " ").split(), nargs="+", default=None,
                   help="scoring methods (default: all), e.g. delta,random,magnitude")
    p.add_argument("--ratios", type=_float_list, nargs="+", default=None,
                   help="pruning ratios (default 0,0.125,0.25,0.5,0.75)")
    p.add_argument("--bridge", default="none", help="none (default) | refit (refit D and out_proj at every point)")
    p.add_argument("--max-bytes", type=int, default=131072, help="bytes of held-out text (default 131072)")
    p.add_argument("--lengths", type=_int_list, nargs="+", default=None,
                   help="prefill lengths (default 1024 4096 16384)")
    p.add_argument("--decode-batches", type=_int_list, nargs="+", default=None,
                   help="decode batch sizes (default 1 64)")
    p.add_argument("--speed-dtype", default=None,
                   help="dtype of the speed runs (default: bfloat16 on a GPU, float32 on a CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timing samples per measurement (default 5)")
    p.add_argument("--no-cuda-graph", action="store_true", help="time eagerly instead of CUDA-graph replay")
    p.add_argument("--no-speed", action="store_true", help="accuracy only")
    p.error = _one_line_error(p)
    p.set_defaults(func=cmd_prune_sweep)


# ------------------------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _check_positive(**values) -> None:
    from perfmamba.errors import PerfMambaError
    for name, v in values.items():
        if v is None or v < 1:
            raise PerfMambaError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")


def _load(args, dtype=None):
    from perfmamba.api import load_model, resolve_device
    device = resolve_device(args.device)
    model = load_model(args.model, device=device, dtype=dtype)
    model_dir = args.model if os.path.isdir(args.model) else None
    return model.eval(), device, model_dir


def _calibration(model, args, model_dir):
    from perfmamba.pruning.calibration import calibration_ids
    return calibration_ids(model, args.calib, args.calib_split, args.calib_seqs, args.calib_len, args.tokenizer,
                           model_dir)


def _eval_settings(model, args, model_dir, max_bytes):
    from perfmamba.eval.data import load_text, tokenizer_for_model
    from perfmamba.pruning.sweep import EvalSettings
    source = args.eval_data or args.calib
    text = load_text(source, args.eval_split, max_bytes)
    tok = tokenizer_for_model(model_dir, model.config.vocab_size, args.tokenizer)
    return EvalSettings(tok, text.text, context=args.context, stride=max(1, args.context // 2),
                        describe={"source": source, "split": args.eval_split, "bytes": text.n_bytes,
                                  "sha256": text.sha256, "context": args.context, "tokenizer": tok.name})


def _validate(args) -> None:
    from perfmamba.errors import PerfMambaError
    from perfmamba.pruning.budget import BUDGETS, check_multiple
    if args.budget not in BUDGETS:
        raise PerfMambaError(f"unknown --budget {args.budget!r}; choose one of {', '.join(BUDGETS)}")
    check_multiple(args.multiple)
    _check_positive(calib_seqs=args.calib_seqs, calib_len=args.calib_len, context=args.context)
    if args.ridge <= 0:
        raise PerfMambaError(f"--ridge must be > 0, got {args.ridge}")


# --------------------------------------------------------------------------------------------- prune
def cmd_prune(args) -> int:
    from perfmamba.api import _resolve_dtype
    from perfmamba.errors import PerfMambaError
    from perfmamba.models.checkpoint import FORMATS
    from perfmamba.models.summary import cache_bytes_per_sequence
    from perfmamba.pruning import bridge as bridges
    from perfmamba.pruning.budget import check_ratio, slow_sizes, slow_sizes_note
    from perfmamba.pruning.pipeline import check_bridge, prune
    from perfmamba.fileio import write_text_atomic
    from perfmamba.pruning.render import prune_markdown
    from perfmamba.pruning.scores import check_methods
    from perfmamba.pruning.sweep import bits_per_byte

    _validate(args)
    check_methods([args.method])
    check_ratio(args.ratio)
    check_bridge(args.bridge)
    if args.format not in FORMATS:
        raise PerfMambaError(f"unknown --format {args.format!r}; choose one of {', '.join(FORMATS)}")
    if args.eval_bytes < 0:
        raise PerfMambaError(f"--eval-bytes must be >= 0, got {args.eval_bytes}")
    model, device, model_dir = _load(args, _resolve_dtype(args.dtype))
    ids, calib = _calibration(model, args, model_dir)
    _log(f"scoring {model.config.family} state channels by {args.method!r} on {ids.shape[0]} x {ids.shape[1]} "
         "calibration tokens")
    result = prune(model, args.method, args.ratio, ids, args.budget, args.multiple, args.bridge, args.seed,
                   args.ridge)
    pruned, keep = result.model, result.keep
    note = slow_sizes_note(slow_sizes(pruned.config, [k.shape[-1] for k in keep]))  # keep: (G, k) per layer
    if note:
        _log(note)
    os.makedirs(args.out, exist_ok=True)
    pruned.save_pretrained(args.out, format=args.format)
    files = ["config.json", "model.safetensors" if args.format == "hf" else "pytorch_model.bin"]
    before_cfg, after_cfg = model.config, pruned.config
    itemsize = model.backbone.embedding.weight.element_size()

    def side(m):
        cfg = m.config
        return {"d_state_per_layer": [cfg.layer_d_state(i) for i in range(cfg.n_layer)],
                "parameters": m.num_parameters(),
                "state_cache_bytes_per_sequence": cache_bytes_per_sequence(cfg, itemsize)["total"]}

    report = {"kind": "perfmamba-prune", "version": 1, "model": args.model, "family": before_cfg.family,
              "method": args.method, "ratio": args.ratio, "budget": args.budget, "multiple": args.multiple,
              "bridge": args.bridge, "seed": args.seed, "calibration": calib, "before": side(model),
              "after": side(pruned), "kept": [k.tolist() for k in keep], "refit": result.refit,
              "config": after_cfg.to_dict()}
    if args.eval_bytes:
        ev = _eval_settings(model, args, model_dir, args.eval_bytes)
        _log(f"bits per byte on {ev.describe['bytes']} bytes of held-out text")
        report["before"]["bits_per_byte"] = bits_per_byte(model, ev)
        report["after"]["bits_per_byte"] = bits_per_byte(pruned, ev)
        report["evaluation"] = ev.describe
    if args.bridge != "none":
        record = bridges.bridge_record(before_cfg, keep, args.bridge, result.refit)
        bridges.write_bridge(args.out, record)
        bridges.export_compat(pruned, before_cfg, keep, os.path.join(args.out, "compat"), record, args.format)
        files += [bridges.BRIDGE_FILE, "compat/"]
    if args.bridge == "refit":
        report["heldout_layer_error"] = _heldout_errors(model, pruned, keep, args, model_dir)
    files += ["prune_report.json", "prune_report.md"]
    report["files"] = files
    from perfmamba.fileio import write_json_atomic
    write_json_atomic(os.path.join(args.out, "prune_report.json"), report)
    write_text_atomic(os.path.join(args.out, "prune_report.md"), prune_markdown(report))
    b, a = report["before"], report["after"]
    line = (f"pruned {args.model}: d_state {_sizes(b['d_state_per_layer'])} -> {_sizes(a['d_state_per_layer'])}, "
            f"{b['parameters']:,} -> {a['parameters']:,} parameters")
    if "bits_per_byte" in a:
        line += f", bits/byte {b['bits_per_byte']:.4f} -> {a['bits_per_byte']:.4f}"
    print(f"{line}; wrote {args.out}")
    return 0


def _heldout_errors(model, pruned, keep, args, model_dir):
    """Per-layer relative mixer-output error on held-out text without and with the refit (None when the
    held-out split is too short for two sequences)."""
    from perfmamba.errors import PerfMambaError
    from perfmamba.pruning.bridge import layer_output_errors
    from perfmamba.pruning.calibration import calibration_ids
    from perfmamba.pruning.surgery import prune_model
    try:
        held, _ = calibration_ids(model, args.eval_data or args.calib, args.eval_split, 2,
                                  min(args.calib_len, 512), args.tokenizer, model_dir)
    except PerfMambaError:
        return None
    return {"none": layer_output_errors(model, prune_model(model, keep), held),
            "refit": layer_output_errors(model, pruned, held)}


def _sizes(sizes) -> str:
    return str(sizes[0]) if len(set(sizes)) == 1 else "[" + ",".join(map(str, sizes)) + "]"


# --------------------------------------------------------------------------------------------- sweep
def cmd_prune_sweep(args) -> int:
    from perfmamba.api import _resolve_dtype
    from perfmamba.fileio import write_json_atomic
    from perfmamba.errors import PerfMambaError
    from perfmamba.pruning.budget import check_ratio, slow_sizes, slow_sizes_note, uniform_keep
    from perfmamba.fileio import write_text_atomic
    from perfmamba.pruning.render import sweep_markdown, sweep_plots, write_csv_atomic
    from perfmamba.pruning.scores import METHODS, check_methods
    from perfmamba.pruning.sweep import DEFAULT_LENGTHS, DEFAULT_RATIOS, SpeedSettings, run_sweep
    from perfmamba.report.environment import environment_info

    _validate(args)
    methods = check_methods(_flatten(args.methods) or METHODS)
    ratios = [check_ratio(r) for r in (_flatten(args.ratios) or DEFAULT_RATIOS)]
    lengths = _flatten(args.lengths) or list(DEFAULT_LENGTHS)
    batches = _flatten(args.decode_batches) or [1, 64]
    if args.bridge not in ("none", "refit"):
        raise PerfMambaError(f"prune-sweep --bridge must be none or refit (compat changes no number), got "
                             f"{args.bridge!r}")
    _check_positive(max_bytes=args.max_bytes, repeats=args.repeats, lengths=min(lengths),
                    decode_batches=min(batches))
    speed_dtype = _resolve_dtype(args.speed_dtype)
    model, device, model_dir = _load(args, None)
    model = model.float()
    if args.budget == "uniform":  # the kept sizes are known before any score (global ones are not)
        note = slow_sizes_note(slow_sizes(model.config, [k for r in ratios for k in
                                                         uniform_keep(model.config, r, args.multiple)]))
        if note:
            _log(note)
    ids, calib = _calibration(model, args, model_dir)
    ev = _eval_settings(model, args, model_dir, args.max_bytes)
    speed = None if args.no_speed else SpeedSettings(tuple(lengths), tuple(batches), speed_dtype,
                                                     not args.no_cuda_graph, repeats=args.repeats)
    res = run_sweep(model, methods, ratios, ev, speed, ids, args.budget, args.multiple, args.bridge, args.seed,
                    args.ridge, log=_log)
    results = {"kind": "perfmamba-prune-sweep", "version": 1, "model": args.model,
               "family": model.config.family, "config": model.config.to_dict(),
               "environment": environment_info(device), "calibration": calib, "evaluation": ev.describe,
               "settings": {"methods": methods, "ratios": ratios, "budget": args.budget, "multiple": args.multiple,
                            "bridge": args.bridge, "seed": args.seed, "lengths": lengths,
                            "decode_batches": batches, "repeats": args.repeats,
                            "cuda_graph": not args.no_cuda_graph},
               **res}
    os.makedirs(args.out, exist_ok=True)
    plots = sweep_plots(results, args.out)
    write_json_atomic(os.path.join(args.out, "sweep.json"), results)
    write_csv_atomic(os.path.join(args.out, "sweep.csv"), results["rows"])
    write_text_atomic(os.path.join(args.out, "sweep.md"), sweep_markdown(results, plots))
    print(f"wrote {args.out}: sweep.json, sweep.csv, sweep.md, {', '.join(plots)}")
    return 0
