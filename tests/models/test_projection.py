"""The decode step's projections (``models.projection.project``): a plain nn.Linear goes through
``ops.linear``; a layer with hooks, or one that is not exactly nn.Linear, is called as a module."""

import torch
import torch.nn as nn

from perfmamba.models import projection


def _layer_and_rows():
    torch.manual_seed(0)
    return nn.Linear(12, 7), torch.randn(3, 12)


def test_plain_linear_goes_through_ops_linear(monkeypatch):
    layer, x = _layer_and_rows()
    seen = []
    monkeypatch.setattr(projection.ops, "linear", lambda *a, **k: seen.append(k["backend"]) or layer(a[0]))
    assert torch.equal(projection.project(layer, x, "ref"), layer(x)) and seen == ["ref"]


def _bypassed(*args, **kwargs):
    raise AssertionError("the module call was bypassed")


def test_hooks_and_adapters_keep_their_effect(monkeypatch):
    monkeypatch.setattr(projection.ops, "linear", _bypassed)
    layer, x = _layer_and_rows()
    layer.register_forward_hook(lambda mod, args, out: out * 2)
    assert torch.equal(projection.project(layer, x, "ref"), 2 * nn.functional.linear(x, layer.weight, layer.bias))

    class Adapted(nn.Linear):  # e.g. a low-rank adapter put in in_proj's place
        def forward(self, inp):
            return super().forward(inp) + 1

    adapted = Adapted(12, 7)
    assert torch.equal(projection.project(adapted, x, "ref"), adapted(x))


def test_global_hooks_keep_their_effect(monkeypatch):
    monkeypatch.setattr(projection.ops, "linear", _bypassed)
    layer, x = _layer_and_rows()
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: seen.append(type(mod)))
    try:
        assert torch.equal(projection.project(layer, x, "ref"), layer(x))
    finally:
        handle.remove()
    assert nn.Linear in seen
    seen.clear()
    pre = nn.modules.module.register_module_forward_pre_hook(lambda mod, args: seen.append(type(mod)))
    try:
        projection.project(layer, x, "ref")
    finally:
        pre.remove()
    assert seen == [nn.Linear]
