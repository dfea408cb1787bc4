"""The per-round exchange: how the participants' updates become one aggregate on every rank.

One module per strategy: fedavg (dense Allreduce), gather (the two-Allgatherv frame and
compressed FedAvg), lbgm (per-client LBGM over a look-back bank), recycling (FedLUAR),
global_scope (LBGM on the aggregate, Allreduce only); records holds the wire record, factory
builds the configured one.

Dense FedAvg: each rank sums its participants' weighted updates; one Allreduce of d + 1 float32
(the last value carries the weighted training loss).

Every other exchange gathers, in two collectives:
  1. an Allgatherv of one fixed-size record per participant (id, loss, payload size, per-segment
     refresh flag and float32 look-back coefficients); the counts are known to every rank because
     all ranks draw the same participants and know where each client lives;
  2. an Allgatherv of the payload bytes, exactly as many as the records announced (no padding),
     streamed in bounded steps: each received part goes straight to where it belongs (a bank row,
     or a compressed client's payload), so no rank ever holds the gathered payloads whole.
Every rank then forms the same aggregate in client-id order, so it does not depend on the number
of ranks:
  - compressed FedAvg: every participant sends its compressed payload; the aggregate is the
    weighted sum of the decompressed payloads, rebuilt one at a time;
  - LBGM: per segment, a participant sends either a refresh (its update; with a compressor, its
    compressed payload) or m float32 look-back coefficients; every rank writes the refreshes into
    its bank (or its node's shared bank) and sums weight x coefficient x bank row.

LBGM stacked on a compressor: the compressor runs first, and LBGM projects the rebuilt
(decompressed) update on the client's look-back gradients, the last rebuilt updates it sent in
full. A compressor makes one payload per client, so stacking has one segment (granularity "model";
config.py rejects "layer"). With error feedback the residual is always e minus what the server
applies for the client: e - rebuilt after a refresh, e - sum_j rho_j b_j after a scalar.
"""

from lbgm_mpi.exchange.factory import make_exchange  # noqa: E402,F401
