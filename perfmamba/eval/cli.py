"""``perfmamba eval`` and ``perfmamba train``: argument parsing and printing over perplexity.py / train.py.

``register(subparsers)`` adds both commands to the main parser (perfmamba/cli.py).  Heavy imports happen
inside the command functions, so ``perfmamba --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

from perfmamba.errors import PerfMambaError

_DATA_HELP = ("cpython-docs (built in: CPython's own documentation), a text file or directory, or "
              "hf:NAME[:CONFIG] (needs datasets and the hub)")


# ------------------------------------------------------------------------------------------------ eval
def _model_dir(name: str):
    """The directory a model name refers to (for its tokenizer.json), or None for a preset."""
    from perfmamba.config import preset_names
    from perfmamba.demo_models import DEMO_MODELS, demo_model_dir
    if name in DEMO_MODELS:
        return demo_model_dir(name)
    if name in preset_names():
        return None
    if os.path.isdir(name):
        return name
    if name.count("/") == 1 and not name.startswith((".", "/")):
        from perfmamba.api import _download
        return _download(name)
    return None  # load_model reports the bad name


def cmd_eval(args) -> int:
    import torch

    from perfmamba.api import load_model
    from perfmamba.eval.data import load_text, tokenizer_for_model
    from perfmamba.eval.perplexity import evaluate_text

    if args.stride is None:
        args.stride = max(1, args.context // 2)
    if args.context < 1 or not 1 <= args.stride <= args.context:
        raise PerfMambaError(f"need --context >= 1 and 1 <= --stride <= --context; got context {args.context}, "
                             f"stride {args.stride}")
    model_dir = _model_dir(args.model)  # an unshipped demo model or bad --data fail before any loading
    text = load_text(args.data, args.split, args.max_bytes)
    model = load_model(model_dir or args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    tok = tokenizer_for_model(model_dir, model.config.vocab_size, args.tokenizer)
    print(f"data {args.data} [{text.split}]: {text.n_bytes:,} bytes, sha256 {text.sha256[:16]} "
          f"(corpus sha256 {text.corpus['sha256'][:16]}"
          f"{', Python ' + text.corpus['python'] if 'python' in text.corpus else ''})", file=sys.stderr)
    t0 = time.perf_counter()
    result = evaluate_text(model, tok, text.text, context=args.context, stride=args.stride,
                           batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - t0
    param = next(model.parameters())
    record = {
        "model": args.model,
        "bits_per_byte": result.bits_per_byte,
        "perplexity": result.perplexity,
        "tokens": result.tokens,
        "bytes": result.bytes,
        "data_sha256": text.sha256,
        **{k: v for k, v in result.to_dict().items() if k not in ("tokens", "bytes")},
        "data": {"source": args.data, "split": text.split, "bytes": text.n_bytes, "sha256": text.sha256,
                 "max_bytes": args.max_bytes,
                 "corpus": {k: v for k, v in text.corpus.items() if k != "cache"}},
        "tokenizer": tok.name,
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "backend": args.backend,
        "seconds": seconds,
        "torch_version": torch.__version__,
    }
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{args.model} on {args.data} [{text.split}]: {result.bits_per_byte:.4f} bits/byte, perplexity "
              f"{result.perplexity:.4f} per token ({tok.name} tokens), {result.tokens:,} tokens scored, "
              f"context {result.context}, stride {result.stride}, {seconds:.1f} s")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and bits per byte of a model over held-out text")
    p.add_argument("model", help="demo-mamba1 | demo-mamba2 | checkpoint directory | hub id | preset name")
    p.add_argument("--data", default="cpython-docs", help=_DATA_HELP)
    p.add_argument("--split", default=None, choices=("train", "validation", "test", "all"),
                   help="default: test for cpython-docs and hf:, all for your own text")
    p.add_argument("--context", type=int, default=1024, help="tokens each window reads (default 1024)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts (default: half the context, 512)")
    p.add_argument("--max-bytes", type=int, default=None, help="evaluate only the first N bytes of the text")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--tokenizer", default=None,
                   help="byte or a tokenizer.json (default: the checkpoint's tokenizer.json, else byte-level "
                        "for a 256-token vocabulary)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--backend", default="auto", help="auto | ref | triton (default auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object (bits_per_byte, perplexity, ...)")
    p.set_defaults(func=cmd_eval)


# ----------------------------------------------------------------------------------------------- train
_DIMS = ("d_model", "n_layer", "d_state", "expand", "d_conv", "headdim", "ngroups", "chunk_size")
_TRAIN_OPTS = ("steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip",
               "eval_every", "eval_bytes", "save_every", "patience", "min_delta", "seed")


def _command_line(args, tcfg) -> str:
    """The command that reproduces this run: the model options given, every training option spelled out."""
    from dataclasses import asdict
    parts = ["perfmamba", "train", "--family", args.family]
    if args.preset:
        parts += ["--preset", args.preset]
    for name in _DIMS:
        if getattr(args, name) is not None:
            parts += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name, value in asdict(tcfg).items():
        if name in _TRAIN_OPTS and value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    parts += ["--data", args.data, "--tokenizer", args.tokenizer, "--out", args.out]
    if args.compile:
        parts.append("--compile")
    return shlex.join(parts)


def cmd_train(args) -> int:
    from perfmamba.eval.data import load_tokenizer
    from perfmamba.eval.train import TrainConfig, model_config, train

    if args.family not in ("mamba1", "mamba2"):
        raise PerfMambaError(f"unknown --family {args.family!r}; use mamba1 or mamba2")
    tok = load_tokenizer(args.tokenizer)
    vocab = tok.vocab_size if tok.vocab_size <= 256 else 8 * -(-tok.vocab_size // 8)
    cfg = model_config(args.family, args.preset, vocab_size=vocab, **{d: getattr(args, d) for d in _DIMS})
    tcfg = TrainConfig(**{k: getattr(args, k) for k in _TRAIN_OPTS if getattr(args, k) is not None})
    record = train(cfg, tcfg, args.out, data=args.data, tokenizer=args.tokenizer, device=args.device,
                   resume=args.resume, stop_after=args.stop_after, compile=args.compile,
                   command=_command_line(args, tcfg), log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a Mamba-1 / Mamba-2 language model on text")
    p.add_argument("--family", required=True, help="mamba1 | mamba2")
    p.add_argument("--preset", default=None,
                   help="demo-mamba1 | demo-mamba2 | tiny-mamba1 | tiny-mamba2 | a published size (mamba-130m, ...)")
    g = p.add_argument_group("model dimensions (override the preset)")
    for name in _DIMS:
        g.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    p.add_argument("--data", default="cpython-docs", help=_DATA_HELP)
    p.add_argument("--tokenizer", default="byte", help="byte (default) or a tokenizer.json")
    p.add_argument("--out", required=True, help="output directory (model, best/, checkpoints/, training.json)")
    h = p.add_argument_group("training (defaults in brackets)")
    h.add_argument("--steps", type=int, default=None, help="optimizer steps [2000]")
    h.add_argument("--batch-size", type=int, default=None, help="sequences per step [32]")
    h.add_argument("--seq-len", type=int, default=None, help="tokens per sequence [512]")
    h.add_argument("--lr", type=float, default=None, help="peak learning rate [2e-3]")
    h.add_argument("--min-lr-ratio", type=float, default=None, help="final lr / peak lr [0.1]")
    h.add_argument("--warmup", type=int, default=None, help="linear warm-up steps [100]")
    h.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay on matrices [0.1]")
    h.add_argument("--grad-clip", type=float, default=None, help="gradient norm clip, 0 = off [1.0]")
    h.add_argument("--eval-every", type=int, default=None, help="validate every N steps [200]")
    h.add_argument("--eval-bytes", type=int, default=None, help="validation text cap in bytes [whole split]")
    h.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps [500]")
    h.add_argument("--patience", type=int, default=None,
                   help="stop after N validations without a gain of --min-delta bpb, 0 = never [0]")
    h.add_argument("--min-delta", type=float, default=None, help="bits per byte that count as a gain [0.002]")
    h.add_argument("--seed", type=int, default=None, help="weights and batch order [0]")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--stop-after", type=int, default=None,
                   help="checkpoint and stop after N steps of this invocation (continue later with --resume)")
    p.add_argument("--json", action="store_true", help="print the training record as JSON at the end")
    p.set_defaults(func=cmd_train)


def register(subparsers) -> None:
    """Add ``eval`` and ``train`` to perfmamba's subcommands."""
    _add_eval(subparsers)
    _add_train(subparsers)
