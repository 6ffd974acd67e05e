"""Profiling of Mamba-1 / Mamba-2 blocks and models, per component (what `perfmamba profile` runs).

components.py  canonical component names          analytic.py  FLOPs and bytes per component
stages.py      the model cut into timeable stages  timers.py    CUDA-event / perf_counter timing
hardware.py    measured machine ceilings (cached)  roofline.py  intensity, roofline, bound, slopes
launch.py      kernels and host vs GPU time         sweep.py     the grid -> typed records (records.py)
compare.py     per-component ratios of two runs    cli_commands.py  `perfmamba profile` / `compare`
"""
