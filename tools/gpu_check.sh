#!/usr/bin/env bash
# Everything GPU-side in one call: build the extension in place, run the tests (stage "test": all of them;
# "test-cuda": the CUDA ones, what a short lease needs since CI runs the rest), benchmark the kernels,
# profile the row kernel where it is furthest from its targets (Nsight Compute: which limit each launch hits),
# run the CUDA tests again under compute-sanitizer memcheck (and the loss's under racecheck and synccheck: stage
# "sanitize-sync"), run the CUDA tests of the data layer (stage "test-dali") and benchmark the data loader (stage
# "loader"), measure end-to-end training speed against the model-only step (stage "e2e": ResNet-50 on
# ImageNet-sized JPEGs written there; stage "e2e-cifar": CIFAR-10 ResNet-18), and print a one-screen summary.
# The long stages have time limits, so that a call ends inside the device tool's 10 minutes; docs/benchmarks.md
# ("A 15-minute lease") orders the calls of a lease.
#
# The device tool's machine lacks NVIDIA DALI and the datasets: tools/prepare_lease.sh packs them here into
# parts (.lease0, .lease1, ...) that the calls carry one each, and stage "receive", in every call, keeps that
# call's part and, once all are in, unpacks DALI into /tmp/site and the dataset into /tmp.
#
# Stage "reproduce" (not a default) trains the table of tools/reproduce.py's preset $PRESET (default cifar10-gpu,
# which needs .data/cifar10.tar.gz carried; imagenette-gpu needs the parts of `prepare_lease.sh imagenette`
# received) for the seeds in $SEEDS (default 0), and stops it cleanly after $REPRODUCE_SECONDS (default 480: one
# cifar10-gpu seed took 546 s on an H100). Its runs stay in runs/ while the machine is warm, so the same command
# again resumes. The finished runs' records come back in $OUT as records-$PRESET.tar.gz: unpacked into docs/runs/
# here and committed, they travel with the checkout and are not trained again.
# Logs and the benchmark table go to $OUT (the device tool's output folder) or ./gpu-results.
#
#   bash tools/gpu_check.sh                 # the default stages (loader, e2e only where DALI imports)
#   bash tools/gpu_check.sh build bench     # some of them
#   bash tools/gpu_check.sh build reproduce # the CIFAR-10 GPU table (carry .data/cifar10.tar.gz)
#
# Python packages missing on the machine (Liger Kernel for the baseline) can be carried as wheels in
# .whl/ (see docs/benchmarks.md); they are installed into /tmp/site first, beside DALI.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # the in-place build, for tools/*.py; carried packages
if $PY -c "import nvidia.dali" 2>/dev/null; then DEFAULT_STAGES="build test bench profile loader e2e e2e-cifar sanitize sanitize-sync"; else DEFAULT_STAGES="build test bench profile sanitize sanitize-sync"; fi
STAGES=${*:-$DEFAULT_STAGES}
KNOWN="receive build test test-cuda test-dali bench profile loader e2e e2e-cifar reproduce sanitize sanitize-sync"
for stage in $STAGES; do  # before any stage runs: a misspelt last stage would otherwise show minutes later
  [[ " $KNOWN " == *" $stage "* ]] || { echo "gpu_check: unknown stage '$stage' (the stages: $KNOWN)"; exit 2; }
done
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
declare -A STATUS

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi

run_stage() {  # name, log file, command...
  local name=$1 log=$2; shift 2
  local start=$SECONDS
  echo "=== $name: $*" | tee "$OUT/$log"
  "$@" 2>&1 | tee -a "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  STATUS[$name]="rc=$rc, $((SECONDS - start)) s"
  echo "=== $name: ${STATUS[$name]}" | tee -a "$OUT/$log"
}

