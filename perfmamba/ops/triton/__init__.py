"""Triton kernels behind ``perfmamba.ops`` (backend="triton").

Each launcher takes the same arguments as its plain-torch reference twin (``perfmamba.ops.scan_ref``,
``perfmamba.ops.conv_ref``) and returns the same results; importing this package needs triton.
Every launcher also accepts ``out=`` for the main output (tests pre-fill it with NaN to prove every
element is written).
"""

from perfmamba.ops.triton.conv1d import causal_conv1d_triton, causal_conv1d_update_triton
from perfmamba.ops.triton.gemv import linear_triton
from perfmamba.ops.triton.mamba1_step import mamba1_mixer_step_triton
from perfmamba.ops.triton.rms_norm import add_rms_norm_triton, rms_norm_triton
from perfmamba.ops.triton.selective_scan import selective_scan_triton
from perfmamba.ops.triton.ssd import ssd_triton
from perfmamba.ops.triton.state_update import selective_state_update_triton

__all__ = ["selective_scan_triton", "ssd_triton", "causal_conv1d_triton", "causal_conv1d_update_triton",
           "selective_state_update_triton", "rms_norm_triton", "add_rms_norm_triton", "mamba1_mixer_step_triton",
           "linear_triton"]
