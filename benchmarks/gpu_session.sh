#!/usr/bin/env bash
# One device call: the GPU tests of the kernels, then the kernel and model benchmarks, results under $OUT
# (or ./gpu-out).  Usage: bash benchmarks/gpu_session.sh [tests|kernels|models|sweep|profile ...]
# (default: tests kernels models).  Runs from the repository root with PYTHONPATH=. .
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
parts=${*:-tests kernels models}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"
for part in $parts; do
    start=$(date +%s)
    case $part in
        # every part writes its whole log under $out (a pipe into tail would lose it when a limit kills it)
        tests) python3 -m pytest -q -x -p no:cacheprovider --durations=15 tests/ops/test_ssd_two_tiles.py \
                   tests/ops/test_triton_kernels.py -k "GPU and not every_scan_candidate" >"$out/tests.log" 2>&1
               tail -25 "$out/tests.log" ;;
        every) python3 -m pytest -q -x -p no:cacheprovider tests/ops/test_triton_kernels.py -k every_scan_candidate \
                   >"$out/every.log" 2>&1; tail -5 "$out/every.log" ;;
        models-tests) python3 -m pytest -q -x -p no:cacheprovider tests/models/test_gpu_model.py >"$out/mtests.log" 2>&1
                      tail -8 "$out/mtests.log" ;;
        sweep) python3 benchmarks/bench_kernels.py --sweep ssd --no-main >"$out/sweep.txt" 2>&1
               tail -20 "$out/sweep.txt" ;;
        prune) # both demo models, every score, ratios 0..0.75, accuracy + speed + serving memory
               for m in demo-mamba1 demo-mamba2; do
                   PERFMAMBA_AUTOTUNE=0 timeout 220 python3 -m perfmamba.cli prune-sweep "$m" --out "$out/pruning/$m" >"$out/prune-$m.log" 2>&1
                   tail -4 "$out/prune-$m.log"
               done
               tar czf "$out/pruning.tgz" -C "$out" pruning && rm -rf "$out/pruning" ;;
        kernels) python3 benchmarks/bench_kernels.py --out-dir "$out" >"$out/kernels.log" 2>&1
                 tail -40 "$out/kernels.log" ;;
        models) python3 benchmarks/bench_models.py --out "$out" >"$out/models.log" 2>&1
                tail -25 "$out/models.log" ;;
        *) echo "unknown part $part"; exit 2 ;;
    esac
    echo "== $part took $(( $(date +%s) - start )) s"
done
