"""Environment facts written beside every result."""

from perfmamba.report.environment import device_tag


def test_device_tag_names_the_gpu_model():
    # benchmark files are named after the GPU: kernels-h100.json, models-h200.md, ...
    assert device_tag("NVIDIA H100 80GB HBM3") == "h100"
    assert device_tag("NVIDIA H200") == "h200"
    assert device_tag("NVIDIA A100-SXM4-40GB") == "a100"
    assert device_tag("Tesla T4") == "teslat4"  # unknown models: lower-case letters and digits
    assert device_tag("???") == "gpu"
