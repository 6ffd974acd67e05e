"""The tile autotuner's timer measures device time, not the host's launch time (GPU only)."""

import time

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class TestAutotuneTimerOnGPU:
    def test_host_bound_calls_read_as_their_device_time(self):
        from perfmamba.ops.triton.selective_scan import _median_ms
        x = torch.zeros(1, device="cuda")

        def slow_host_tiny_kernel():
            time.sleep(0.002)  # 2 ms of host work per call; the kernel itself takes microseconds
            x.add_(1.0)

        assert _median_ms(slow_host_tiny_kernel) < 0.5  # events around plain calls read about 2 ms

    def test_device_bound_calls_keep_their_time(self):
        from perfmamba.ops.triton.selective_scan import _median_ms
        ms = _median_ms(lambda: torch.cuda._sleep(2_000_000))  # about 1 ms of GPU time at 2 GHz
        assert 0.3 < ms < 5.0
