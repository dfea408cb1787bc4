"""Every comm collective at a tiny message limit: each rank checks what it received against what
every rank must have sent (payloads of uneven sizes, empty ones included), and the byte ledger.
    mpirun -n P python tests/mpi/comm_steps.py LIMIT [LIMIT ...]
Each LIMIT in turn, with a Comm (and byte ledger) of its own: one launch for several limits.
Prints one line "ok <steps> <limit>" per rank and limit on success; raises (and aborts the job)
otherwise."""

import sys

import numpy as np
import torch

from lbgm_mpi.comm.mpi import Comm, install_abort_on_error


def check(limit: int) -> None:
    comm = Comm(max_message_bytes=limit)
    install_abort_on_error(comm)
    P, me = comm.size, comm.rank

    def payload(rank: int) -> np.ndarray:
        """Rank r's bytes: 0 for the last rank of several, else an uneven size."""
        n = 0 if (P > 1 and rank == P - 1) else 1000 + 733 * rank
        return np.random.default_rng(rank).integers(0, 256, n, dtype=np.uint8)

    counts = [len(payload(r)) for r in range(P)]
    mine = torch.from_numpy(payload(me))
    pieces = [mine[:17], mine[17:17], mine[17:500], mine[500:]]  # uneven pieces, one empty
    got = {r: bytearray() for r in range(P)}
    calls = []

    def sink(rank, offset, data):
        assert offset == len(got[rank]), (rank, offset, len(got[rank]))
        got[rank] += data.numpy().tobytes()
        calls.append(rank)

    before = comm.bytes_sent
    comm.allgatherv_stream(pieces, counts, sink)
    for r in range(P):
        assert bytes(got[r]) == payload(r).tobytes(), f"rank {me}: payload of rank {r} differs"
    assert comm.bytes_sent - before == counts[me], "the ledger must count the payload once"

    whole = comm.allgatherv_bytes(payload(me), counts)
    assert whole.tobytes() == b"".join(payload(r).tobytes() for r in range(P))

    x = np.arange(5000, dtype=np.float32) * (me + 1)
    before = comm.bytes_sent
    total = comm.allreduce_sum(x)
    assert np.array_equal(total, np.arange(5000, dtype=np.float32) * (P * (P + 1) // 2))
    assert comm.bytes_sent - before == x.nbytes
    assert torch.equal(comm.allreduce_tensor(torch.from_numpy(x)), torch.from_numpy(total))

    parts = comm.control_gather_bytes(payload(me))
    if comm.is_root:
        assert [p.tobytes() for p in parts] == [payload(r).tobytes() for r in range(P)]
    else:
        assert parts is None

    big = {"rows": list(range(3000)), "rank": "root"}
    assert comm.control_bcast(big if comm.is_root else None) == big
    print(f"ok {len(calls)} {limit}", flush=True)


for limit in map(int, sys.argv[1:]):
    check(limit)
