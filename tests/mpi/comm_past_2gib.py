"""One real collective past 2^31 bytes, on 2 ranks: rank 0 gathers 2^31 + 2^20 bytes of its own
to every rank (no single MPI call may take that count); every rank checks each received part
against what rank 0 sent, without holding the whole payload.
    mpirun -n 2 python tests/mpi/comm_past_2gib.py
Prints "ok <bytes> <steps>" on each rank."""

import torch

from lbgm_mpi.comm.mpi import Comm, install_abort_on_error

TOTAL = 2**31 + 2**20
comm = Comm(max_message_bytes=2**31 - 1)  # the largest count MPI can take: still two steps
install_abort_on_error(comm)
PERIOD, BLOCK = 251, 1 << 26
counts = [TOTAL, 4096]
tile = torch.arange(PERIOD, dtype=torch.uint8).repeat(BLOCK // PERIOD + 2)  # byte i is i % 251
send = tile.repeat(TOTAL // len(tile) + 1)[:TOTAL] if comm.rank == 0 else \
    torch.full((4096,), 7, dtype=torch.uint8)
seen = [0, 0]
steps = []


def check(rank, offset, data):
    """Compare the received bytes with the pattern block by block (no 2 GiB reference copy)."""
    assert offset == seen[rank], (rank, offset, seen[rank])
    for lo in range(0, len(data), BLOCK):
        part = data[lo:lo + BLOCK]
        start = (offset + lo) % PERIOD
        expected = tile[start:start + len(part)] if rank == 0 else torch.full_like(part, 7)
        assert torch.equal(part, expected), f"rank {rank} bytes from {offset + lo} differ"
    seen[rank] += len(data)
    steps.append(len(data))


comm.allgatherv_stream([send], counts, check)
assert seen == counts and comm.bytes_sent == counts[comm.rank]
print(f"ok {sum(seen)} {len(steps)}", flush=True)
