"""Launches one benchmark-shape kernel three times, for Nsight Compute (``gpu_session.sh ncu`` profiles the
third launch): ``scan N BLOCK_L,BLOCK_D,N_IN,WARPS,STAGES`` or ``ssd N BLOCK_T,BLOCK_P,WARPS,STAGES``."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import scan_inputs, ssd_inputs  # noqa: E402

from perfmamba.ops.triton.selective_scan import selective_scan_triton  # noqa: E402
from perfmamba.ops.triton.ssd import ssd_triton  # noqa: E402

kind, n_state, cfg = sys.argv[1], int(sys.argv[2]), tuple(int(v) for v in sys.argv[3].split(","))
if kind == "scan":
    args, kw = scan_inputs(n_state)
    run = lambda: selective_scan_triton(*args, **kw, config=cfg)  # noqa: E731
else:
    args, kw = ssd_inputs(n_state)
    run = lambda: ssd_triton(*args, **kw, config=cfg)  # noqa: E731
for _ in range(3):
    run()
torch.cuda.synchronize()
