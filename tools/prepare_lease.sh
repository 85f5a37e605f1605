#!/usr/bin/env bash
# Stages, on this machine, what the calls of a GPU lease carry (docs/benchmarks.md, "A 15-minute lease"), so
# that the lease's minutes go to measuring: NVIDIA DALI in five parts (.dali0 ... .dali4, through
# ../shared/device/dali-chunks.sh), Liger Kernel's wheel for the baseline of tools/bench_kernels.py (.whl),
# and CIFAR-10 (.data/cifar10.tar.gz). The three folders are git-ignored. Costs no device time (about 1-2 minutes).
#
#   bash tools/prepare_lease.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$(cd .. && pwd)/shared
[ -d "$shared/device" ] || { echo "prepare_lease: $shared/device not found (the project's shared folder)"; exit 2; }
bash "$shared/device/dali-chunks.sh" >/dev/null
rm -rf .whl && python3 -m pip download -q --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5 2>&1 | grep -v "is ignored" || true
mkdir -p .data && cp "$shared/data/cifar10.tar.gz" .data/
for part in .dali0 .dali1 .dali2 .dali3 .dali4; do [ -n "$(ls -A "$part" 2>/dev/null)" ] || { echo "prepare_lease: $part is empty"; exit 1; }; done
ls .whl/liger_kernel-*.whl >/dev/null
du -sh .dali? .whl .data/cifar10.tar.gz
commit=$(cd tools && python3 -c "import reproduce; print(reproduce.source_commit())")
echo "ready: make the calls of docs/benchmarks.md, 'A 15-minute lease' (carry .data/cifar10.tar.gz, not .data:"
echo "reproduce.py unpacks datasets there); the reproduce stage's records name"
echo "their commit with PYSOFTLABEL_COMMIT=$commit (the lease's copy has no .git)"
