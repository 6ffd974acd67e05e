"""The language model: embedding -> blocks -> final RMSNorm -> LM head (tied or untied), and generate()."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from perfmamba.errors import PerfMambaError
from perfmamba.models.block import Block
from perfmamba.models.cache import InferenceCache
from perfmamba.models.norm import RMSNorm
from perfmamba.models.sampling import choose_next_token


class Backbone(nn.Module):
    def __init__(self, config, backend, device=None, dtype=None):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(config, i, backend, device=device, dtype=dtype)
                                    for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps, backend=backend, device=device, dtype=dtype)


class MambaLM(nn.Module):
    """A Mamba-1 or Mamba-2 causal LM (family taken from the config).

    ``model(input_ids)`` with input_ids (Bsz, L) returns logits (Bsz, L, vocab_size).
    Parameter names follow mamba_ssm (``backbone.embedding``, ``backbone.layers.i.mixer...``).
    """

    def __init__(self, config, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config, backend, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        self._backend = backend

    # ---------------------------------------------------------------------------------------- backend
    @property
    def backend(self) -> str:
        return self._backend

    def set_backend(self, backend: str) -> "MambaLM":
        from perfmamba.ops import resolve_backend
        resolve_backend(backend, next(self.parameters()).device)  # validates (one-line error if unusable)
        self._backend = backend
        for module in self.modules():  # mixers and norms
            if hasattr(module, "backend") and module is not self:
                module.backend = backend
        return self

    # ---------------------------------------------------------------------------------------- forward
    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise PerfMambaError(f"input_ids must be an integer tensor of shape (batch, length); got "
                                 f"{input_ids.dtype} {tuple(input_ids.shape)}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise PerfMambaError(f"input_ids must lie in [0, {self.config.vocab_size}); got values in "
                                 f"[{int(input_ids.min())}, {int(input_ids.max())}]")

    def forward(self, input_ids: torch.Tensor, cache: Optional[InferenceCache] = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """input_ids (Bsz, L) -> logits (Bsz, L, V).  A fresh ``cache`` is filled with the final states.

        ``logits_to_keep`` = k > 0 computes the logits of the last k positions only, (Bsz, k, V), as
        transformers' argument of that name and mamba_ssm's ``num_last_tokens`` do: a prompt's prefill
        needs only the last one, and all L of them cost an (L x d_model) @ (d_model x V) product and
        L * V values (at L=16384 and the 50280-token vocabulary, 1.6 GB in bf16).  0 keeps all.
        """
        self._check_ids(input_ids)
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise PerfMambaError(f"logits_to_keep must be an integer >= 0 (0 keeps every position); "
                                 f"got {logits_to_keep!r}")
        return self.forward_unchecked(input_ids, cache, logits_to_keep)

    def forward_unchecked(self, input_ids: torch.Tensor, cache: Optional[InferenceCache] = None,
                          logits_to_keep: int = 0) -> torch.Tensor:
        """``forward`` without the input checks, whose host sync cannot be captured in a CUDA graph."""
        seqlen = input_ids.shape[1]
        steps = self.prompt_steps(seqlen, cache)
        if steps == seqlen:
            hidden = self._run_blocks(self.backbone.embedding(input_ids), lambda block, h: block.mixer(h, cache))
        else:  # token 0 after the prompt's end: the model is causal, so nothing before it changes
            padded = self.backbone.embedding(F.pad(input_ids, (0, steps - seqlen)))
            hidden = self._run_blocks(padded, lambda block, h: block.mixer(h, cache, length=seqlen))[:, :seqlen]
        if cache is not None:
            cache.seqlen_offset += seqlen
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return self.lm_head(hidden)

    def prompt_steps(self, seqlen: int, cache: Optional[InferenceCache] = None) -> int:
        """How many steps ``forward`` runs a prompt of ``seqlen`` tokens as.  Mamba-1 on the Triton kernels
        runs a prompt as a padded number of steps (``Mamba1Mixer.prefill_in_proj``); padding it once here,
        instead of in every mixer, saves each layer a fill and a copy of its input (on an H200, mamba-130m
        at L = 16383: 0.6 ms of its prefill; docs/kernel_notes.md).  The first mixer's rule decides; a mixer
        on another backend takes the padded rows as they come (its ``length`` argument).  A prompt that
        continues a filled cache runs as it is (one step per token)."""
        mixer = self.backbone.layers[0].mixer if len(self.backbone.layers) else None
        if not hasattr(mixer, "prompt_steps") or (cache is not None and cache.seqlen_offset > 0):
            return seqlen
        return mixer.prompt_steps(seqlen, self.backbone.embedding.weight.device)

    def _run_blocks(self, x: torch.Tensor, run_mixer) -> torch.Tensor:
        """The residual stream through every block and the final norm: Block's x + mixer(norm(x)), with
        each residual add fused into the norm that follows it (one kernel on the GPU instead of two)."""
        fp32 = torch.float32 if self.config.residual_in_fp32 else None
        residual = None
        for block in self.backbone.layers:
            normed, residual = block.norm.add_forward(x, residual, residual_dtype=fp32)
            x = run_mixer(block, normed)
        return self.backbone.norm_f.add_forward(x, residual, residual_dtype=fp32)[0]

    def allocate_cache(self, batch_size: int) -> InferenceCache:
        p = self.backbone.embedding.weight
        return InferenceCache.allocate(self.config, batch_size, device=p.device, dtype=p.dtype)

    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One token per sequence: input_ids (Bsz,) -> logits (Bsz, V); the cache advances in place."""
        hidden = self._run_blocks(self.backbone.embedding(input_ids), lambda block, h: block.mixer.step(h, cache))
        cache.seqlen_offset += 1
        return self.lm_head(hidden)

    # --------------------------------------------------------------------------------------- generate
    def graph_decoder(self, batch_size: int):
        """The captured CUDA-graph decoder for this batch size (captured once, then reused)."""
        from perfmamba.models.cuda_graph import GraphDecoder
        key = (batch_size, self._backend)
        decoders = self.__dict__.setdefault("_graph_decoders", {})
        if key not in decoders:
            decoders[key] = GraphDecoder(self, batch_size)
        return decoders[key]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 eos_token_id: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 cuda_graph: Optional[bool] = None) -> torch.Tensor:
        """Prefill the prompt once, then decode token by token through the cache.

        Greedy unless ``do_sample``; sampling applies temperature, then top-k, then top-p.  Returns prompt +
        new tokens as (Bsz, L + max_new_tokens); once a sequence emits ``eos_token_id`` it is padded with it.
        ``cuda_graph``: replay a captured CUDA graph per token (default: on when the model is on a GPU);
        False decodes eagerly.
        """
        self._check_ids(input_ids)
        if input_ids.shape[1] < 1:
            raise PerfMambaError("generate needs a prompt of at least one token per sequence")
        if max_new_tokens < 0:
            raise PerfMambaError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        on_gpu = input_ids.is_cuda and next(self.parameters()).is_cuda
        if cuda_graph and not on_gpu:
            raise PerfMambaError("cuda_graph=True needs the model and input_ids on a CUDA GPU; use cuda_graph=False")
        if cuda_graph is None:
            cuda_graph = on_gpu
        if cuda_graph:
            decoder = self.graph_decoder(input_ids.shape[0])
            logits, step = decoder.prefill(input_ids), decoder.step
        else:
            cache = self.allocate_cache(input_ids.shape[0])
            logits = self.forward(input_ids, cache, logits_to_keep=1)[:, -1]  # (Bsz, V)
            step = lambda token: self.step(token, cache)  # noqa: E731
        out = [input_ids]
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            token = choose_next_token(logits, do_sample, temperature, top_k, top_p, generator)  # (Bsz,)
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            out.append(token[:, None].to(input_ids.dtype))
            if i + 1 < max_new_tokens:
                logits = step(token)
        return torch.cat(out, dim=1)

    # ------------------------------------------------------------------------------------------- i/o
    def save_pretrained(self, directory: str, format: str = "hf") -> None:
        """Write config.json + weights in Hugging Face ("hf") or mamba_ssm ("mamba_ssm") layout."""
        from perfmamba.models.checkpoint import save_checkpoint
        save_checkpoint(self, directory, format=format)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
