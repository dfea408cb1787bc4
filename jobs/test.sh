#!/usr/bin/env bash
# The whole test suite: set up the environment if needed, then pytest (multi-rank tests launch
# mpirun at 1, 2 and 4 ranks, each under a timeout). Extra arguments go to pytest.
#   bash jobs/test.sh [-k pattern]
set -euo pipefail
cd "$(dirname "$0")/.."
source jobs/setup-env.sh
python -m pytest -q tests "$@"
