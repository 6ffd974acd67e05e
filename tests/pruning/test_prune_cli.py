"""``perfmamba prune`` and ``perfmamba prune-sweep`` end to end on a tiny saved model (CPU, seconds), and
bad options answered with one line and exit status 2."""

import csv
import json
import os

import pytest
import torch

import perfmamba
from perfmamba.cli import main

from prune_helpers import make_model, token_ids

TEXT = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}  # line {i}" for i in range(600))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-cli")
    text = root / "text.txt"
    text.write_text(TEXT)
    models = {}
    for name in ("m1", "m2-g2"):
        models[name] = str(root / name)
        make_model(name).save_pretrained(models[name])
    return root, str(text), models


def _common(text):
    return ["--calib", text, "--calib-seqs", "2", "--calib-len", "64", "--context", "64", "--device", "cpu"]


@pytest.mark.parametrize("name", ["m1", "m2-g2"])
def test_prune_writes_a_smaller_checkpoint_a_compat_copy_and_reports(setup, name, capsys):
    root, text, models = setup
    out = root / f"out-{name}"
    rc = main(["prune", models[name], "--method", "delta", "--ratio", "0.5", "--bridge", "refit",
               "--eval-bytes", "600", "--out", str(out)] + _common(text))
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    for f in ("config.json", "model.safetensors", "bridge.json", "prune_report.json", "prune_report.md",
              "compat/config.json", "compat/model.safetensors", "compat/bridge.json"):
        assert (out / f).exists(), f
    original = perfmamba.load_model(models[name], device="cpu")
    pruned = perfmamba.load_model(str(out), device="cpu")
    compat = perfmamba.load_model(str(out / "compat"), device="cpu")
    assert pruned.config.d_state == original.config.d_state // 2
    assert compat.config == original.config
    ids = token_ids(1, 25)
    with torch.no_grad():
        assert torch.allclose(compat(ids), pruned(ids), rtol=1e-5, atol=1e-5)
    report = json.loads((out / "prune_report.json").read_text())
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["after"]["state_cache_bytes_per_sequence"] < report["before"]["state_cache_bytes_per_sequence"]
    assert report["before"]["bits_per_byte"] > 0 and report["after"]["bits_per_byte"] > 0
    assert report["refit"]["calibration_relative_error_after"] is not None
    assert "bits per byte" in (out / "prune_report.md").read_text()


def test_prune_sweep_writes_json_csv_markdown_and_plots(setup):
    root, text, models = setup
    out = root / "sweep"
    rc = main(["prune-sweep", models["m2-g2"], "--methods", "delta,random,magnitude,taylor,balanced",
               "--ratios", "0,0.5", "--max-bytes", "500", "--lengths", "32", "--decode-batches", "1",
               "--repeats", "1", "--out", str(out)] + _common(text))
    assert rc == 0
    for f in ("sweep.json", "sweep.csv", "sweep.md", "bpb_vs_ratio.png", "prefill.png", "decode.png", "pareto.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "sweep.json").read_text())
    assert len(res["accuracy"]) == 10 and len(res["speed"]) == 2
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 10
    for row in rows:  # plain numbers a program can read back
        float(row["bits_per_byte"]), float(row["prefill_tokens_per_s_L32"]), int(row["state_cache_bytes_B1"])
    zero = [r for r in rows if float(r["ratio"]) == 0]
    assert all(float(r["bpb_change_pct"]) == 0 for r in zero)
    half = [r for r in rows if float(r["ratio"]) == 0.5]
    assert all(int(r["state_cache_bytes_B1"]) < int(zero[0]["state_cache_bytes_B1"]) for r in half)
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    # delta against each other score at ratio 0.5, window by window on the same text
    comps = res["comparisons"]
    assert [(c["method"], c["against"], c["ratio"]) for c in comps] == [
        ("delta", m, 0.5) for m in ("random", "magnitude", "taylor", "balanced")]
    by = {(r["method"], r["ratio"]): r for r in res["accuracy"]}
    for c in comps:
        assert c["low_pct"] <= c["diff_pct"] <= c["high_pct"]
        points = by[("delta", 0.5)]["bpb_change_pct"] - by[(c["against"], 0.5)]["bpb_change_pct"]
        assert c["diff_pct"] == pytest.approx(points, abs=1e-6)
        assert 0 <= c["removed_shared"] <= 1
    assert "window by window" in (out / "sweep.md").read_text() and "removed in common" in (out / "sweep.md").read_text()


@pytest.mark.parametrize("ratio, slow", [(0.125, True), (0.25, False)])
def test_prune_notes_mamba2_sizes_the_kernels_run_slowly(setup, ratio, slow, capsys):
    # m2-g2 has 32 states: 0.125 keeps 28 (not a multiple of 8: the SSD's slow case), 0.25 keeps 24
    root, text, models = setup
    rc = main(["prune", models["m2-g2"], "--method", "random", "--ratio", str(ratio), "--eval-bytes", "0",
               "--out", str(root / f"slow-{ratio}")] + _common(text))
    assert rc == 0
    err = capsys.readouterr().err
    assert ("note: kept d_state 28 is not a multiple of 8" in err) == slow, err
    assert ("--multiple 8" in err) == slow


def test_prune_sweep_notes_slow_sizes_before_calibrating(setup, capsys):
    root, text, models = setup
    rc = main(["prune-sweep", models["m2-g2"], "--methods", "random", "--ratios", "0,0.125", "--no-speed",
               "--max-bytes", "500", "--out", str(root / "sweep-slow")] + _common(text))
    assert rc == 0
    err = capsys.readouterr().err
    assert "note: kept d_state 28 is not a multiple of 8" in err, err


@pytest.mark.parametrize("argv, words", [
    (["prune", "M", "--ratio", "1.5"], "ratio"),
    (["prune", "M", "--method", "bogus"], "bogus"),
    (["prune", "M", "--bridge", "bogus"], "bridge"),
    (["prune", "M", "--budget", "bogus"], "budget"),
    (["prune", "M", "--multiple", "0"], "multiple"),
    (["prune", "M", "--ratio", "abc"], "ratio"),
    (["prune-sweep", "M", "--ratios", "0,x"], "ratios"),
    (["prune-sweep", "M", "--methods", "delta,nope"], "nope"),
    (["prune-sweep", "M", "--bridge", "compat"], "bridge"),
    (["prune-sweep", "M", "--lengths", "0"], "lengths"),
    (["prune", "/no/such/model"], "/no/such/model"),
])
def test_bad_options_are_one_line_and_exit_2(setup, argv, words, capsys):
    root, text, models = setup
    argv = [models["m1"] if a == "M" else a for a in argv] + ["--out", str(root / "never")]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
