"""Accuracy against speed in one run: every scoring method at every pruning ratio, measured before and after.

For each (method, ratio): bits per byte on held-out text.  For each distinct set of kept sizes (with the
uniform budget: one per ratio, whatever the method): prefill tokens/s and peak memory at several lengths,
decode tokens/s (through the CUDA graph on a GPU) and state-cache bytes.  Records are plain numbers;
``render.py`` turns them into tables and plots.  A measurement that runs out of memory is recorded as
``"oom"`` and the sweep goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from perfmamba.pruning import budget as budgets
from perfmamba.pruning.bridge import refit_bridge
from perfmamba.pruning.calibration import collect
from perfmamba.pruning.scores import compute_scores, stats_needed
from perfmamba.pruning.surgery import prune_model

DEFAULT_RATIOS = (0.0, 0.125, 0.25, 0.5, 0.75)
DEFAULT_LENGTHS = (1024, 4096, 16384)


@dataclass
class SpeedSettings:
    lengths: tuple = DEFAULT_LENGTHS
    decode_batches: tuple = (1, 64)
    dtype: Optional[torch.dtype] = None  # None: bfloat16 on a GPU, float32 on a CPU
    cuda_graph: bool = True
    warmup: int = 2
    repeats: int = 5
    prompt: int = 16


@dataclass
class EvalSettings:
    tokenizer: object
    text: str
    context: int = 1024
    stride: int = 512
    batch_size: int = 8
    describe: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- accuracy
def evaluate(model, ev: EvalSettings):
    """The model's ``PerplexityResult`` on the held-out text (bits/byte and the per-window NLL)."""
    from perfmamba.eval.perplexity import evaluate_text
    return evaluate_text(model, ev.tokenizer, ev.text, context=ev.context, stride=ev.stride,
                         batch_size=ev.batch_size)


def bits_per_byte(model, ev: EvalSettings) -> float:
    return evaluate(model, ev).bits_per_byte


def paired_comparisons(accuracy: list, base_nll: list, reference: str, kept: Optional[dict] = None,
                       original_sizes: Optional[list] = None) -> list:
    """``reference`` against every other method at each ratio above 0, window by window on the same text:
    the difference of their bits/byte changes (percentage points; negative = ``reference`` better) with a
    95% paired bootstrap interval (``paired_bootstrap``).  Given each (method, ratio)'s kept indices
    (``kept``, as ``budget.select`` returns them) and the layers' sizes, also ``removed_shared``: the
    fraction of the channels ``reference`` removes that the other method removes too (1: the same pruned
    model; two scores that remove nearly the same channels cannot differ much in accuracy)."""
    from perfmamba.eval.perplexity import paired_bootstrap
    by = {(r["method"], r["ratio"]): r for r in accuracy}
    out = []
    for r in accuracy:
        ref = by.get((reference, r["ratio"]))
        if r["method"] == reference or ref is None or r["ratio"] == 0:
            continue
        cmp = paired_bootstrap(ref["window_nll"], r["window_nll"], base_nll)
        rec = {"method": reference, "against": r["method"], "ratio": r["ratio"], **cmp}
        if kept is not None and original_sizes is not None:
            rec["removed_shared"] = removed_shared(kept[(reference, r["ratio"])], kept[(r["method"], r["ratio"])],
                                                   original_sizes)
        out.append(rec)
    return out


def removed_shared(kept_a: list, kept_b: list, sizes: list) -> Optional[float]:
    """Of the state channels that selection ``a`` removes (per layer and group, of ``sizes[layer]``), the
    fraction that ``b`` removes as well; None where ``a`` removes none."""
    removed_a = removed_both = 0
    for a, b, n in zip(kept_a, kept_b, sizes):
        for row_a, row_b in zip(a.tolist(), b.tolist()):
            gone_a, gone_b = set(range(n)) - set(row_a), set(range(n)) - set(row_b)
            removed_a += len(gone_a)
            removed_both += len(gone_a & gone_b)
    return removed_both / removed_a if removed_a else None


# ---------------------------------------------------------------------------------------------- speed
def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@torch.inference_mode()
def measure_prefill(model, length: int, s: SpeedSettings, batch: int = 1) -> dict:
    """tokens/s of model(ids) for ids (batch, length) (CUDA-graph replay on a GPU), and the peak memory of one
    eager forward (CUDA only): ``peak_bytes`` = the model's parameter bytes + the most memory allocated on top
    of what was allocated before the forward (so other tensors on the device do not count)."""
    from perfmamba.profiling.timers import time_call
    device = model.backbone.embedding.weight.device
    rec = {"length": length, "batch": batch, "status": "ok", "median_s": None, "tokens_per_s": None,
           "peak_bytes": None, "peak_increment_bytes": None, "cuda_graph": False}
    graph = None
    try:
        ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device,
                            generator=torch.Generator(device=device).manual_seed(length))
        if device.type == "cuda":
            model.forward_unchecked(ids)  # first call: Triton compiles and autotunes (with its own buffers)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            model.forward_unchecked(ids)
            torch.cuda.synchronize(device)
            rec["peak_increment_bytes"] = torch.cuda.max_memory_allocated(device) - base
            rec["peak_bytes"] = _parameter_bytes(model) + rec["peak_increment_bytes"]
        fn = lambda: model.forward_unchecked(ids)  # noqa: E731
        if device.type == "cuda" and s.cuda_graph:
            from perfmamba.models.cuda_graph import GraphPrefill
            graph = GraphPrefill(model, batch, length)
            fn = lambda: graph(ids)  # noqa: E731
            rec["cuda_graph"] = True
        t = time_call(fn, device, warmup=s.warmup, repeats=s.repeats)
        rec["median_s"], rec["tokens_per_s"] = t.median_s, batch * length / t.median_s
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        if not _is_oom(e):
            raise
        rec["status"] = "oom"
    finally:
        del graph
        _free(device)
    return rec


