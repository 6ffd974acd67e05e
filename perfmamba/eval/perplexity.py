"""Perplexity and bits per byte of a causal LM over a long text, with a fixed context window and stride.

The sliding-window recipe of Hugging Face's perplexity guide: windows of ``context`` tokens start every
``stride`` tokens; each window scores only the tokens that no earlier window scored, so every token after
the first is scored exactly once, with at least ``context - stride + 1`` tokens of context (except near
the start).  A window reading tokens [b, b + context) predicts tokens [b + 1, b + context], so even
``stride == context`` (no overlap) scores every token.  The first token has no context and is never scored; its bytes are left out of the byte count.

    nll            = sum over scored tokens of -ln p(token | context)            (nats)
    perplexity     = exp(nll / scored tokens)
    bits_per_byte  = nll / ln 2 / UTF-8 bytes of the scored tokens

Windows are evaluated in a fixed order and the sum is accumulated in float64, so a run is deterministic
on a given device.  Each window's NLL is kept (``window_nll``): two models scored on the same text can then
be compared window by window (``paired_bootstrap``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from perfmamba.errors import PerfMambaError


@dataclass
class PerplexityResult:
    """Raw totals of one evaluation; the ratios are derived."""

    nll: float  # nats, summed over scored tokens
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the scored tokens
    total_tokens: int  # tokens in the text (scored + the first)
    context: int
    stride: int
    windows: int
    # summed NLL of each window's scored tokens, in window order (for paired comparisons; not in to_dict)
    window_nll: list = field(default_factory=list, repr=False)

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    def to_dict(self) -> dict:
        totals = {k: v for k, v in asdict(self).items() if k != "window_nll"}
        return {**totals, "loss": self.loss, "perplexity": self.perplexity,
                "bits_per_token": self.bits_per_token, "bits_per_byte": self.bits_per_byte}


def plan_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """[(begin, length, first_scored)]: the window reads ``length`` tokens ids[begin : begin+length] and
    predicts ids[begin+1 : begin+length+1], of which targets at positions >= first_scored count."""
    if context < 1:
        raise PerfMambaError(f"context must be >= 1 token, got {context}")
    if not 1 <= stride <= context:
        raise PerfMambaError(f"stride must lie in [1, context={context}], got {stride}")
    windows, next_target, begin = [], 1, 0  # token 0 has no context: never a target
    while next_target < n_tokens:
        last = min(begin + context, n_tokens - 1)  # last target of this window
        windows.append((begin, last - begin, next_target))
        next_target = last + 1
        begin += stride
    return windows


def _batches(windows, batch_size):
    """Consecutive windows of equal length, at most ``batch_size`` at a time, in order."""
    batch = []
    for w in windows:
        if batch and (len(batch) == batch_size or w[1] != batch[0][1]):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, windows, device, autocast_dtype=None) -> tuple[list, list]:
    """Per window (of equal length): summed NLL of its scored targets (nats, float64) and their number."""
    length = windows[0][1]
    rows = torch.stack([ids[b:b + length + 1] for b, _, _ in windows]).to(device=device, dtype=torch.long)
    inputs, targets = rows[:, :-1], rows[:, 1:]  # (n, L) each
    if autocast_dtype is not None:
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype):
            logits = model(inputs)
    else:
        logits = model(inputs)  # (n, L, V)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = nll.view(len(windows), length).double()
    # column j predicts the token at position begin + 1 + j; count it from first_scored on
    starts = torch.tensor([f - b - 1 for b, _, f in windows], device=nll.device)
    mask = torch.arange(length, device=nll.device)[None, :] >= starts[:, None]
    return (nll * mask).sum(1).tolist(), mask.sum(1).tolist()


@torch.no_grad()
def score_windows(model, ids: torch.Tensor, context: int = 1024, stride: int = 512, batch_size: int = 8,
                  autocast_dtype=None, on_window: Optional[Callable[[int], None]] = None) -> tuple[list, list]:
    """Per window of ``plan_windows``, in order: summed NLL (nats) of its scored tokens and their number."""
    if ids.dim() != 1:
        raise PerfMambaError(f"token ids must be 1-D, got shape {tuple(ids.shape)}")
    if ids.numel() < 2:
        raise PerfMambaError("the text is too short to score: it needs at least two tokens")
    if batch_size < 1:
        raise PerfMambaError(f"batch size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    windows = plan_windows(ids.numel(), context, stride)
    was_training = model.training
    model.eval()
    nlls, counts = [], []
    try:
        for batch in _batches(windows, batch_size):
            nll, n = window_nll(model, ids, batch, device, autocast_dtype)
            nlls += nll
            counts += n
            if on_window is not None:
                on_window(len(batch))
    finally:
        model.train(was_training)
    assert sum(counts) == ids.numel() - 1, (sum(counts), ids.numel())
    return nlls, counts


def evaluate_tokens(model, tokens, context: int = 1024, stride: int = 512, batch_size: int = 8,
                    autocast_dtype=None, on_window=None) -> PerplexityResult:
    """``tokens``: a ``data.Tokens`` (ids plus the byte counts needed for bits per byte)."""
    nlls, counts = score_windows(model, tokens.ids, context, stride, batch_size, autocast_dtype, on_window)
    return PerplexityResult(nll=math.fsum(nlls), tokens=sum(counts), bytes=tokens.n_bytes - tokens.first_token_bytes,
                            total_tokens=int(tokens.ids.numel()), context=context, stride=stride,
                            windows=len(nlls), window_nll=nlls)


def evaluate_text(model, tokenizer, text: str, context: int = 1024, stride: int = 512, batch_size: int = 8,
                  autocast_dtype=None, progress: bool = False) -> PerplexityResult:
    """Tokenize ``text`` and evaluate it; ``progress`` draws a bar on stderr."""
    tokens = tokenizer.encode(text)
    if tokens.ids.numel() < 2:
        raise PerfMambaError("the text is too short to score: it needs at least two tokens")
    if not progress:
        return evaluate_tokens(model, tokens, context, stride, batch_size, autocast_dtype)
    from perfmamba.eval.progress import progress_bar
    n_windows = len(plan_windows(tokens.ids.numel(), context, stride))
    with progress_bar("evaluating", total=n_windows, unit="windows") as advance:
        return evaluate_tokens(model, tokens, context, stride, batch_size, autocast_dtype, on_window=advance)


def paired_bootstrap(nll_a, nll_b, nll_base, samples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """How far apart two models scored on the same windows are, in percent of a third (the baseline).

    The statistic is 100 * (NLL_a - NLL_b) / NLL_base summed over windows, which on one text equals the
    difference of the two bits-per-byte changes against the baseline in percentage points (the byte count
    cancels).  Windows are resampled with replacement ``samples`` times (seeded, so reproducible); the
    interval is the central ``level`` quantile range.  Windows are treated as independent, which
    neighbouring windows of one text are not quite, so the interval is, if anything, narrow.
    """
    a, b, base = (torch.tensor(v, dtype=torch.float64) for v in (nll_a, nll_b, nll_base))
    if not a.numel() or a.shape != b.shape or a.shape != base.shape:
        raise PerfMambaError(f"paired comparison needs the same windows: {a.numel()}, {b.numel()}, {base.numel()}")
    gen = torch.Generator().manual_seed(seed)
    diff = a - b
    stats = []
    for first in range(0, samples, 256):  # resampled in blocks: memory stays bounded on long texts
        idx = torch.randint(0, a.numel(), (min(256, samples - first), a.numel()), generator=gen)
        stats.append(100.0 * diff[idx].sum(1) / base[idx].sum(1))
    stats = torch.cat(stats)
    tail = (1.0 - level) / 2.0
    lo, hi = torch.quantile(stats, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return {"diff_pct": float(100.0 * diff.sum() / base.sum()), "low_pct": lo, "high_pct": hi,
            "level": level, "samples": samples, "windows": int(a.numel())}
