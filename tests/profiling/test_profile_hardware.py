"""Machine ceilings: measured once, cached per machine and dtype."""

import json
import os

import torch

from perfmamba.profiling import hardware


def test_ceilings_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFMAMBA_CACHE_DIR", str(tmp_path))
    calls = []
    real = hardware.measure_ceilings

    def counting(device, dtype):
        calls.append(dtype)
        return real(device, dtype)

    monkeypatch.setattr(hardware, "measure_ceilings", counting)
    first = hardware.get_ceilings("cpu", torch.float32)
    again = hardware.get_ceilings("cpu", torch.float32)
    assert len(calls) == 1 and again == first
    assert first.copy_bytes_per_s > 0 and first.matmul_flops_per_s > 0 and first.vector_flops_per_s > 0
    assert 0 < first.launch_overhead_s < 1e-2
    path = hardware.cache_path(torch.device("cpu"))
    assert os.path.dirname(path) == str(tmp_path) and os.path.basename(path).startswith("ceilings-")
    with open(path) as f:
        assert "float32" in json.load(f)["by_dtype"]
    hardware.get_ceilings("cpu", torch.bfloat16)  # another dtype: measured and added beside the first
    hardware.get_ceilings("cpu", torch.float32, remeasure=True)
    assert len(calls) == 3
    with open(path) as f:
        assert set(json.load(f)["by_dtype"]) == {"float32", "bfloat16"}


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFMAMBA_CACHE_DIR", str(tmp_path))
    path = hardware.cache_path(torch.device("cpu"))
    with open(path, "w") as f:
        f.write("{not json")
    assert hardware.get_ceilings("cpu", torch.float32).copy_bytes_per_s > 0


def test_datasheets_are_only_for_known_gpus():
    assert hardware.datasheet(torch.device("cpu"), torch.bfloat16) == (None, None, None)
    for name, flops, bw, source in hardware.DATASHEETS:
        assert flops["bfloat16"] > flops["float32"] > 0 and bw > 0 and source
