"""Perplexity / bits per byte: window plans, agreement with a direct computation, determinism."""

import math

import pytest
import torch
import torch.nn.functional as F

from perfmamba.errors import PerfMambaError
from perfmamba.eval.data import ByteTokenizer, Tokens
from perfmamba.eval.perplexity import evaluate_text, evaluate_tokens, paired_bootstrap, plan_windows, score_windows
from perfmamba.models.checkpoint import build_model

from eval_helpers import tiny_config

TEXT = ("The selective scan keeps a state per channel; pruning removes the channels that matter least. "
        "Bits per byte compare models with different tokenizers. é€!\n") * 2


@pytest.fixture(scope="module", params=["mamba1", "mamba2"])
def model(request):
    torch.manual_seed(1)
    m = build_model(tiny_config(request.param), backend="ref").eval()
    with torch.no_grad():  # a non-trivial function (the init leaves near-uniform predictions)
        for p in m.parameters():
            if p.dim() >= 2:
                p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("n,context,stride", [(2, 1, 1), (10, 4, 2), (10, 4, 4), (11, 4, 3), (100, 16, 5),
                                              (5, 64, 32), (64, 64, 64), (65, 64, 64)])
def test_every_token_after_the_first_is_scored_once(n, context, stride):
    seen = []
    for begin, length, first in plan_windows(n, context, stride):
        assert 1 <= length <= context and begin + length <= n - 1
        assert begin + 1 <= first <= begin + length  # a scored target always has context in its window
        seen += list(range(first, begin + length + 1))
    assert seen == list(range(1, n))


def test_bad_window_settings():
    with pytest.raises(PerfMambaError):
        plan_windows(10, 0, 1)
    with pytest.raises(PerfMambaError):
        plan_windows(10, 4, 5)


def _direct_nll(model, ids):
    """sum of -log p(token_t | tokens_<t) for t >= 1, in one forward pass over the whole text."""
    with torch.no_grad():
        logits = model(ids[None, :-1].long())[0].double()
    return float(F.cross_entropy(logits, ids[1:].long(), reduction="sum"))


def test_single_window_equals_direct_computation(model):
    tok = ByteTokenizer()
    ids = tok.encode(TEXT).ids
    result = evaluate_text(model, tok, TEXT, context=4096, stride=4096)
    direct = _direct_nll(model, ids)
    assert result.windows == 1 and result.tokens == ids.numel() - 1
    assert result.nll == pytest.approx(direct, rel=1e-5)
    n_bytes = len(TEXT.encode()) - 1  # the first byte is never predicted
    assert result.bytes == n_bytes
    assert result.bits_per_byte == pytest.approx(direct / math.log(2) / n_bytes, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(direct / (ids.numel() - 1)), rel=1e-5)


def test_sliding_windows_equal_per_window_direct_computation(model):
    ids = ByteTokenizer().encode(TEXT).ids
    context, stride = 48, 20
    expected = 0.0
    for begin, length, first in plan_windows(ids.numel(), context, stride):
        with torch.no_grad():
            logits = model(ids[None, begin:begin + length].long())[0].double()
        nll = F.cross_entropy(logits, ids[begin + 1:begin + length + 1].long(), reduction="none")
        expected += float(nll[first - begin - 1:].sum())
    for batch_size in (1, 3, 64):
        nlls, counts = score_windows(model, ids, context, stride, batch_size)
        total, count = math.fsum(nlls), sum(counts)
        assert count == ids.numel() - 1
        assert total == pytest.approx(expected, rel=1e-6)


def test_per_window_nll_matches_the_direct_computation_and_the_totals(model):
    ids = ByteTokenizer().encode(TEXT).ids
    windows = plan_windows(ids.numel(), 48, 20)
    nlls, counts = score_windows(model, ids, 48, 20, batch_size=3)
    assert len(nlls) == len(counts) == len(windows)
    for (begin, length, first), nll, count in zip(windows, nlls, counts):
        with torch.no_grad():
            logits = model(ids[None, begin:begin + length].long())[0].double()
        direct = F.cross_entropy(logits, ids[begin + 1:begin + length + 1].long(), reduction="none")
        assert count == begin + length - first + 1
        assert nll == pytest.approx(float(direct[first - begin - 1:].sum()), rel=1e-6)
    result = evaluate_text(model, ByteTokenizer(), TEXT, context=48, stride=20)
    assert result.window_nll == pytest.approx(nlls, rel=1e-9)
    assert result.nll == pytest.approx(sum(nlls), rel=1e-12)
    assert "window_nll" not in result.to_dict()


def test_paired_bootstrap():
    gen = torch.Generator().manual_seed(0)
    base = (torch.rand(200, generator=gen) + 1.0).tolist()
    same = paired_bootstrap(base, base, base)
    assert same["diff_pct"] == 0 and same["low_pct"] == same["high_pct"] == 0 and same["windows"] == 200
    # a 5% worse model everywhere, plus noise: the interval is around +5 and excludes 0
    noisy = [1.05 * v + 0.02 * float(e) for v, e in zip(base, torch.randn(200, generator=gen))]
    cmp = paired_bootstrap(noisy, base, base)
    assert cmp["low_pct"] < cmp["diff_pct"] < cmp["high_pct"] and 4.0 < cmp["low_pct"] and cmp["high_pct"] < 6.0
    assert paired_bootstrap(noisy, base, base) == cmp  # seeded
    flipped = paired_bootstrap(base, noisy, base)
    assert flipped["diff_pct"] == pytest.approx(-cmp["diff_pct"])
    # noise alone: the interval contains 0
    tie = paired_bootstrap([v + 0.05 * float(e) for v, e in zip(base, torch.randn(200, generator=gen))], base, base)
    assert tie["low_pct"] < 0 < tie["high_pct"]
    with pytest.raises(PerfMambaError, match="same windows"):
        paired_bootstrap(base[:10], base, base)


def test_evaluation_is_deterministic_and_restores_mode(model):
    tok = ByteTokenizer()
    model.train()
    a = evaluate_text(model, tok, TEXT, context=32, stride=16)
    b = evaluate_text(model, tok, TEXT, context=32, stride=16)
    assert model.training
    model.eval()
    assert a.to_dict() == b.to_dict()
    assert set(a.to_dict()) >= {"bits_per_byte", "perplexity", "tokens", "bytes", "nll"}


def test_bits_per_byte_counts_bytes_not_tokens(model):
    """With a 2-bytes-per-token 'tokenizer', bits per byte is the NLL over the bytes the tokens cover."""
    ids = torch.arange(0, 40) % 200
    tokens = Tokens(ids, n_bytes=2 * ids.numel(), first_token_bytes=2)
    result = evaluate_tokens(model, tokens, context=64, stride=64)
    assert result.bytes == 2 * (ids.numel() - 1)
    assert result.bits_per_byte == pytest.approx(result.bits_per_token / 2)


def test_too_short_text_is_an_error(model):
    with pytest.raises(PerfMambaError, match="too short"):
        evaluate_text(model, ByteTokenizer(), "a")
