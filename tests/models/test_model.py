"""MambaLM on the CPU: decoding through the cache equals the full-sequence forward, generate() and sampling,
and per-layer state sizes (pruned models)."""

import pytest
import torch

import perfmamba
from perfmamba.config import Mamba1Config, Mamba2Config
from perfmamba.errors import PerfMambaError
from perfmamba.models.lm import MambaLM

VOCAB = 101

CONFIGS = {
    "m1-n16": Mamba1Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=16),
    "m1-n7-conv3-bias": Mamba1Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=7, d_conv=3, bias=True,
                                     conv_bias=False, tie_embeddings=False),
    "m1-perlayer": Mamba1Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state_per_layer=[5, 9]),
    "m2-n16-g1": Mamba2Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=16, headdim=16, chunk_size=8),
    "m2-n11-g2": Mamba2Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=11, headdim=8, ngroups=2,
                              chunk_size=16, d_conv=3, bias=True, tie_embeddings=False),
    "m2-n7-g2-dtlimit": Mamba2Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=7, headdim=16, ngroups=2,
                                     chunk_size=8, dt_limit=(0.05, 0.5)),
    "m2-perlayer": Mamba2Config(d_model=32, n_layer=2, vocab_size=VOCAB, headdim=16, ngroups=2, chunk_size=8,
                                d_state_per_layer=[5, 9]),
}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def token_ids(batch, length, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, randomise):
    torch.manual_seed(0)
    return randomise(MambaLM(CONFIGS[request.param]), seed=7).eval()


@torch.no_grad()
def test_step_by_step_decode_equals_full_forward(model):
    ids = token_ids(2, 26, seed=1)  # > 3 chunks of the Mamba-2 configs, not a multiple of any
    full = model(ids)
    assert full.shape == (2, 26, VOCAB)
    cache = model.allocate_cache(2)
    steps = torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)
    assert cache.seqlen_offset == 26
    assert rel_err(steps, full) < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("prefill", [1, 5, 17])
def test_prefill_then_steps_equals_full_forward(model, prefill):
    ids = token_ids(2, 22, seed=2)
    full = model(ids)
    cache = model.allocate_cache(2)
    head = model(ids[:, :prefill], cache)
    assert cache.seqlen_offset == prefill
    assert rel_err(head, full[:, :prefill]) < 1e-6
    tail = torch.stack([model.step(ids[:, t], cache) for t in range(prefill, 22)], dim=1)
    assert rel_err(tail, full[:, prefill:]) < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("keep", [1, 4, 40])
def test_logits_to_keep_gives_the_last_positions(model, keep):
    """logits_to_keep = k returns the last k positions of the full forward (all of them when k >= L), and a
    cache filled alongside holds the same states."""
    ids = token_ids(2, 21, seed=8)
    full_cache, kept_cache = model.allocate_cache(2), model.allocate_cache(2)
    full = model(ids, full_cache)
    kept = model(ids, kept_cache, logits_to_keep=keep)
    assert kept.shape == (2, min(keep, 21), VOCAB)
    assert rel_err(kept, full[:, -keep:]) < 1e-6  # the same rows of a GEMM with fewer rows
    for a, b in zip(full_cache.ssm_states + full_cache.conv_states, kept_cache.ssm_states + kept_cache.conv_states):
        assert torch.equal(a, b)
    for bad in (-1, 1.5):
        with pytest.raises(PerfMambaError) as err:
            model(ids, logits_to_keep=bad)
        assert "logits_to_keep" in str(err.value)


@torch.no_grad()
def test_forward_with_filled_cache_continues(model):
    """A multi-token forward through a cache that already holds a prefix continues from it."""
    ids = token_ids(2, 25, seed=3)
    full = model(ids)
    cache = model.allocate_cache(2)
    model(ids[:, :10], cache)
    rest = model(ids[:, 10:], cache)
    assert cache.seqlen_offset == 25
    assert rel_err(rest, full[:, 10:]) < 1e-4


@torch.no_grad()
def test_final_cache_states_equal_stepped_states(model):
    ids = token_ids(2, 19, seed=4)
    prefilled = model.allocate_cache(2)
    model(ids, prefilled)
    stepped = model.allocate_cache(2)
    for t in range(ids.shape[1]):
        model.step(ids[:, t], stepped)
    for a, b in zip(prefilled.conv_states + prefilled.ssm_states, stepped.conv_states + stepped.ssm_states):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-4


def test_cache_shapes_follow_the_config(model):
    cfg = model.config
    cache = model.allocate_cache(3)
    assert cache.batch_size == 3 and cache.seqlen_offset == 0
    for i in range(cfg.n_layer):
        n = cfg.layer_d_state(i)
        if cfg.family == "mamba1":
            assert cache.conv_states[i].shape == (3, cfg.d_inner, cfg.d_conv)
            assert cache.ssm_states[i].shape == (3, cfg.d_inner, n)
        else:
            assert cache.conv_states[i].shape == (3, cfg.d_inner + 2 * cfg.ngroups * n, cfg.d_conv)
            assert cache.ssm_states[i].shape == (3, cfg.nheads, cfg.headdim, n)
        assert cache.ssm_states[i].dtype == torch.float32


