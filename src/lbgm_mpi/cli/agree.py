"""Failing together: a user error on any rank ends every rank, reported once."""

import sys

from lbgm_mpi.errors import UserError


def on_every_rank(comm, fn, where: str = ""):
    """Call ``fn()`` on every rank and return its result.

    If it raises a UserError on any rank, the lowest such rank prints the message (one line) and
    every rank exits with status 2, without any rank waiting in a collective for the others."""
    error = result = None
    try:
        result = fn()
    except UserError as err:
        error = err
    failed = comm.control_gather_int(int(error is not None))
    if any(failed):
        if comm.rank == failed.index(1):
            origin = f" on rank {comm.rank}" if where == "rank" else ""
            print(f"lbgm-mpi: error{origin}: {error}", file=sys.stderr)
        raise SystemExit(2)
    return result
