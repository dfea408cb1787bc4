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


def root_decides(comm, fn):
    """Call ``fn()`` on the root only and return its result on every rank.

    A UserError it raises is raised on every rank (so that ``on_every_rank`` around the caller
    reports it once), instead of leaving the other ranks waiting for the root's answer."""
    answer = None
    if comm.is_root:
        try:
            answer = (fn(), None)
        except UserError as err:
            answer = (None, err)
    result, error = comm.control_bcast(answer)
    if error is not None:
        raise error
    return result
