"""Next-token choice for generate(): greedy, or sampling with temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from typing import Optional

import torch


def choose_next_token(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits: (Bsz, V) -> token ids (Bsz,)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (Bsz, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the most likely token always stays)
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
