#!/usr/bin/env bash
# One device call: the GPU tests of the kernels, then the kernel and model benchmarks, results under $OUT
# (or ./gpu-out).  Usage: bash benchmarks/gpu_session.sh [PART ...], parts: tests (= tests-scan tests-ssd
# tests-rest), every, kernels, models, state-sizes, prune, sweep (SSD tiles), sweep-tile (Mamba-1 tiles), ncu (default: tests
# kernels models); tests-parallel runs every test in parallel pytest processes instead of the three test
# parts.  Runs from the repository root with PYTHONPATH=. .  Give the commit as PERFMAMBA_GIT_REVISION=<hash>
# (a literal: the tree copied to the device may carry a stale .git).
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
        # every part writes its whole log under $out (a pipe into tail would lose it when a limit kills it).
        # The GPU tests do not fit one 10-minute call (each shape compiles its kernels; on an H200 the
        # two-tile SSD tests, the scan tests and two every-candidate tests took 330 s): run them in parts.
        tests) bash "$0" tests-scan tests-ssd tests-rest ;;
        tests-scan) python3 -m pytest -q -p no:cacheprovider --durations=10 tests/ops/test_triton_kernels.py \
                        -k "GPU and selective_scan" >"$out/tests-scan.log" 2>&1; tail -12 "$out/tests-scan.log" ;;
        tests-ssd) python3 -m pytest -q -p no:cacheprovider --durations=10 tests/ops/test_ssd_two_tiles.py tests/ops/test_ssd_transposed.py \
                       tests/ops/test_triton_kernels.py -k "GPU and ssd" >"$out/tests-ssd.log" 2>&1
                   tail -12 "$out/tests-ssd.log" ;;
        tests-rest) python3 -m pytest -q -p no:cacheprovider --durations=10 tests/ops/test_triton_kernels.py \
                        tests/ops/test_decode_fused.py tests/ops/test_autotune.py tests/models/test_gpu_model.py \
                        -k "GPU and not selective_scan and not ssd and not every" \
                        >"$out/tests-rest.log" 2>&1; tail -12 "$out/tests-rest.log" ;;
        tests-parallel) # every test (the GPU ones included) in $PERFMAMBA_TEST_SHARDS (default 8) pytest processes
                        # at once: the compiles that bound the GPU tests are CPU work, and the machine has 16 cores
                        shards=${PERFMAMBA_TEST_SHARDS:-8}
                        mkdir -p "$out/tests-parallel"
                        python3 -m pytest --collect-only -q -p no:cacheprovider tests 2>/dev/null | grep '::' \
                            >"$out/tests-parallel/ids.txt"
                        echo "$(wc -l <"$out/tests-parallel/ids.txt") tests in $shards shards"
                        for s in $(seq 0 $((shards - 1))); do
                            awk -v s="$s" -v n="$shards" 'NR % n == s' "$out/tests-parallel/ids.txt" \
                                >"$out/tests-parallel/shard$s.txt"
                            (mapfile -t ids <"$out/tests-parallel/shard$s.txt"  # ids may hold spaces
                             python3 -m pytest -q -p no:cacheprovider --durations=5 "${ids[@]}" \
                                 >"$out/tests-parallel/shard$s.log" 2>&1) &
                        done
                        wait
                        for s in $(seq 0 $((shards - 1))); do
                            echo "shard $s: $(grep -E '(passed|failed|error)' "$out/tests-parallel/shard$s.log" | tail -1)"
                        done
                        grep -hE '^(FAILED|ERROR)' "$out"/tests-parallel/shard*.log
                        # a call brings back only a few files: the shards' logs in one archive
                        tar czf "$out/tests-parallel.tgz" -C "$out" tests-parallel && rm -rf "$out/tests-parallel" ;;
        every) python3 -m pytest -q -p no:cacheprovider tests/ops/test_triton_kernels.py -k every_scan_candidate \
                   >"$out/every.log" 2>&1; tail -5 "$out/every.log" ;;
        sweep) python3 benchmarks/bench_kernels.py --sweep ssd --no-main >"$out/sweep.txt" 2>&1
               tail -20 "$out/sweep.txt" ;;
        sweep-tile) python3 benchmarks/bench_kernels.py --sweep tile --no-main >"$out/sweep-tile.txt" 2>&1
                    grep best "$out/sweep-tile.txt" ;;
        prune) # both demo models, every score, ratios 0..0.75, accuracy + speed + serving memory; the logs go
               # into the one archive too (a call brings back at most 8 files)
               for m in demo-mamba1 demo-mamba2; do
                   mkdir -p "$out/pruning"
                   PERFMAMBA_AUTOTUNE=0 timeout 220 python3 -m perfmamba.cli prune-sweep "$m" --out "$out/pruning/$m" >"$out/pruning/prune-$m.log" 2>&1
                   tail -4 "$out/pruning/prune-$m.log"
               done
               tar czf "$out/pruning.tgz" -C "$out" pruning && rm -rf "$out/pruning" ;;
        ncu) # Nsight Compute (hardware counters: Firecracker machines) on the scan and SSD at their tuned tiles;
             # leaves the clocks alone (METHOD.md); text pages only, the binary reports are large
             mkdir -p "$out/ncu"
             for job in "scan 16 64,4,16,1,3" "scan 16 64,2,8,1,3" "ssd 128 32,64,4,2" "ssd 32 32,64,4,4"; do
                 name=$(echo "$job" | tr ' ,' '-_')
                 timeout 150 ncu --clock-control none --set full -k regex:_fused_kernel\|_selective_scan_kernel \
                     --launch-skip 2 --launch-count 1 -f -o "$out/ncu/$name" python3 benchmarks/ncu_kernels.py $job \
                     >"$out/ncu/$name.log" 2>&1
                 ncu --import "$out/ncu/$name.ncu-rep" --page details >"$out/ncu/$name-details.txt" 2>&1
                 rm -f "$out/ncu/$name.ncu-rep"
             done ;;
        kernels) python3 benchmarks/bench_kernels.py --out-dir "$out" >"$out/kernels.log" 2>&1
                 tail -40 "$out/kernels.log" ;;
        models) python3 benchmarks/bench_models.py --out "$out" >"$out/models.log" 2>&1
                tail -25 "$out/models.log" ;;
        state-sizes) python3 benchmarks/bench_state_sizes.py --out-dir "$out" >"$out/state-sizes.log" 2>&1
                     tail -30 "$out/state-sizes.log" ;;
        *) echo "unknown part $part"; exit 2 ;;
    esac
    echo "== $part took $(( $(date +%s) - start )) s"
done
