"""Decode through a captured CUDA graph: one replay per token instead of hundreds of kernel launches.

The cache buffers, the input token and the output logits are static tensors; the mixers update the cache
in place (``copy_``), so a prefill into the same cache followed by replays is exactly the eager path.
"""

from __future__ import annotations

import torch

from perfmamba.models.cache import InferenceCache
from perfmamba.ops.replay import for_replay


class GraphDecoder:
    """A captured ``model.step`` for one batch size.  Use ``prefill`` then ``step`` repeatedly."""

    def __init__(self, model, batch_size: int, warmup_steps: int = 2):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError("CUDA-graph decode needs the model on a CUDA device")
        self.model = model
        self.cache: InferenceCache = model.allocate_cache(batch_size)
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)  # (Bsz,) static input
        # (Bsz, V) static output
        self.graph, self.logits = capture(lambda: model.step(self.token, self.cache), device, warmup_steps)
        self.cache.reset()

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt eagerly into the static cache; returns the last position's logits (Bsz, V)."""
        self.cache.reset()
        return self.model(input_ids, self.cache, logits_to_keep=1)[:, -1]

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """token (Bsz,) -> logits (Bsz, V).  The returned tensor is overwritten by the next step."""
        self.token.copy_(token)
        self.graph.replay()
        self.cache.seqlen_offset += 1
        return self.logits


def _warm_up(fn, device, steps: int = 2) -> None:
    """Run ``fn`` on a side stream before capture (Triton compiles, cuBLAS sets up), as CUDA requires."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(steps):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)


def capture(fn, device, warmup_steps: int = 2):
    """(graph, what ``fn`` returned while being captured): ``fn`` warmed up, then captured, in inference
    mode.  Both inside ``for_replay()``: the kernels then choose as for a replay, which has no launch cost,
    and the warm-up compiles the same kernels that the capture records."""
    with for_replay():
        _warm_up(fn, device, warmup_steps)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            result = fn()
    return graph, result


class GraphPrefill:
    """``model(input_ids)`` for one fixed (batch, length), captured once and replayed.

    A whole forward of a small model launches a few hundred kernels; at short lengths launching them costs
    more than running them, and a replay removes that cost.  The logits tensor is static (overwritten by
    the next call).  ``logits_to_keep`` as in ``MambaLM.forward`` (0: every position).
    """

    def __init__(self, model, batch_size: int, seqlen: int, logits_to_keep: int = 0):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError("CUDA-graph prefill needs the model on a CUDA device")
        self.model = model
        self.input_ids = torch.zeros(batch_size, seqlen, dtype=torch.long, device=device)  # static input
        forward = model.forward_unchecked
        # logits (Bsz, L or logits_to_keep, V): a static output
        self.graph, self.logits = capture(lambda: forward(self.input_ids, None, logits_to_keep), device)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.input_ids.copy_(input_ids)
        self.graph.replay()
        return self.logits