@torch.inference_mode()
def measure_decode(model, batch: int, s: SpeedSettings) -> dict:
    """tokens/s of one decode step for ``batch`` sequences (CUDA graph replay on a GPU), cache bytes, and (CUDA
    only) the peak memory of serving that batch eagerly: ``peak_bytes`` = parameter bytes + the most memory
    allocated from the cache's allocation through the prompt's prefill and one decode step.  With a small
    model and a large batch the state cache is most of it, and it is what state pruning shrinks."""
    from perfmamba.profiling.timers import time_call
    device = model.backbone.embedding.weight.device
    rec = {"batch": batch, "status": "ok", "median_s": None, "tokens_per_s": None, "cuda_graph": False,
           "state_cache_bytes": None, "peak_bytes": None, "peak_increment_bytes": None}
    try:
        prompt = torch.randint(0, model.config.vocab_size, (batch, s.prompt), device=device,
                               generator=torch.Generator(device=device).manual_seed(batch))
        token = prompt[:, -1]
        if device.type == "cuda":
            _free(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            cache = model.allocate_cache(batch)
            model(prompt, cache)
            model.step(token, cache)
            torch.cuda.synchronize(device)
            rec["peak_increment_bytes"] = torch.cuda.max_memory_allocated(device) - base
            rec["peak_bytes"] = _parameter_bytes(model) + rec["peak_increment_bytes"]
            del cache
        cache = model.allocate_cache(batch)
        rec["state_cache_bytes"] = cache.nbytes()
        if device.type == "cuda" and s.cuda_graph:
            decoder = model.graph_decoder(batch)
            decoder.prefill(prompt)
            fn = lambda: decoder.step(token)  # noqa: E731
            rec["cuda_graph"] = True
        else:
            model(prompt, cache)
            fn = lambda: model.step(token, cache)  # noqa: E731
        t = time_call(fn, device, warmup=s.warmup, repeats=s.repeats)
        rec["median_s"], rec["tokens_per_s"] = t.median_s, batch / t.median_s
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        if not _is_oom(e):
            raise
        rec["status"] = "oom"
    finally:
        model.__dict__.pop("_graph_decoders", None)
        _free(device)
    return rec


def measure_speed(model, s: SpeedSettings) -> dict:
    device = model.backbone.embedding.weight.device
    dtype = s.dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = model.to(dtype).eval()
    return {"dtype": str(dtype).replace("torch.", ""),
            "prefill": [measure_prefill(model, length, s) for length in s.lengths],
            "decode": [measure_decode(model, b, s) for b in s.decode_batches]}


# ---------------------------------------------------------------------------------------------- sweep
def run_sweep(model, methods, ratios, ev: EvalSettings, speed: Optional[SpeedSettings], calib_ids: torch.Tensor,
              budget: str = "uniform", multiple: int = 1, bridge: str = "none", seed: int = 0,
              ridge: float = 1e-2, log: Callable[[str], None] = lambda msg: None) -> dict:
    """The whole sweep (see the module doc); returns the JSON-ready results dict (no files written)."""
    cfg = model.config
    ratios = sorted(set(budgets.check_ratio(r) for r in ratios))
    need = stats_needed(methods)
    log(f"calibrating ({calib_ids.shape[0]} x {calib_ids.shape[1]} tokens; statistics: "
        f"{', '.join(sorted(need)) or 'none'})")
    stats = collect(model, calib_ids, need) if need else None
    scores = {m: compute_scores(m, model, stats, seed) for m in methods}
    log("evaluating the unpruned model")
    base = evaluate(model, ev)
    base_bpb = base.bits_per_byte
    original_sizes = [cfg.layer_d_state(i) for i in range(cfg.n_layer)]
    accuracy, plans, kept = [], {}, {}
    for ratio in ratios:
        for method in methods:
            sizes = budgets.keep_sizes(cfg, ratio, budget, scores[method], multiple)
            rec = {"method": method, "ratio": ratio, "kept_sizes": sizes, "kept_total": sum(sizes),
                   "kept_fraction": sum(sizes) / sum(original_sizes)}
            kept[(method, ratio)] = budgets.select(scores[method], sizes)
            if sizes == original_sizes:
                result = base
                rec.update(parameters=model.num_parameters(), refit=None)
            else:
                pruned = prune_model(model, kept[(method, ratio)])
                rec["refit"] = None
                if bridge == "refit":
                    rec["refit"] = refit_bridge(model, pruned, calib_ids, ridge)
                result = evaluate(pruned, ev)
                rec["parameters"] = pruned.num_parameters()
                del pruned
            rec["bits_per_byte"] = result.bits_per_byte
            rec["bpb_change_pct"] = 100.0 * (rec["bits_per_byte"] / base_bpb - 1.0)
            rec["window_nll"] = result.window_nll
            log(f"{method:>9} ratio {ratio:<6g} kept {rec['kept_total']:>5} states: "
                f"{rec['bits_per_byte']:.4f} bits/byte ({rec['bpb_change_pct']:+.2f}%)")
            accuracy.append(rec)
            plans.setdefault(tuple(sizes), (method, ratio))
    speeds = []
    if speed is not None:
        for sizes, (method, ratio) in plans.items():
            log(f"timing d_state per layer {_short(sizes)}")
            # a fresh copy even when nothing is removed: the timed model is converted to the speed dtype
            timed = prune_model(model, kept[(method, ratio)])
            speeds.append({"kept_sizes": list(sizes), **measure_speed(timed, speed)})
            del timed
    reference = "delta" if "delta" in methods else methods[0]
    return {"baseline_bits_per_byte": base_bpb, "baseline_window_nll": base.window_nll,
            "original_sizes": original_sizes, "accuracy": accuracy,
            "comparisons": paired_comparisons(accuracy, base.window_nll, reference, kept, original_sizes),
            "speed": speeds, "rows": join_rows(accuracy, speeds, original_sizes)}


def _short(sizes) -> str:
    return str(sizes[0]) if len(set(sizes)) == 1 else ",".join(map(str, sizes))


def join_rows(accuracy: list, speeds: list, original_sizes: list) -> list:
    """One flat record per (method, ratio): accuracy plus the speed of its kept sizes and the ratios to the
    unpruned model's speed (plain numbers; None where not measured or out of memory)."""
    by_sizes = {tuple(s["kept_sizes"]): s for s in speeds}
    base = by_sizes.get(tuple(original_sizes))
    rows = []
    for a in accuracy:
        row = {k: a[k] for k in ("method", "ratio", "kept_total", "kept_fraction", "parameters", "bits_per_byte",
                                 "bpb_change_pct")}
        row["d_state_min"], row["d_state_max"] = min(a["kept_sizes"]), max(a["kept_sizes"])
        sp = by_sizes.get(tuple(a["kept_sizes"]))
        if sp is not None:
            for p in sp["prefill"]:
                row.update(_speed_columns(p, base and base["prefill"], "length", "L", "prefill", "peak"))
            for d in sp["decode"]:
                row.update(_speed_columns(d, base and base["decode"], "batch", "B", "decode", "decode_peak"))
                row[f"state_cache_bytes_B{d['batch']}"] = d["state_cache_bytes"]
        rows.append(row)
    return rows


def _speed_columns(rec, base_records, field, tag, speed, peak) -> dict:
    """One measurement's columns, named by ``tag`` + rec[field] (L1024, B64): tokens/s and the speedup over
    the unpruned model's matching record (``speed``_*), peak bytes and how much less that is (``peak``_*)."""
    base = _match(base_records, field, rec[field]) if base_records else None
    key = f"{tag}{rec[field]}"
    return {f"{speed}_tokens_per_s_{key}": rec["tokens_per_s"],
            f"{speed}_speedup_{key}": _ratio(rec["tokens_per_s"], base and base["tokens_per_s"]),
            f"{peak}_bytes_{key}": rec.get("peak_bytes"),
            f"{peak}_reduction_pct_{key}": _pct_less(rec.get("peak_bytes"), base and base.get("peak_bytes"))}


def _match(records, key, value):
    return next((r for r in records if r[key] == value), None)


def _ratio(a, b):
    return a / b if a is not None and b else None


def _pct_less(a, b):
    return 100.0 * (1.0 - a / b) if a is not None and b else None


def best_tradeoff(rows: list, max_bpb_change_pct: float = 2.0) -> Optional[dict]:
    """The row with the largest prefill speedup (at the longest measured length) among rows whose bits per
    byte are at most ``max_bpb_change_pct`` % worse than unpruned."""
    keys = sorted((k for r in rows for k in r if k.startswith("prefill_speedup_L")),
                  key=lambda k: int(k.rsplit("L", 1)[1]))
    if not keys:
        return None
    key = keys[-1]
    ok = [r for r in rows if r.get(key) is not None and r["bpb_change_pct"] <= max_bpb_change_pct
          and not math.isnan(r["bpb_change_pct"])]
    return max(ok, key=lambda r: r[key]) if ok else None
