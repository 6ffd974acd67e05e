"""`perfmamba profile` / `perfmamba compare` end to end, and their one-line errors."""

import csv
import json
import os

import pytest

from perfmamba.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_and_compare_end_to_end(tiny_dirs, tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    code, out, err = _run(capsys, "profile", tiny_dirs["tiny-m1"], tiny_dirs["tiny-m2"], "--out", out_dir,
                          "-L", "16,32", "--repeats", "2", "--warmup", "1", "--threads", "1", "--trace")
    assert code == 0, err
    assert "ssm" in out and "tiny-m1" in out and "tiny-m2" in out  # the summary table
    assert "(components.csv, configs.csv, report.md, results.json and 4 plots)" in out  # what it wrote
    for name in ("results.json", "components.csv", "configs.csv", "report.md", "roofline.png"):
        assert os.path.exists(os.path.join(out_dir, name))
    traces = os.listdir(os.path.join(out_dir, "traces"))
    assert len(traces) == 2 * 2 * 2
    with open(os.path.join(out_dir, "traces", sorted(traces)[0])) as f:
        assert "traceEvents" in json.load(f)
    code, out, err = _run(capsys, "compare", out_dir, out_dir, "--csv", str(tmp_path / "ratios.csv"))
    assert code == 0, err
    assert "geometric mean" in out and "1.000" in out
    with open(tmp_path / "ratios.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["time_ratio"]) == 1.0 and float(r["bytes_ratio"]) == 1.0 for r in rows)


@pytest.mark.parametrize("argv,needle", [
    (["profile", "--seqlens", "0"], "sequence lengths"),
    (["profile", "--seqlens", "abc"], "sequence lengths"),
    (["profile", "--batch", "-3"], "batch"),
    (["profile", "--mode", "sideways"], "mode"),
    (["profile", "--scope", "layer"], "scope"),
    (["profile", "--dtype", "fp8"], "dtype"),
    (["profile", "--backend", "cuda"], "backend"),
    (["profile", "--device", "tpu"], "device"),
    (["profile", "--repeats", "0"], "repeats"),
    (["profile", "--layer", "99", "mamba-130m"], "layer"),
    (["profile", "no-such-model"], "demo-mamba1"),  # the error lists what a MODEL can be
    (["profile", "--layer", "8", "demo-mamba1"], "0..7"),  # a demo model's layers are checked too
    (["profile", "--bogus-flag"], "unrecognized"),
    (["compare", "/nonexistent/a", "/nonexistent/b"], "results.json"),
    (["compare", "only-one"], "RUN_B"),
])
def test_bad_options_are_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv + (["--out", str(tmp_path / "o")] if argv[0] == "profile" else [])))
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0] and lines[0].startswith("perfmamba")
    assert not os.path.exists(tmp_path / "o" / "results.json")


def test_a_demo_model_is_profiled_like_a_preset(tmp_path, capsys):
    # the shipped demo models are MODEL names for every command (as for prune, eval and info)
    out_dir = str(tmp_path / "run")
    code, out, err = _run(capsys, "profile", "demo-mamba2", "--out", out_dir, "--lengths", "16", "--mode", "prefill",
                          "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-plots")
    assert code == 0, err
    with open(os.path.join(out_dir, "results.json")) as f:
        run = json.load(f)
    assert [m["name"] for m in run["models"]] == ["demo-mamba2"]
    assert run["models"][0]["config"]["d_model"] == 256
    assert {c["seqlen"] for c in run["configs"]} == {16}  # --lengths: the same option as --seqlens / -L
    assert "and results.json)" in out  # --no-plots: the files it wrote, no plots


def test_ctrl_c_writes_what_was_finished_and_exits_130(tiny_dirs, tmp_path, capsys, monkeypatch):
    from perfmamba.profiling import sweep

    real, calls = sweep._measure, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "_measure", interrupted_at_the_second)
    out_dir = tmp_path / "run"
    code, out, err = _run(capsys, "profile", tiny_dirs["tiny-m1"], "--out", str(out_dir), "-L", "16", "32",
                          "--repeats", "2", "--threads", "1", "--no-plots")
    assert code == 130 and "interrupted" in err
    with open(out_dir / "results.json") as f:
        data = json.load(f)
    assert data["interrupted"] is True and len(data["configs"]) == 1
    assert (out_dir / "report.md").exists() and (out_dir / "components.csv").exists()
