"""MambaLM pads a Mamba-1 prompt once for all its layers (``MambaLM.prompt_steps``) instead of each mixer
padding its own input: the mixers get the padded rows and the true ``length``, the logits and cache are
those of the prompt itself, and the profiler's stages do the same.  On the Triton kernels that padding is
the rule; here it is switched on for the reference backend, so that these tests run on any machine (the
Triton path itself: tests/ops/test_mixer_padded_steps.py)."""

import copy

import pytest
import torch

from perfmamba import Mamba1Config, Mamba2Config, MambaLM
from perfmamba.errors import PerfMambaError
from perfmamba.models import mamba1
from perfmamba.profiling.stages import model_stages, run_stages

CONFIG = Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=5)


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def model(name="mamba1"):
    torch.manual_seed(0)
    cfg = CONFIG if name == "mamba1" else Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=8)
    lm = MambaLM(cfg, backend="ref").eval()
    with torch.no_grad():  # off the structured init, so that nothing cancels out
        for p in lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return lm


def pad_on_ref(monkeypatch):
    """The Triton kernels' rule (here always to STEP_MULTIPLE steps) on the reference backend."""
    monkeypatch.setattr(mamba1, "PAD_AT_MOST", 0)
    monkeypatch.setattr(mamba1.Mamba1Mixer, "prompt_steps", lambda self, seqlen, device: mamba1.padded_steps(seqlen))


@pytest.fixture
def padded_on_ref(monkeypatch):
    pad_on_ref(monkeypatch)


def record_mixer_calls(lm):
    calls = []
    hooks = [b.mixer.register_forward_pre_hook(lambda m, args, kwargs: calls.append(
        (args[0].shape[1], kwargs.get("length"))), with_kwargs=True) for b in lm.backbone.layers]
    return calls, hooks


@pytest.mark.parametrize("seqlen, bsz", [(35, 2), (3, 1), (64, 2)])
@torch.inference_mode()
def test_prompt_padded_once_gives_the_prompts_logits_and_states(seqlen, bsz, monkeypatch):
    lm = model()
    ids = torch.randint(0, 64, (bsz, seqlen))
    want_cache = lm.allocate_cache(bsz)
    want = lm(ids, want_cache)
    want_last = lm(ids, logits_to_keep=1)
    pad_on_ref(monkeypatch)  # only now: the wanted values above are the unpadded run's
    steps = mamba1.padded_steps(seqlen)
    assert lm.prompt_steps(seqlen) == steps == seqlen + (-seqlen % 64)
    calls, hooks = record_mixer_calls(lm)
    cache = lm.allocate_cache(bsz)
    got = lm(ids, cache)
    for h in hooks:
        h.remove()
    padded = steps != seqlen
    assert calls == [(steps, seqlen if padded else None)] * 2  # every mixer: the padded rows, the true length
    assert got.shape == want.shape == (bsz, seqlen, 64) and rel_err(got, want) < 1e-6
    assert cache.seqlen_offset == want_cache.seqlen_offset == seqlen
    for a, b in zip(cache.conv_states + cache.ssm_states, want_cache.conv_states + want_cache.ssm_states):
        assert rel_err(a, b) < 1e-6  # the states after step L, not after the padding
    assert rel_err(lm(ids, logits_to_keep=1), want_last) < 1e-6  # the prompt's last position, not the padding's
    nxt = torch.randint(0, 64, (bsz, 3))  # decoding on from the states: one step per token, never padded
    calls, hooks = record_mixer_calls(lm)
    assert rel_err(lm(nxt, cache), lm(nxt, want_cache)) < 1e-6
    assert calls[:2] == [(3, None)] * 2


@torch.inference_mode()
def test_a_mixer_given_the_padded_rows_keeps_them(padded_on_ref):
    lm = model()
    mixer = lm.backbone.layers[0].mixer
    hidden = torch.randn(2, 35, 32)
    padded = torch.cat([hidden, torch.randn(2, 29, 32)], 1)  # whatever the padding's rows hold
    out = mixer(padded, length=35)
    assert out.shape == (2, 64, 32) and rel_err(out[:, :35], mixer(hidden)) < 1e-6
    for bad in (0, 65):
        with pytest.raises(PerfMambaError, match=f"length must be in 1..64 .*got {bad}"):
            mixer(padded, length=bad)


@torch.inference_mode()
def test_profiler_stages_pad_as_the_model_does(padded_on_ref):
    lm = model()
    ids = torch.randint(0, 64, (2, 35))
    stages = model_stages(lm, "prefill")
    env = {"ids": ids}
    seen = []
    for stage in stages:
        env = stage.fn(env)
        if stage.kind == "in_proj":
            seen.append((env["x"].shape[-1], env["seqlen"]))
    assert seen == [(64, 35)] * 2
    assert torch.equal(env["logits"], lm(ids))
    assert torch.equal(run_stages(stages, {"ids": ids})["logits"], lm(ids))
    cache = lm.allocate_cache(2)
    lm(ids, cache)
    staged = copy.deepcopy(cache)  # decode stages are not padded: one token each
    tok = torch.randint(0, 64, (2,))
    assert torch.equal(run_stages(model_stages(lm, "decode", staged), {"ids": tok})["logits"], lm.step(tok, cache))


def test_mamba2_prompts_run_as_they_are():
    assert model("mamba2").prompt_steps(35) == 35
