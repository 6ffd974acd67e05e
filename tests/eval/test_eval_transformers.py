"""Checkpoints written by ``perfmamba train`` load in Hugging Face transformers with the same logits."""

import os

import pytest
import torch

from perfmamba.demo_models import DEMO_MODELS, demo_model_path
from perfmamba.models.checkpoint import load_checkpoint_dir

transformers = pytest.importorskip("transformers")


def _hf_logits(directory, family, ids):
    cls = transformers.MambaForCausalLM if family == "mamba1" else transformers.Mamba2ForCausalLM
    model = cls.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _compare(directory, family, length=80):
    ours = load_checkpoint_dir(directory, backend="ref", dtype=torch.float32)
    ids = torch.randint(0, ours.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = ours(ids)
    theirs = _hf_logits(directory, family, ids)
    assert theirs.shape == mine.shape
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-4)


def test_trained_tiny_model_matches_transformers(trained_tiny):
    family, directory = trained_tiny
    _compare(directory, family)
    _compare(os.path.join(directory, "best"), family)


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_shipped_demo_model_matches_transformers(name):
    directory = demo_model_path(name)
    if not os.path.exists(os.path.join(directory, "model.safetensors")):
        pytest.skip(f"{name} is not shipped yet")
    _compare(directory, "mamba1" if name.endswith("1") else "mamba2", length=300)
