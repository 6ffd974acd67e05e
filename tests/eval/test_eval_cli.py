"""``perfmamba eval`` / ``perfmamba train`` end to end, and their one-line errors."""

import json
import os

import pytest

from perfmamba.api import load_model
from perfmamba.cli import main
from perfmamba.demo_models import DEMO_MODELS, demo_model_path
from perfmamba.errors import PerfMambaError
from perfmamba.eval.data import ByteTokenizer, load_corpus
from perfmamba.eval.perplexity import evaluate_text


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err
    return err[0]


def test_eval_json_matches_the_library(trained_tiny, small_corpus_dir, capsys):
    _, directory = trained_tiny
    argv = ["eval", directory, "--data", small_corpus_dir, "--split", "validation", "--max-bytes", "1500",
            "--context", "64", "--stride", "32", "--device", "cpu", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    text = load_corpus(small_corpus_dir).text("validation").encode()[:1500].decode()
    model = load_model(directory, device="cpu", backend="ref")
    expected = evaluate_text(model, ByteTokenizer(), text, context=64, stride=32)
    assert out["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-6)
    assert out["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert out["tokens"] == expected.tokens == 1499
    assert out["data"]["bytes"] == 1500 and len(out["data_sha256"]) == 64
    assert out["data"]["corpus"]["name"] == "cpython-docs"
    assert main(argv) == 0  # deterministic
    assert json.loads(capsys.readouterr().out)["bits_per_byte"] == out["bits_per_byte"]


def test_eval_human_output(trained_tiny, tmp_path, capsys):
    _, directory = trained_tiny
    text = tmp_path / "mine.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 20)
    assert main(["eval", directory, "--data", str(text), "--context", "128", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "bits/byte" in captured.out and "[all]" in captured.out
    assert "sha256" in captured.err  # the data's size and hash are printed


def test_train_cli_end_to_end(small_corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--family", "mamba2", "--d-model", "16", "--n-layer", "1", "--d-state", "8", "--headdim", "8",
            "--chunk-size", "16", "--data", small_corpus_dir, "--out", str(out), "--steps", "4", "--batch-size", "2",
            "--seq-len", "32", "--eval-every", "2", "--eval-bytes", "800", "--device", "cpu", "--json"]
    assert main(argv + ["--stop-after", "2"]) == 0
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["finished"] and record["steps"] == 4
    assert record["command"].startswith("perfmamba train --family mamba2 --d-model 16")
    assert "--lr 0.002" in record["command"]  # every training option is spelled out
    with open(out / "training.json") as f:
        assert json.load(f)["history"][-1]["step"] == 4
    assert load_model(str(out), device="cpu").config.d_state == 8


@pytest.mark.parametrize("argv,needle", [
    (["train", "--family", "mamba3", "--preset", "tiny-mamba1", "--out", "{tmp}/x"], "mamba3"),
    (["train", "--family", "mamba1", "--preset", "tiny-mamba1", "--data", "{tmp}/missing.txt", "--out", "{tmp}/x"],
     "no such file"),
    (["train", "--family", "mamba2", "--preset", "tiny-mamba1", "--out", "{tmp}/x"], "is mamba1"),
    (["train", "--family", "mamba1", "--out", "{tmp}/x"], "--preset"),
    (["train", "--family", "mamba1", "--preset", "nope", "--out", "{tmp}/x"], "unknown preset"),
    (["train", "--family", "mamba1", "--preset", "tiny-mamba1", "--steps", "0", "--out", "{tmp}/x"], "--steps"),
    (["eval", "mamba-130m", "--data", "{tmp}/missing.txt"], "no such file"),
    (["eval", "no-such-model", "--data", "{tmp}/t.txt"], "neither a preset"),
    (["eval", "mamba-130m", "--data", "{tmp}/t.txt", "--stride", "2000"], "--stride"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("some text\n")
    line = _one_line_error(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert needle in line


def test_preset_without_tokenizer_is_one_line(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("some text\n")
    assert "--tokenizer" in _one_line_error(capsys, ["eval", "mamba-130m", "--data", str(tmp_path / "t.txt"),
                                                    "--device", "cpu"])


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_demo_models_resolve_by_name(name, capsys):
    if not os.path.exists(os.path.join(demo_model_path(name), "model.safetensors")):
        pytest.skip(f"{name} is not shipped yet")
    model = load_model(name, device="cpu")
    assert model.config.vocab_size == 256 and model.config.family == "mamba" + name[-1]
    assert main(["eval", name, "--max-bytes", "1500", "--context", "512", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.5 < out["bits_per_byte"] < 3.0  # a trained model, far below the 8 bits of a uniform guess


def test_unshipped_demo_model_is_a_clear_one_line_error(tmp_path, monkeypatch, capsys):
    import perfmamba.demo_models as demo
    monkeypatch.setattr(demo, "_HERE", str(tmp_path))  # as before the models were trained
    with pytest.raises(PerfMambaError, match="demo model demo-mamba1 is not shipped yet"):
        load_model("demo-mamba1")
    assert "not shipped yet" in _one_line_error(capsys, ["eval", "demo-mamba2"])
