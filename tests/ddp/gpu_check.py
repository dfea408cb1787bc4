"""The LBGM DDP hook on one CUDA device (NCCL, one process): device tensors stay on the device.

    python tests/ddp/gpu_check.py          (prints one JSON line; exit 0 when every check holds)

Not run by pytest (it needs a GPU). Checks: threshold 0 gives DDP's default gradients at every
step; with threshold 0.9 scalar buckets happen; the bank, residual and returned gradients are
CUDA tensors; a state_dict round trip continues identically; and the per-step time of the hook
on a 10M-value bucket.
"""

import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lbgm_mpi.ddp import LBGMHookState, init_process_group_from_env, lbgm_hook


def model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).cuda()


def batch(step: int):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(256, 64, generator=g)
    return x.cuda(), (x[:, :10].argmax(1)).cuda()


def train(ddp, opt, steps, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        x, y = batch(step)
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()


def main() -> int:
    os.environ.setdefault("MASTER_PORT", "29561")
    info = init_process_group_from_env()
    assert info.backend == "nccl" and info.device.type == "cuda", info
    out = {"device": torch.cuda.get_device_name()}
    # threshold 0 against DDP's default
    ref, mine = DDP(model(512)), DDP(model(512))
    state = LBGMHookState(threshold=0.0, start_iter=2)
    mine.register_comm_hook(state, lbgm_hook)
    diffs = []
    for step in range(6):
        for ddp in (ref, mine):
            ddp.zero_grad()
            x, y = batch(step)
            nn.functional.cross_entropy(ddp(x), y).backward()
        diffs.append(max(float((a.grad - b.grad).abs().max())
                         for a, b in zip(ref.parameters(), mine.parameters())))
    out["threshold0_max_diff"] = max(diffs)
    # threshold 0.9: scalars, tensors on the device, resume
    m = model(4096)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    state = LBGMHookState(threshold=0.9, start_iter=2, keep_history=True)
    ddp = DDP(m)
    ddp.register_comm_hook(state, lbgm_hook)
    train(ddp, opt, 10)
    b = next(iter(state.buckets.values()))
    out["on_device"] = b.bank.rows.is_cuda and b.residual.is_cuda
    out["counters"] = state.counters()
    saved = state.state_dict()
    params = [p.detach().clone() for p in m.parameters()]
    train(ddp, opt, 5, start=10)
    after = [p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p, q in zip(m.parameters(), params):
            p.copy_(q)
    state2 = LBGMHookState(threshold=0.9, start_iter=2)
    state2.load_state_dict(saved)
    opt2 = torch.optim.SGD(m.parameters(), lr=0.05)
    ddp2 = DDP(m)
    ddp2.register_comm_hook(state2, lbgm_hook)
    train(ddp2, opt2, 5, start=10)
    out["resume_equal"] = all(torch.equal(a, p) for a, p in zip(after, m.parameters()))
    # the hook's time a step on a 10M-value bucket (scalar and dense steps mixed)
    big = model(150_000)
    ddp3 = DDP(big, bucket_cap_mb=100)
    st3 = LBGMHookState(threshold=0.5, start_iter=2)
    ddp3.register_comm_hook(st3, lbgm_hook)
    opt3 = torch.optim.SGD(big.parameters(), lr=0.01)
    train(ddp3, opt3, 5)
    torch.cuda.synchronize()
    t = time.perf_counter()
    train(ddp3, opt3, 20, start=5)
    torch.cuda.synchronize()
    out["step_s_10M"] = (time.perf_counter() - t) / 20
    out["counters_10M"] = st3.counters()
    del ref, mine, ddp, ddp2, ddp3
    dist.destroy_process_group()
    ok = (out["threshold0_max_diff"] <= 1e-6 and out["on_device"] and out["resume_equal"]
          and out["counters"]["scalar_buckets"] > 0)
    out["ok"] = ok
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
