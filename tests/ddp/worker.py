"""One DDP job for tests/test_ddp.py, launched as ``mpirun -n P python tests/ddp/worker.py MODE``.

Every rank trains a small MLP with DDP (gloo, CPU) on its own deterministic batches; rank 0
writes what the test checks as JSON to --out. Modes:

  equal      a model with the LBGM hook beside one with DDP's default Allreduce (same init, same
             batches): their gradients at every step (threshold 0, and a tiny threshold that
             sends the record but always refreshes);
  decide     threshold > 0: every rank's decisions, its bytes against those handed to
             dist.all_reduce (counted by a wrapper), the parameters on every rank;
  train      train --steps steps (optionally loading --load first, saving --save after); the
             final parameters go to --out (rank 0, as a torch file);
  resize     the state is reused on a model whose bucket has another size: the error;
  group      a state saved at another world size, or by another rank, is refused.

``worker.py many JSON`` runs several of these, JSON being a list of argument lists (each a MODE
and its options), one after the other in one process group, each on its own models, optimizers
and hook state: one launch for several short jobs (a resume from --load still needs a process
group of its own, since that is what it tests).
"""

import argparse
import gc
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lbgm_mpi.ddp import (
    LBGMHookError,
    LBGMHookState,
    end_process,
    init_process_group_from_env,
    lbgm_hook,
)

IN, OUT = 20, 5


def model(hidden: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, OUT))


def batch(step: int, rank: int, n: int = 64):
    """This rank's batch at ``step``: the same on every run, different on every rank; a fixed
    teacher makes the gradients of successive steps related, as in real training."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(n, IN, generator=g)
    teacher = torch.Generator().manual_seed(7)
    w = torch.randn(IN, OUT, generator=teacher)
    return x, (x @ w).argmax(dim=1)


def step_loss(ddp, step: int, rank: int):
    x, y = batch(step, rank)
    return nn.functional.cross_entropy(ddp(x), y)


def wrap(m: nn.Module, args, state=None) -> DDP:
    ddp = DDP(m, bucket_cap_mb=args.bucket_mb)
    if state is not None:
        ddp.register_comm_hook(state, lbgm_hook)
    return ddp


def hook_state(args, **kw) -> LBGMHookState:
    opts = dict(threshold=args.threshold, lookback=3, start_iter=args.start_iter,
                error_feedback=True, sketch=64, seed=1, keep_history=True)
    opts.update(kw)
    return LBGMHookState(**opts)


def mode_equal(args, rank):
    ref, mine = wrap(model(args.hidden), args), None
    state = hook_state(args)
    mine = wrap(model(args.hidden), args, state)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_mine = torch.optim.SGD(mine.parameters(), lr=0.1)
    worst = []
    for step in range(args.steps):
        for ddp, opt in ((ref, opt_ref), (mine, opt_mine)):
            opt.zero_grad()
            step_loss(ddp, step, rank).backward()
        diff = max(float((a.grad - b.grad).abs().max())
                   for a, b in zip(ref.parameters(), mine.parameters()))
        worst.append(diff)
        opt_ref.step()
        opt_mine.step()
    return {"max_diff_per_step": worst, "counters": state.counters(),
            "kinds": sorted({h[2] for h in state.history}),
            "buckets": len({h[1] for h in state.history})}


def mode_decide(args, rank):
    handed = {"bytes": 0}
    real = dist.all_reduce

    def counting(tensor, *a, **kw):
        handed["bytes"] += tensor.numel() * tensor.element_size()
        return real(tensor, *a, **kw)

    dist.all_reduce = counting
    state = hook_state(args)
    ddp = wrap(model(args.hidden), args, state)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr)
    for step in range(args.steps):
        opt.zero_grad()
        step_loss(ddp, step, rank).backward()
        opt.step()
    dist.all_reduce = real
    flat = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {"history": state.history, "counters": state.counters(),
                                      "handed": handed["bytes"], "params": flat.tolist()})
    return {"ranks": everyone}


def mode_train(args, rank):
    state = hook_state(args, keep_history=False)
    m = model(args.hidden)
    opt = torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9)
    start = 0
    if args.load:
        ckpt = torch.load(Path(args.load) / f"rank{rank}.pt", weights_only=False)
        m.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state.load_state_dict(ckpt["hook"])
        start = ckpt["step"]
    ddp = wrap(m, args, state)
    for step in range(start, start + args.steps):
        opt.zero_grad()
        step_loss(ddp, step, rank).backward()
        opt.step()
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        torch.save({"model": m.state_dict(), "opt": opt.state_dict(),
                    "hook": state.state_dict(), "step": start + args.steps},
                   Path(args.save) / f"rank{rank}.pt")
    if rank == 0:
        torch.save({"params": [p.detach().clone() for p in m.parameters()],
                    "counters": state.counters()}, args.out)
    return None


def mode_resize(args, rank):
    state = hook_state(args)
    ddp = wrap(model(args.hidden), args, state)
    for step in range(args.start_iter + 2):
        step_loss(ddp, step, rank).backward()
    other = wrap(model(args.hidden + 3), args, state)
    try:
        for step in range(2):
            step_loss(other, step, rank).backward()
    except Exception as err:  # DDP passes the hook's error on from backward()
        return {"error": str(err), "type": type(err).__name__}
    return {"error": None}


def mode_group(args, rank):
    state = hook_state(args)
    ddp = wrap(model(args.hidden), args, state)
    for step in range(args.start_iter + 2):
        step_loss(ddp, step, rank).backward()
    saved = state.state_dict()
    errors = {}
    for name, change in (("size_error", {"world_size": saved["world_size"] + 1}),
                         ("rank_error", {"rank": (saved["rank"] + 1) % saved["world_size"]})):
        try:
            hook_state(args).load_state_dict({**saved, **change})
            errors[name] = None
        except LBGMHookError as err:
            errors[name] = str(err)
    return errors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["equal", "decide", "train", "resize", "group"])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--start-iter", type=int, default=2)
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--bucket-mb", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--load")
    p.add_argument("--save")
    return p


def main():
    argv = sys.argv[1:]
    jobs = json.loads(argv[1]) if argv[:1] == ["many"] else [argv]
    jobs = [parser().parse_args(job) for job in jobs]
    torch.set_num_threads(1)
    info = init_process_group_from_env(timeout=timedelta(seconds=120))
    for args in jobs:
        result = globals()[f"mode_{args.mode}"](args, info.rank)
        if result is not None and info.rank == 0:
            result["launcher"] = info.launcher
            result["world_size"] = info.world_size
            Path(args.out).write_text(json.dumps(result))
        # DDP's reducer and gloo's pending work hold tensors and the process group: free them
        # while the interpreter is alive (at its teardown gloo's threads can abort the process)
        gc.collect()
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()
    return 0


if __name__ == "__main__":
    end_process(main())  # the result is written: end without the interpreter's teardown
