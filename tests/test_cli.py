"""``perfmamba info``: tables and JSON for presets and checkpoints; every user error is exit code 2 and one
line on stderr, never a traceback."""

import json
import os
import subprocess
import sys

import pytest
import torch

from perfmamba.cli import main
from perfmamba.config import Mamba2Config
from perfmamba.models.lm import MambaLM

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the problems tests/conftest.py's damaged_checkpoint fixture knows how to make
CHECKPOINT_PROBLEMS = ("missing-tensor", "unexpected-tensor", "misshaped-tensor", "wrong-family", "truncated",
                       "no-weights", "no-config", "invalid-json")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, words=()):
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("perfmamba info: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_info_preset_prints_tables(capsys):
    code, out, err = run_cli(capsys, "info", "mamba-130m")
    assert code == 0 and err == ""
    assert "mamba-130m" in out and "mamba1" in out
    assert "Parameters per component" in out
    for row in ("embedding", "in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"):
        assert row in out
    assert "Mixer parameter shapes" in out
    assert "1536 x 16" in out  # A_log of layer 0: d_inner x d_state
    assert "State cache per sequence" in out


def test_info_json_mamba2_2_7b(capsys):
    code, out, err = run_cli(capsys, "info", "mamba2-2.7b", "--json")
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["family"] == "mamba2"
    assert 2.6e9 < summary["parameters"] < 2.8e9
    assert sum(summary["parameters_per_component"].values()) == summary["parameters"]
    cfg = summary["config"]
    assert (cfg["d_model"], cfg["n_layer"], cfg["d_state"], cfg["vocab_size"]) == (2560, 64, 128, 50288)
    assert summary["d_state_per_layer"] == [128] * 64
    # per sequence: conv state (d_inner + 2*N) * d_conv fp32 and ssm state H*P*N fp32, per layer
    cache = summary["state_cache_bytes_per_sequence"]
    assert cache["ssm"] == 64 * 80 * 64 * 128 * 4
    assert cache["conv"] == 64 * (5120 + 2 * 128) * 4 * 4
    assert cache["total"] == cache["ssm"] + cache["conv"]


def test_info_json_mamba1_presets_parameter_counts(capsys):
    expected = {"mamba-130m": 130e6, "mamba-2.8b": 2.8e9}
    for name, approx in expected.items():
        code, out, _ = run_cli(capsys, "info", name, "--json")
        assert code == 0
        assert abs(json.loads(out)["parameters"] / approx - 1) < 0.05, name


def test_info_checkpoint_dir(capsys, tmp_path, randomise):
    cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=77, d_state=11, headdim=16, ngroups=2,
                       tie_embeddings=False)
    model = randomise(MambaLM(cfg), seed=1).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path))
    code, out, err = run_cli(capsys, "info", str(tmp_path), "--json")
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["family"] == "mamba2" and summary["dtype"] == "bfloat16"
    assert summary["parameters"] == model.num_parameters()
    assert summary["config"]["d_state"] == 11 and summary["config"]["ngroups"] == 2
    assert summary["layer_parameter_shapes"]["A_log"] == [4]
    code, out, err = run_cli(capsys, "info", str(tmp_path))
    assert code == 0 and err == "" and "Parameters per component" in out


@pytest.mark.parametrize("problem", CHECKPOINT_PROBLEMS)
def test_info_broken_checkpoint(problem, capsys, tmp_path, damaged_checkpoint):
    words = damaged_checkpoint(tmp_path, problem)
    assert_one_line_error(*run_cli(capsys, "info", str(tmp_path)), words)


def test_info_unknown_name(capsys):
    assert_one_line_error(*run_cli(capsys, "info", "nonexistent-name"), ["nonexistent-name", "mamba2-2.7b"])


def test_info_bad_dtype(capsys):
    assert_one_line_error(*run_cli(capsys, "info", "mamba-130m", "--dtype", "float8"), ["float8"])


def test_info_hub_id_offline(capsys, monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run_cli(capsys, "info", "perfmamba-tests/no-such-model"),
                          ["perfmamba-tests/no-such-model", "local"])


def _subprocess_cli(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "perfmamba.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_cli_as_a_process(tmp_path, damaged_checkpoint):
    ok = _subprocess_cli("info", "mamba-130m", "--json", cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["config"]["d_model"] == 768
    damaged = tmp_path / "damaged"
    words = damaged_checkpoint(damaged, "truncated")
    bad = _subprocess_cli("info", str(damaged), cwd=str(tmp_path))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "Traceback" not in bad.stderr
    lines = bad.stderr.splitlines()
    assert len(lines) == 1, bad.stderr
    for word in words:
        assert word in lines[0]
