"""Fixtures for the data / training / evaluation tests: an isolated cache, a small corpus on disk, and a
tiny model trained for a few steps (CPU, seconds)."""

import pytest
import torch

from perfmamba.eval.data import build_cpython_docs, save_corpus
from perfmamba.eval.train import train

from eval_helpers import quick_train_config, tiny_config


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.cache/perfmamba from tests."""
    monkeypatch.setenv("PERFMAMBA_CACHE", str(tmp_path_factory.getbasetemp() / "perfmamba-cache"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """These models are tiny: one intra-op thread is faster than several, and much faster on a busy CI
    machine where threads wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_corpus_dir(tmp_path_factory):
    """The built-in corpus restricted to its first modules, saved as train/validation/test.txt."""
    directory = tmp_path_factory.mktemp("corpus") / "small"
    save_corpus(build_cpython_docs(max_modules=6), str(directory))
    return str(directory)


@pytest.fixture(scope="session", params=["mamba1", "mamba2"])
def trained_tiny(request, small_corpus_dir, tmp_path_factory):
    """(family, directory) of a tiny model trained for a few steps and saved in Hugging Face layout."""
    out = tmp_path_factory.mktemp(f"tiny-{request.param}")
    torch.manual_seed(0)
    train(tiny_config(request.param), quick_train_config(), str(out), data=small_corpus_dir, device="cpu",
          log=lambda m: None, progress=False)
    return request.param, str(out)
