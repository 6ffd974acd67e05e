"""Train a small Mamba-1 / Mamba-2 language model on text (``perfmamba train``).

AdamW with decoupled weight decay on matrices only, linear warm-up then cosine decay, gradient clipping,
bf16 autocast on a GPU (fp32 on the CPU), periodic validation (bits per byte on the validation split),
atomic checkpoints and exact resumption.

Training always runs the model's ``"ref"`` backend (plain torch, differentiable); the Triton path is for
inference.  Everything a step depends on is a function of (seed, step): the batch offsets come from a
generator seeded with both, and the learning rate from the step, so a run split by ``--stop-after`` /
``--resume`` computes the same weights as one run in one go.

Output directory::

    OUT/config.json, model.safetensors   the final model (Hugging Face layout)
    OUT/best/                            the model with the best validation bits per byte so far
    OUT/training.json                    what was run, on which data, how long it took, the validation curve
    OUT/checkpoints/step-NNNNNNN/        model + optimizer.pt + state.json; the last two are kept
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from perfmamba.fileio import write_json_atomic
from perfmamba.config import Mamba1Config, Mamba2Config, get_preset, preset_names
from perfmamba.errors import PerfMambaError

FAMILIES = {"mamba1": Mamba1Config, "mamba2": Mamba2Config}
# Sizes for models trained here (the vocabulary comes from the tokenizer).  demo-* are the shipped demos.
TRAIN_PRESETS = {
    "demo-mamba1": ("mamba1", dict(d_model=256, n_layer=8, d_state=16, expand=2)),
    "demo-mamba2": ("mamba2", dict(d_model=256, n_layer=8, d_state=64, expand=2, headdim=64, chunk_size=128)),
    "tiny-mamba1": ("mamba1", dict(d_model=32, n_layer=2, d_state=8, expand=2)),
    "tiny-mamba2": ("mamba2", dict(d_model=32, n_layer=2, d_state=16, expand=2, headdim=16, chunk_size=32)),
}
# Hyperparameters that may change on --resume (they do not alter what a step computes).
_RESUMABLE_CHANGES = {"steps", "eval_every", "eval_bytes", "save_every", "patience", "min_delta"}
_KEEP_CHECKPOINTS = 2


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 512
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200  # validate every this many steps (and at the end)
    eval_bytes: Optional[int] = None  # validation text cap (None: the whole split)
    save_every: int = 500
    patience: int = 0  # stop after this many validations without a gain of min_delta (0: never)
    min_delta: float = 0.002  # bits per byte
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise PerfMambaError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0 or self.grad_clip < 0:
            raise PerfMambaError("need lr > 0, 0 <= min-lr-ratio <= 1, warmup >= 0 and grad-clip >= 0")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from lr to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_config(family: str, preset: Optional[str] = None, vocab_size: int = 256, **dims):
    """A config from a training preset (``demo-mamba1``, ``tiny-mamba2``, ...) or a published preset
    (``mamba-130m``, ...), dimension overrides, and the tokenizer's vocabulary."""
    if family not in FAMILIES:
        raise PerfMambaError(f"unknown family {family!r}; use mamba1 or mamba2")
    dims = {k: v for k, v in dims.items() if v is not None}
    if preset is not None:
        if preset in TRAIN_PRESETS:
            pfamily, base = TRAIN_PRESETS[preset]
            base = dict(base)
        elif preset in preset_names():
            cfg = get_preset(preset)
            pfamily, base = cfg.family, {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        else:
            raise PerfMambaError(f"unknown preset {preset!r}; training presets: {', '.join(TRAIN_PRESETS)}; "
                                 f"published sizes: {', '.join(preset_names())}")
        if pfamily != family:
            raise PerfMambaError(f"preset {preset} is {pfamily}, not {family}; fix --family or --preset")
    else:
        if "d_model" not in dims or "n_layer" not in dims:
            raise PerfMambaError("give --preset NAME, or at least --d-model and --n-layer")
        base = {}
    base.update(dims)
    base["vocab_size"] = vocab_size
    base.pop("d_state_per_layer", None)
    valid = {f.name for f in fields(FAMILIES[family])}
    return FAMILIES[family](**{k: v for k, v in base.items() if k in valid})


def init_for_training(model) -> None:
    """mamba_ssm's initialisation on top of the model's own: output projections scaled by 1/sqrt(n_layer)
    so the residual stream does not grow with depth."""
    scale = 1.0 / math.sqrt(model.config.n_layer)
    with torch.no_grad():
        for block in model.backbone.layers:
            block.mixer.out_proj.weight.mul_(scale)


def _param_groups(model, weight_decay: float):
    """Weight decay on matrices (embedding, projections); none on biases, norms, A_log, D, dt_bias, conv."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not name.endswith(("A_log", "conv1d.weight")):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def batch_at(data: torch.Tensor, step: int, cfg: TrainConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of step ``step``: ``batch_size`` windows at offsets drawn from a generator seeded with
    (seed, step); inputs and next-token targets, each (batch_size, seq_len) int64 on ``device``."""
    gen = torch.Generator().manual_seed((cfg.seed << 32) + step)
    offsets = torch.randint(0, data.numel() - cfg.seq_len, (cfg.batch_size,), generator=gen)
    idx = offsets[:, None] + torch.arange(cfg.seq_len + 1)[None, :]  # (B, L+1)
    rows = data[idx.to(data.device)].to(device=device, dtype=torch.long, non_blocking=True)
    return rows[:, :-1], rows[:, 1:]


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpoint_dirs(out: str) -> list[str]:
    root = os.path.join(out, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step-")
                   and os.path.exists(os.path.join(root, n, "state.json")))
    return [os.path.join(root, n) for n in names]


def _save_model_dir(model, directory: str, extra: Optional[Callable[[str], None]] = None) -> None:
    """Write a model (and ``extra`` files) into a fresh temporary directory, then rename it into place."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(directory)}-", dir=parent)
    try:
        model.save_pretrained(tmp, format="hf")
        if extra is not None:
            extra(tmp)
        old = None
        if os.path.exists(directory):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(directory, os.path.join(old, "x"))
        os.replace(tmp, directory)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(out: str, model, optimizer, state: dict) -> str:
    directory = os.path.join(out, "checkpoints", f"step-{state['step']:07d}")

    def extra(tmp):
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        write_json_atomic(os.path.join(tmp, "state.json"), state)

    _save_model_dir(model, directory, extra)
    for stale in _checkpoint_dirs(out)[:-_KEEP_CHECKPOINTS]:
        shutil.rmtree(stale, ignore_errors=True)
    return directory


def _read_json(path: str) -> dict:
    import json
    with open(path) as f:
        return json.load(f)


def _check_resume(saved: dict, model_cfg, tcfg: TrainConfig, data_sha: str) -> None:
    if saved["model_config"] != model_cfg.to_dict():
        diff = sorted(k for k in model_cfg.to_dict() if saved["model_config"].get(k) != model_cfg.to_dict()[k])
        raise PerfMambaError(f"--resume: the checkpoint's model differs in {', '.join(diff)}; pass the same "
                             "model options as the first run")
    now = asdict(tcfg)
    diff = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved["train_config"].get(k) != now[k])
    if diff:
        was = ", ".join(f"{k}={saved['train_config'].get(k)}" for k in diff)
        raise PerfMambaError(f"--resume: {', '.join(diff)} differ from the first run ({was}); pass the same values")
    if saved["data_sha256"] != data_sha:
        raise PerfMambaError("--resume: the training data differs from the first run's (different sha256); "
                             "pass the same --data")


# --------------------------------------------------------------------------------------------- training
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def train(model_cfg, tcfg: TrainConfig, out: str, data: str = "cpython-docs", tokenizer: str = "byte",
          device=None, resume: bool = False, stop_after: Optional[int] = None, compile: bool = False,
          command: Optional[str] = None, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train ``model_cfg`` on ``data`` into ``out``; returns the training record (also OUT/training.json)."""
    from perfmamba.api import resolve_device
    from perfmamba.eval.data import load_corpus, load_tokenizer, truncate_bytes
    from perfmamba.eval.perplexity import evaluate_tokens
    from perfmamba.eval.progress import progress_bar
    from perfmamba.models.checkpoint import build_model, load_checkpoint_dir

    device = resolve_device(device)
    existing = _checkpoint_dirs(out)
    if resume and not existing:
        raise PerfMambaError(f"--resume: no checkpoint under {out}/checkpoints to resume from")
    if not resume and existing:
        raise PerfMambaError(f"{out} already holds a training run; pass --resume to continue it or choose "
                             "another --out")
    if stop_after is not None and stop_after < 1:
        raise PerfMambaError(f"--stop-after must be >= 1, got {stop_after}")

    corpus = load_corpus(data)
    log(corpus.summary_line())
    tok = load_tokenizer(tokenizer)
    if tok.vocab_size > model_cfg.vocab_size:
        raise PerfMambaError(f"tokenizer has {tok.vocab_size} tokens, the model {model_cfg.vocab_size}")
    train_ids = tok.encode(corpus.text("train")).ids
    if train_ids.numel() <= tcfg.seq_len + 1:
        raise PerfMambaError(f"the training split has {train_ids.numel()} tokens, fewer than --seq-len "
                             f"{tcfg.seq_len} + 2; use more text or a shorter --seq-len")
    val_text = truncate_bytes(corpus.text("validation"), tcfg.eval_bytes)
    val_tokens = tok.encode(val_text) if val_text else None
    if val_tokens is not None and val_tokens.ids.numel() < 2:
        val_tokens = None
    data_sha = corpus.sha256
    train_ids = train_ids.to(device)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    if resume:
        ckpt = existing[-1]
        state = _read_json(os.path.join(ckpt, "state.json"))
        _check_resume(state, model_cfg, tcfg, data_sha)
        model = load_checkpoint_dir(ckpt, backend="ref", device=device, dtype=torch.float32)
        log(f"resuming from {ckpt} (step {state['step']})")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tcfg.seed)
            model = build_model(model_cfg, backend="ref", dtype=torch.float32)
            init_for_training(model)
        model = model.to(device)
        state = {"step": 0, "tokens": 0, "wall_seconds": 0.0, "step_seconds": 0.0, "history": [],
                 "best": None, "evals_without_gain": 0, "model_config": model_cfg.to_dict(),
                 "train_config": asdict(tcfg), "data_sha256": data_sha}
    state["train_config"] = asdict(tcfg)
    model.set_backend("ref")
    model.train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr,
                                  betas=(tcfg.beta1, tcfg.beta2), eps=1e-8, fused=fused)
    if resume:
        optimizer.load_state_dict(torch.load(os.path.join(ckpt, "optimizer.pt"), map_location=device,
                                             weights_only=True))
    step_fn = torch.compile(model) if compile else model
    n_params = model.num_parameters()
    log(f"model {model_cfg.family}: d_model {model_cfg.d_model}, {model_cfg.n_layer} layers, d_state "
        f"{model_cfg.d_state}, vocab {model_cfg.vocab_size}, {n_params:,} parameters; device {_device_name(device)}")

    def copy_tokenizer(directory: str) -> None:
        if tok.name != "byte":  # a tokenizer.json travels with every exported model
            shutil.copyfile(tok.name, os.path.join(directory, "tokenizer.json"))

    def validate() -> Optional[dict]:
        if val_tokens is None:
            return None
        res = evaluate_tokens(model, val_tokens, context=tcfg.seq_len, stride=max(1, tcfg.seq_len // 2),
                              batch_size=tcfg.batch_size, autocast_dtype=autocast_dtype)
        return {"val_loss": res.loss, "val_bits_per_byte": res.bits_per_byte}

    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    start_step, step = state["step"], state["step"]
    loss_sum, loss_count = torch.zeros((), device=device), 0
    stopped_early = False
    t_start = time.perf_counter()
    wall_before, step_seconds_before = state["wall_seconds"], state["step_seconds"]
    step_time = interval_start = 0.0
    last_loss = float("nan")

    def checkpoint() -> None:
        state.update(step=step, wall_seconds=wall_before + time.perf_counter() - t_start,
                     step_seconds=step_seconds_before + step_time)
        save_checkpoint(out, model, optimizer, state)

    bar = progress_bar("training", total=tcfg.steps, unit="steps", status=True) if progress else \
        contextlib.nullcontext(lambda n=1, **fields: None)
    with bar as advance:
        advance(start_step)
        while step < tcfg.steps:
            if stop_after is not None and step - start_step >= stop_after:
                break
            t0 = time.perf_counter()
            lr = lr_at(step, tcfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batch_at(train_ids, step, tcfg, device)
            with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = step_fn(x)  # (B, L, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            loss_count += 1
            step += 1
            state["tokens"] += tokens_per_step
            if step % 10 == 0 or step == tcfg.steps:
                last_loss = float(loss.detach())  # one host sync every 10 steps
            step_time += time.perf_counter() - t0
            tps = (step - start_step) * tokens_per_step / max(step_time, 1e-9)
            advance(1, status=f"loss {last_loss:.3f}  {tps:,.0f} tok/s")

            if step % tcfg.eval_every == 0 or step == tcfg.steps:
                interval_tps = loss_count * tokens_per_step / max(step_time - interval_start, 1e-9)
                interval_start = step_time
                record = {"step": step, "tokens": state["tokens"], "lr": lr, "tokens_per_second": interval_tps,
                          "train_loss": float(loss_sum) / max(loss_count, 1),
                          "seconds": round(wall_before + time.perf_counter() - t_start, 3)}
                loss_sum.zero_()
                loss_count = 0
                val = validate()
                if val is not None:
                    record.update(val)
                state["history"].append(record)
                msg = (f"step {step}/{tcfg.steps}  train loss {record['train_loss']:.4f}  lr {lr:.2e}  "
                       f"{interval_tps:,.0f} tok/s")
                if val is not None:
                    msg += f"  val bpb {val['val_bits_per_byte']:.4f}"
                    best = state["best"]
                    if best is None or val["val_bits_per_byte"] < best["val_bits_per_byte"] - tcfg.min_delta:
                        state["evals_without_gain"] = 0
                    else:
                        state["evals_without_gain"] += 1
                    if best is None or val["val_bits_per_byte"] < best["val_bits_per_byte"]:
                        state["best"] = {"step": step, **val}
                        _save_model_dir(model, os.path.join(out, "best"), copy_tokenizer)
                        msg += " (best)"
                log(msg)
                if tcfg.patience and state["evals_without_gain"] >= tcfg.patience:
                    log(f"validation has not improved by {tcfg.min_delta} bpb for {tcfg.patience} evaluations: "
                        "stopping")
                    stopped_early = True
            if step % tcfg.save_every == 0 or step == tcfg.steps or stopped_early:
                checkpoint()
            if stopped_early:
                break

    if step != state["step"] or not _checkpoint_dirs(out):
        checkpoint()
    finished = step >= tcfg.steps or stopped_early
    record = _training_record(state, model_cfg, tcfg, corpus, tok, n_params, device, command, finished,
                              stopped_early)
    if finished:
        model.save_pretrained(out, format="hf")
        copy_tokenizer(out)
        write_json_atomic(os.path.join(out, "training.json"), record)
        log(f"done: {step} steps, {state['tokens']:,} tokens in {state['wall_seconds']:.1f} s; model in {out}")
    else:
        log(f"stopped after {step} steps; continue with --resume")
    return record


def _training_record(state, model_cfg, tcfg, corpus, tok, n_params, device, command, finished, stopped_early):
    import perfmamba
    history = state["history"]
    last_val = next((h for h in reversed(history) if "val_bits_per_byte" in h), None)
    return {
        "command": command,
        "finished": finished,
        "stopped_early": stopped_early,
        "steps": state["step"],
        "tokens": state["tokens"],
        "wall_seconds": round(state["wall_seconds"], 3),
        "step_seconds": round(state["step_seconds"], 3),
        "tokens_per_second": state["tokens"] / state["step_seconds"] if state["step_seconds"] else None,
        "final_val_bits_per_byte": last_val["val_bits_per_byte"] if last_val else None,
        "best": state["best"],
        "parameters": n_params,
        "model_config": model_cfg.to_dict(),
        "train_config": asdict(tcfg),
        "validation_protocol": {"context": tcfg.seq_len, "stride": max(1, tcfg.seq_len // 2),
                                "max_bytes": tcfg.eval_bytes},
        "data": {k: v for k, v in corpus.describe().items() if k != "cache"},
        "tokenizer": tok.name,
        "device": _device_name(device),
        "perfmamba_version": perfmamba.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "history": history,
    }
