"""Training on the CPU: the loss goes down, resumption is exact, the schedule and batches are fixed."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from perfmamba.errors import PerfMambaError
from perfmamba.eval.data import ByteTokenizer, load_corpus
from perfmamba.eval.perplexity import evaluate_text
from perfmamba.eval.train import TrainConfig, batch_at, lr_at, model_config, train
from perfmamba.models.checkpoint import load_checkpoint_dir

from eval_helpers import quick_train_config, tiny_config

QUIET = dict(device="cpu", log=lambda m: None, progress=False)


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_batches_depend_only_on_seed_and_step():
    data = torch.arange(1000) % 251
    cfg = TrainConfig(batch_size=3, seq_len=8, seed=5)
    x1, y1 = batch_at(data, 7, cfg, "cpu")
    x2, y2 = batch_at(data, 7, cfg, "cpu")
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (3, 8) and x1.dtype == torch.long
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one
    assert not torch.equal(batch_at(data, 8, cfg, "cpu")[0], x1)


def test_model_config_from_presets_and_dimensions():
    cfg = model_config("mamba2", "demo-mamba2")
    assert cfg.family == "mamba2" and cfg.vocab_size == 256 and cfg.d_state == 64
    assert model_config("mamba1", "demo-mamba1", d_state=8).d_state == 8
    assert model_config("mamba1", "mamba-130m").d_model == 768  # published size, byte vocabulary
    with pytest.raises(PerfMambaError, match="is mamba1"):
        model_config("mamba2", "demo-mamba1")
    with pytest.raises(PerfMambaError, match="unknown family"):
        model_config("mamba3", d_model=8, n_layer=1)
    with pytest.raises(PerfMambaError, match="--d-model"):
        model_config("mamba1")


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_a_few_seconds_of_training_lower_the_loss(family, small_corpus_dir, tmp_path):
    text = load_corpus(small_corpus_dir).text("validation")[:3000]
    tok = ByteTokenizer()
    cfg = tiny_config(family)
    tcfg = quick_train_config(steps=40, batch_size=8, seq_len=64, lr=1e-2, warmup=4, eval_every=20,
                              save_every=40)
    record = train(cfg, tcfg, str(tmp_path), data=small_corpus_dir, **QUIET)
    torch.manual_seed(0)
    from perfmamba.models.checkpoint import build_model
    untrained = build_model(cfg, backend="ref")
    trained = load_checkpoint_dir(str(tmp_path), backend="ref")
    before = evaluate_text(untrained, tok, text, context=64, stride=32).bits_per_byte
    after = evaluate_text(trained, tok, text, context=64, stride=32).bits_per_byte
    assert before > 7.5  # about log2(256) = 8 for an untrained byte model
    assert after < before - 1.5, (before, after)
    history = record["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert record["finished"] and record["steps"] == 40 and record["tokens"] == 40 * 8 * 64
    assert record["data"]["sha256"] == load_corpus(small_corpus_dir).sha256


def _weights(directory):
    return load_file(os.path.join(directory, "model.safetensors"))


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_resume_continues_exactly(family, small_corpus_dir, tmp_path):
    cfg, tcfg = tiny_config(family), quick_train_config(steps=8, eval_every=2, save_every=3)
    whole = train(cfg, tcfg, str(tmp_path / "whole"), data=small_corpus_dir, **QUIET)
    first = train(cfg, tcfg, str(tmp_path / "split"), data=small_corpus_dir, stop_after=5, **QUIET)
    assert not first["finished"] and first["steps"] == 5
    assert not os.path.exists(tmp_path / "split" / "model.safetensors")
    resumed = train(cfg, tcfg, str(tmp_path / "split"), data=small_corpus_dir, resume=True, **QUIET)
    assert resumed["finished"] and resumed["steps"] == 8
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    vals = lambda r: [(h["step"], h["val_bits_per_byte"]) for h in r["history"]]  # noqa: E731
    assert vals(whole) == vals(resumed)
    assert whole["best"] == resumed["best"]
    assert torch.equal(_weights(tmp_path / "whole" / "best")["backbone.embeddings.weight"],
                       _weights(tmp_path / "split" / "best")["backbone.embeddings.weight"])


def test_resume_refuses_mismatches(small_corpus_dir, tmp_path):
    cfg, tcfg = tiny_config("mamba1"), quick_train_config(steps=4)
    with pytest.raises(PerfMambaError, match="no checkpoint"):
        train(cfg, tcfg, str(tmp_path), data=small_corpus_dir, resume=True, **QUIET)
    train(cfg, tcfg, str(tmp_path), data=small_corpus_dir, stop_after=2, **QUIET)
    with pytest.raises(PerfMambaError, match="already holds"):
        train(cfg, tcfg, str(tmp_path), data=small_corpus_dir, **QUIET)
    with pytest.raises(PerfMambaError, match="lr"):
        train(cfg, quick_train_config(steps=4, lr=1e-3), str(tmp_path), data=small_corpus_dir, resume=True,
              **QUIET)
    with pytest.raises(PerfMambaError, match="d_model"):
        train(model_config("mamba1", d_model=24, n_layer=2, d_state=4), tcfg, str(tmp_path),
              data=small_corpus_dir, resume=True, **QUIET)


def test_training_record_and_outputs(trained_tiny):
    family, directory = trained_tiny
    with open(os.path.join(directory, "training.json")) as f:
        record = json.load(f)
    assert record["model_config"]["family"] == family and record["steps"] == 6
    assert record["data"]["name"] == "cpython-docs" and len(record["data"]["sha256"]) == 64
    assert record["wall_seconds"] > 0 and record["tokens_per_second"] > 0
    assert math.isfinite(record["final_val_bits_per_byte"]) and record["best"]["step"] in (3, 6)
    for sub in ("", "best"):
        assert os.path.exists(os.path.join(directory, sub, "config.json"))
        assert os.path.exists(os.path.join(directory, sub, "model.safetensors"))
    assert len(os.listdir(os.path.join(directory, "checkpoints"))) == 2  # the last two are kept
    assert not [n for n in os.listdir(directory) if n.startswith(".tmp")]  # no temporary leftovers


def test_early_stopping(small_corpus_dir, tmp_path):
    record = train(tiny_config("mamba1"), quick_train_config(steps=30, eval_every=1, patience=2, min_delta=10.0),
                   str(tmp_path), data=small_corpus_dir, **QUIET)
    assert record["stopped_early"] and record["steps"] == 3 and record["finished"]
