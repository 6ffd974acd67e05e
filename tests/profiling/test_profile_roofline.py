import math

import pytest

from perfmamba.profiling import roofline
from perfmamba.profiling.timers import TimingStats, quantile, time_call


def test_intensity_and_attainable():
    assert roofline.intensity(100.0, 50.0) == 2.0
    assert math.isnan(roofline.intensity(1.0, 0.0))
    assert roofline.attainable_flops(1.0, peak_flops=100.0, peak_bw=10.0) == 10.0
    assert roofline.attainable_flops(1e3, peak_flops=100.0, peak_bw=10.0) == 100.0
    assert roofline.ridge_point(100.0, 10.0) == 10.0


ROOF = roofline.Roof(matmul_flops_per_s=1e12, vector_flops_per_s=1e11, bytes_per_s=1e11, launch_s=5e-6)


def test_floors_split_matmul_and_vector_work():
    f = roofline.floors(flops=2e9, matmul_flops=1e9, nbytes=1e8, roof=ROOF, launches=4)
    assert f["compute"] == pytest.approx(1e9 / 1e12 + 1e9 / 1e11)
    assert f["memory"] == pytest.approx(1e-3) and f["launch"] == pytest.approx(2e-5)


def test_classify_bound():
    # tensor-core work with little traffic: compute
    assert roofline.classify_bound(1e10, 1e10, 1e6, ROOF, launches=1, seconds=2e-2) == "compute"
    # the same FLOPs as elementwise work are 10x slower: still compute; with much traffic: memory
    assert roofline.classify_bound(1e9, 0, 1e6, ROOF, seconds=2e-2) == "compute"
    assert roofline.classify_bound(1e6, 1e6, 1e8, ROOF, launches=1, seconds=2e-3) == "memory"
    # a tiny kernel whose launches take most of its time: launch
    assert roofline.classify_bound(1e6, 1e6, 1e6, ROOF, launches=3, seconds=2e-5) == "launch"
    # launches not counted (CPU): never launch
    assert roofline.classify_bound(1e6, 1e6, 1e6, roofline.Roof(1e12, 1e11, 1e11), launches=3, seconds=2e-5) == \
        "memory"
    # with the GPU's busy time: idle GPU -> launch; GPU busier than the launches take -> roofline bound
    assert roofline.classify_bound(1e6, 0, 2e6, ROOF, launches=1, seconds=1e-4, gpu_busy_s=1e-5) == "launch"
    assert roofline.classify_bound(1e6, 0, 2e8, ROOF, launches=2, seconds=2.5e-3, gpu_busy_s=2.3e-3) == "memory"
    assert roofline.classify_bound(1e6, 0, 2e6, ROOF, launches=4, seconds=2.5e-5, gpu_busy_s=1.5e-5) == "launch"
    # a slow kernel is not launch-bound just because its work is small
    assert roofline.classify_bound(1e6, 0, 2e6, ROOF, launches=3, seconds=1e-3) == "memory"
    assert roofline.classify_bound(0, 0, 0, ROOF) == ""


def test_roofline_fraction():
    # 1e8 bytes at 1e11 B/s: 1 ms floor; measured 2 ms -> 50% of the roof
    assert roofline.roofline_fraction(1e6, 0, 1e8, 2e-3, ROOF) == pytest.approx(0.5)
    assert math.isnan(roofline.roofline_fraction(1e6, 0, 1e8, math.nan, ROOF))


@pytest.mark.parametrize("power", [0.0, 1.0, 2.0])
def test_loglog_slope_recovers_a_power_law(power):
    xs = [64, 256, 1024, 4096]
    assert roofline.loglog_slope(xs, [3.0 * x ** power for x in xs]) == pytest.approx(power)


def test_loglog_slope_ignores_missing_points():
    assert math.isnan(roofline.loglog_slope([64], [1.0]))
    assert roofline.loglog_slope([64, 128, 256], [1.0, math.nan, 4.0]) == pytest.approx(1.0)


def test_quantiles_and_stats():
    assert quantile([3, 1, 2], 0.5) == 2
    assert quantile([0, 10], 0.1) == pytest.approx(1.0)
    s = TimingStats.from_samples([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median_s, s.min_s, s.max_s, s.repeats) == (3.0, 1.0, 5.0, 5)
    assert (s + s).median_s == 6.0


def test_time_call_times_and_keeps_the_output():
    calls = []

    def fn():
        calls.append(1)
        return len(calls)

    stats, out = time_call(fn, "cpu", warmup=2, repeats=4, min_sample_s=1e-4, keep_output=True)
    assert stats.repeats == 4 and stats.median_s > 0 and stats.inner >= 1
    assert out == len(calls) and len(calls) >= 2 + 4
