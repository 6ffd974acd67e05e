"""Mixer details that the whole-model tests do not isolate."""

import torch

from perfmamba import Mamba1Config, Mamba2Config
from perfmamba.models.mamba1 import Mamba1Mixer
from perfmamba.models.mamba2 import Mamba2Mixer


def _mixers():
    return [Mamba1Mixer(Mamba1Config(d_model=32, n_layer=1, vocab_size=16, d_state=5), 0),
            Mamba2Mixer(Mamba2Config(d_model=32, n_layer=1, vocab_size=16, d_state=8, headdim=16), 0)]


def test_neg_exp_A_is_cached_and_follows_weight_updates():
    for mixer in _mixers():
        with torch.no_grad():
            first = mixer.neg_exp_A()
            assert mixer.neg_exp_A() is first  # no recomputation while A_log is unchanged
            assert torch.equal(first, -torch.exp(mixer.A_log))
            mixer.A_log.add_(0.5)  # an in-place update (optimizer step, load_state_dict) invalidates it
            second = mixer.neg_exp_A()
            assert torch.equal(second, -torch.exp(mixer.A_log)) and not torch.equal(second, first)


def test_neg_exp_A_carries_gradients_when_autograd_is_on():
    for mixer in _mixers():
        mixer.neg_exp_A().sum().backward()
        assert mixer.A_log.grad is not None and torch.isfinite(mixer.A_log.grad).all()
