#!/usr/bin/env bash
# Stages, on this machine, what the calls of a GPU lease carry (docs/benchmarks.md, "A 15-minute lease"), so
# that the lease's minutes go to measuring: Liger Kernel's wheel for the baseline of tools/bench_kernels.py
# (.whl), and NVIDIA DALI with a dataset as parts of 59 MiB at most (.lease0, .lease1, ...; tools/lease_bundle.py)
# that `gpu_check.sh receive` puts back together there: CIFAR-10 (three parts) for the checks lease, or Imagenette
# (five parts) for the imagenette-gpu table. All are git-ignored. Costs no device time (about 3 minutes: mostly xz).
#
#   bash tools/prepare_lease.sh              # DALI + CIFAR-10 into /tmp/cifar10
#   bash tools/prepare_lease.sh imagenette   # DALI + Imagenette into /tmp/imagenette2-224
set -euo pipefail
dataset=${1:-cifar10}
[[ $dataset == cifar10 || $dataset == imagenette ]] || { echo "prepare_lease: dataset '$dataset' is neither cifar10 nor imagenette"; exit 2; }
cd "$(dirname "$0")/.."
shared=$(cd .. && pwd)/shared
[ -d "$shared/device" ] || { echo "prepare_lease: $shared/device not found (the project's shared folder)"; exit 2; }
rm -rf .whl && python3 -m pip download -q --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5 2>&1 | grep -v "is ignored" || true
ls .whl/liger_kernel-*.whl >/dev/null
mkdir -p .data && cp "$shared/data/cifar10.tar.gz" .data/  # for the reproduction lease, which needs no DALI

# DALI for the lease's Python 3.12: the wheels that ../shared/device/dali-chunks.sh fetches, unpacked (pip install
# --target does no more with them), less what a lease never loads (binaries for other Python versions, headers,
# nvcomp's command-line tools, the TIFF and JPEG 2000 decoders, the libraries' local symbol tables: the data
# layer's tests pass so), and xz over the whole tree: about 155 MB against 264 MB of wheels, so that DALI and
# CIFAR-10 travel in three calls rather than six, and DALI and Imagenette in five rather than eight.
bash "$shared/device/dali-chunks.sh" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work" .dali?' EXIT
cat .dali?/part* | tar -xf - -C "$work"
mkdir "$work/site"
for wheel in "$work"/*.whl; do python3 -m zipfile -e "$wheel" "$work/site"; done
(cd "$work/site" && rm -rf ./*.data nvidia/dali/include nvidia/libnvcomp/include nvidia/libnvcomp/bin nvidia/nvtiff \
   nvidia/nvjpeg2k nvidia/nvimgcodec/extensions/lib*tiff_ext* nvidia/nvimgcodec/extensions/libnvjpeg2k_ext* \
   && find . -name "*.cpython-3*" ! -name "*.cpython-312-*" -delete \
   && find . -name "*.so*" -type f -exec strip --strip-unneeded {} +)
[ -f "$work/site/nvidia/dali/backend_impl.cpython-312-x86_64-linux-gnu.so" ] || { echo "prepare_lease: no DALI for Python 3.12"; exit 1; }
tar -C "$work/site" -cf - . | xz -9 -T0 > "$work/dali-site.tar.xz"
if [ "$dataset" = cifar10 ]; then
  data=$shared/data/cifar10.tar.gz
else
  data=$work/imagenette2-224.tar.gz
  cat "$shared"/data/imagenette2-224.tar.gz.part* > "$data"
fi
python3 tools/lease_bundle.py pack "$work/dali-site.tar.xz=/tmp/site" "$data=/tmp"

du -sh .lease[0-9]* .whl .data/cifar10.tar.gz
commit=$(cd tools && python3 -c "import reproduce; print(reproduce.source_commit())")
echo "ready: make the calls of docs/benchmarks.md, 'A 15-minute lease'; the reproduce stage's records name"
echo "their commit with PYSOFTLABEL_COMMIT=$commit (the lease's copy has no .git)"