cifar10() {  # CIFAR-10 in /tmp/cifar10 when the call carried .data/cifar10.tar.gz
  [ -d /tmp/cifar10 ] || { [ -f .data/cifar10.tar.gz ] && tar -xzf .data/cifar10.tar.gz -C /tmp; }
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  2>&1 | tee "$OUT/env.txt"

for stage in $STAGES; do
  case $stage in
    build) run_stage build build.log $PY setup.py build_ext --inplace
           # Every later stage needs the extension: on a lease, minutes spent on them would be lost.
           [ "${STATUS[build]%%,*}" = "rc=0" ] || { echo "=== build failed: the remaining stages are not run"; break; } ;;
    test) run_stage test test.log $PY -m pytest -q -p no:cacheprovider tests ;;
    test-cuda) run_stage test-cuda test_cuda.log $PY -m pytest -q -p no:cacheprovider -m cuda -rs tests ;;
    # The CUDA tests that need DALI (test-cuda skips them before "receive"), not the kernels' again.
    test-dali) run_stage test-dali test_dali.log $PY -m pytest -q -p no:cacheprovider -m cuda -rs \
                 tests/test_imagenet_loader.py tests/test_train_cli.py ;;
    receive) run_stage receive receive.log $PY tools/lease_bundle.py receive ;;
    bench) run_stage bench bench.log $PY tools/bench_kernels.py --device cuda --out "$OUT/bench_kernels.json" ;;
    profile) run_stage profile profile.log timeout 150 ncu --profile-from-start off --nvtx --kernel-name regex:row_kernel \
               --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
               --section WarpStateStats --section ComputeWorkloadAnalysis --section InstructionStats \
               $PY tools/profile_kernels.py ;;
    loader) run_stage loader loader.log timeout 240 $PY tools/bench_loader.py --device cuda --out "$OUT/bench_loader.json" \
              $(cifar10 && echo --small /tmp/cifar10) ;;
    e2e) run_stage e2e e2e.log timeout 420 $PY tools/bench_e2e.py --device cuda --arch resnet50 --image-size 224 \
           --batch-size 256 --threads 12 --out "$OUT/bench_e2e_resnet50.json" ;;
    e2e-cifar) cifar10 && run_stage e2e-cifar e2e_cifar.log timeout 300 $PY tools/bench_e2e.py --device cuda \
           --data /tmp/cifar10 --resident --val-split test --arch cifar_resnet18 --batch-size 512 --image-size 32 \
           --epochs 5 --repeats 2 --out "$OUT/bench_e2e_cifar.json" ;;
    # Stopped (Ctrl-C's signal: the run checkpoints) after $REPRODUCE_SECONDS, inside the device tool's 10 minutes a
    # call, so that the records of the runs finished so far still come back; the same stage again resumes.
    reproduce) preset=${PRESET:-cifar10-gpu}
               [ "$preset" != cifar10-gpu ] || cifar10
               run_stage reproduce reproduce.log timeout -s INT -k 30 "${REPRODUCE_SECONDS:-480}" \
                 $PY tools/reproduce.py --preset "$preset" --data-dir /tmp --seeds "${SEEDS:-0}" \
                 --out "runs/reproduce/$preset"
               [ ! -d "docs/runs/$preset" ] || tar -czf "$OUT/records-$preset.tar.gz" -C docs/runs "$preset" ;;
    # Not under memcheck: the compile tests (Triton's kernels and compile time, not ours) and the test whose
    # kernel fails an assert on purpose.
    sanitize) run_stage sanitize sanitize.log timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 \
                $PY -m pytest -q -p no:cacheprovider -m cuda -k "not compile and not device_side_assert" tests ;;
    # The row kernel's shared memory and barriers (the block reduction, and the flag and second reduction of
    # a row with masked classes) under racecheck and synccheck, on the loss's parity tests.
    sanitize-sync) for tool in racecheck synccheck; do
                     run_stage "sanitize-$tool" "sanitize_$tool.log" timeout 100 compute-sanitizer --tool $tool \
                       --error-exitcode 99 $PY -m pytest -q -p no:cacheprovider -m cuda \
                       -k "masked or fused_statistics" tests/test_soft_cross_entropy.py
                   done ;;
  esac
done

echo
echo "================ summary ================"
cat "$OUT/env.txt"
for stage in $STAGES; do
  [ "$stage" = sanitize-sync ] && names="sanitize-racecheck sanitize-synccheck" || names=$stage
  for name in $names; do echo "$name: ${STATUS[$name]:-not run}"; done
done
for log in test.log test_cuda.log test_dali.log; do [ -f "$OUT/$log" ] && grep -E "passed|failed|skipped" "$OUT/$log" | tail -1; done
for log in sanitize.log sanitize_racecheck.log sanitize_synccheck.log; do
  [ -f "$OUT/$log" ] && echo "$log: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/$log" | tail -2 | tr '\n' ' ')"
done
[ -f "$OUT/bench_kernels.md" ] && cat "$OUT/bench_kernels.md"
[ -f "$OUT/profile.log" ] && grep -E "profiled|row_kernel|Duration|DRAM Throughput|L2 Hit Rate|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Executed Ipc Active|Issue Slots Busy|Executed Instructions  " "$OUT/profile.log"
[ -f "$OUT/bench_loader.json" ] && cat "$OUT/bench_loader.json"
for f in "$OUT"/bench_e2e_*.json; do [ -f "$f" ] && cat "$f"; done
# The exit status says whether every stage that ran passed (the summary's last lines would otherwise set it).
failed=$(for name in "${!STATUS[@]}"; do [ "${STATUS[$name]%%,*}" = "rc=0" ] || echo "$name"; done)
[ -z "$failed" ] && echo "all stages passed" || echo "failed: $(echo $failed)"
[ -z "$failed" ]