# ------------------------------------------------------------------------------------------- generate
def test_generate_shapes_and_greedy_matches_full_forward(model):
    prompt = token_ids(3, 6, seed=5)
    out = model.generate(prompt, max_new_tokens=7)
    assert out.shape == (3, 13) and out.dtype == prompt.dtype
    assert torch.equal(out[:, :6], prompt)
    # greedy without the cache: argmax of the full forward, one token at a time
    seq = prompt
    with torch.no_grad():
        for _ in range(7):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)
    assert model.generate(prompt, max_new_tokens=1).shape == (3, 7)


def test_sampling_is_seeded_and_filters_reduce_to_greedy(model):
    prompt = token_ids(2, 4, seed=6)
    greedy = model.generate(prompt, max_new_tokens=10)

    def sample(seed, **kw):
        return model.generate(prompt, max_new_tokens=10, do_sample=True,
                              generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = sample(1), sample(1), sample(2)
    assert a.shape == (2, 14)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # a random model over 101 tokens: 20 draws cannot all agree
    assert torch.equal(sample(3, top_k=1), greedy)
    assert torch.equal(sample(4, top_p=1e-6), greedy)
    assert torch.equal(sample(5, temperature=1e-4), greedy)
    assert torch.equal(sample(6, top_k=5, top_p=1e-6), greedy)


def test_top_k_and_top_p_filters():
    from perfmamba.models.sampling import choose_next_token
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0]]).repeat(400, 1)
    draws = choose_next_token(logits, True, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 2}
    draws = choose_next_token(logits, True, top_p=0.8, generator=torch.Generator().manual_seed(0))
    # probabilities ~ [.03, .64, .24, .09, .01]: the nucleus of 0.8 is tokens 1 and 2
    assert set(draws.tolist()) == {1, 2}


def test_eos_stops_a_sequence(model):
    prompt = token_ids(2, 5, seed=8)
    free = model.generate(prompt, max_new_tokens=12)
    eos = int(free[0, 5 + 3])  # the 4th new token of sequence 0
    first = [int((row[5:] == eos).nonzero()[0]) if (row[5:] == eos).any() else None for row in free]
    out = model.generate(prompt, max_new_tokens=12, eos_token_id=eos)
    assert out.shape == free.shape
    for row, (o, f) in enumerate(zip(out, free)):
        k = first[row]
        if k is None:  # never emitted eos: unchanged
            assert torch.equal(o, f)
        else:  # identical up to and including the first eos, eos afterwards
            assert torch.equal(o[:5 + k + 1], f[:5 + k + 1])
            assert (o[5 + k:] == eos).all()
    assert first[0] is not None and first[0] <= 3


def test_generate_and_forward_errors(model):
    with pytest.raises(PerfMambaError) as err:
        model(torch.tensor([[1, VOCAB]]))
    assert str(VOCAB) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PerfMambaError) as err:
        model(torch.zeros(2, 3))
    assert "input_ids" in str(err.value)
    with pytest.raises(PerfMambaError):
        model(torch.tensor([1, 2]))
    with pytest.raises(PerfMambaError) as err:
        model.generate(torch.zeros(2, 0, dtype=torch.long))
    assert "prompt" in str(err.value)
    with pytest.raises(PerfMambaError) as err:
        model.generate(token_ids(1, 3), max_new_tokens=-1)
    assert "max_new_tokens" in str(err.value)


# ----------------------------------------------------------------------------------- per-layer d_state
@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_per_layer_d_state_builds_and_round_trips(family, tmp_path, randomise):
    cfg = CONFIGS["m1-perlayer" if family == "mamba1" else "m2-perlayer"]
    assert cfg.d_state_per_layer == [5, 9] and cfg.d_state == 9
    model = randomise(MambaLM(cfg), seed=9).eval()
    mixers = [block.mixer for block in model.backbone.layers]
    if family == "mamba1":
        assert [m.A_log.shape[1] for m in mixers] == [5, 9]
        assert [m.x_proj.weight.shape[0] for m in mixers] == [cfg.dt_rank + 10, cfg.dt_rank + 18]
    else:
        assert [m.conv1d.weight.shape[0] for m in mixers] == [cfg.d_inner + 2 * 2 * 5, cfg.d_inner + 2 * 2 * 9]
        assert [m.in_proj.weight.shape[0] for m in mixers] == [2 * cfg.d_inner + 2 * 2 * n + cfg.nheads
                                                               for n in (5, 9)]
    ids = token_ids(2, 21, seed=10)
    with torch.no_grad():
        logits = model(ids)
    for fmt in ("hf", "mamba_ssm"):
        directory = tmp_path / fmt
        model.save_pretrained(str(directory), format=fmt)
        loaded = perfmamba.load_model(str(directory), device="cpu")
        assert loaded.config.d_state_per_layer == [5, 9]
        assert loaded.config == cfg
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        with torch.no_grad():
            assert torch.equal(loaded(ids), logits)
