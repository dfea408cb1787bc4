"""A plain PyTorch DDP training script with a choice of communication hook, LBGM among them.

    torchrun --nproc_per_node 4 examples/ddp_train.py --hook lbgm
    mpirun -n 4 python examples/ddp_train.py --hook lbgm          (Open MPI; MPICH: PMI_RANK)
    srun -n 4 python examples/ddp_train.py --hook lbgm            (SLURM)

Each process trains the model on its shard of the training set (a seeded permutation, every
P-th sample), with DistributedDataParallel averaging the gradients through the hook:

    allreduce   DDP's default: one Allreduce of every bucket (float32)
    fp16        torch's fp16_compress_hook: the same Allreduce in float16
    powersgd    torch's PowerSGD hook (rank --powersgd-rank, error feedback, warm start)
    lbgm        lbgm_mpi.ddp.lbgm_hook: the Look-back Gradient Multiplier (see docs/ddp.md)

The LBGM lines are the two marked "LBGM" below. Per epoch rank 0 prints the test accuracy, the
bytes this rank handed to the gradient collectives (allreduce / fp16 / powersgd: computed from
the buckets' sizes as each hook sends them; lbgm: from the hook state's counters) and the
seconds of training (evaluation excluded); --json writes the same per epoch. Data: scikit-learn's
digits (default) or MNIST-1D, shipped with the project, or CIFAR-10's binary files with
--data-root. --checkpoint DIR saves every rank's model, optimizer and hook state after each
epoch and resumes from them when they are there.
"""

import argparse
import gc
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from lbgm_mpi.config import Data, Model
from lbgm_mpi.data.datasets import load_dataset
from lbgm_mpi.ddp import (
    LBGMHookState,
    end_process,
    init_process_group_from_env,
    lbgm_hook,
)
from lbgm_mpi.models import build_model

HOOKS = ("allreduce", "fp16", "powersgd", "lbgm")
_ALLREDUCE = dist.all_reduce  # the evaluation's, never counted (see --check-bytes)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hook", choices=HOOKS, default="lbgm")
    p.add_argument("--data", choices=("digits", "mnist1d", "cifar10"), default=None,
                   help="default: cifar10 with --data-root, else digits")
    p.add_argument("--data-root", default="", help="folder of CIFAR-10's binary files")
    p.add_argument("--model", default="mlp",
                   help="a lbgm_mpi model: linear, mlp, cnn, fcn, lenet, resnet18, vgg19")
    p.add_argument("--hidden", type=int, default=4096, help="mlp width / cnn channels")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bucket-cap-mb", type=float, default=25.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    p.add_argument("--start-iter", type=int, default=10,
                   help="plain Allreduce steps before LBGM / PowerSGD start")
    p.add_argument("--threshold", type=float, default=0.2, help="lbgm: sin^2 threshold")
    p.add_argument("--lookback", type=int, default=3, help="lbgm: kept dense gradients")
    p.add_argument("--sketch", type=int, default=1024, help="lbgm: count-sketch buckets")
    p.add_argument("--no-error-feedback", action="store_true", help="lbgm: without it")
    p.add_argument("--powersgd-rank", type=int, default=1)
    p.add_argument("--target", type=float, default=None,
                   help="stop after the first epoch at or above this test accuracy")
    p.add_argument("--checkpoint", default="", help="folder: save after each epoch, resume")
    p.add_argument("--json", default="", help="rank 0 writes the per-epoch records here")
    p.add_argument("--check-bytes", action="store_true",
                   help="also count the bytes handed to dist.all_reduce itself, and fail if "
                   "they differ from the computed ones")
    args = p.parse_args(argv)
    args.data = args.data or ("cifar10" if args.data_root else "digits")
    return args


# ---- bytes of torch's hooks, from the bucket sizes ---------------------------------------------

def counted(hook, size_of, total: dict):
    """``hook``, adding up in total["bytes"] what it hands to its collectives (size_of)."""

    def counted_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        total["bytes"] += size_of(state, bucket)
        return hook(state, bucket)

    return counted_hook


def allreduce_bytes(state, bucket) -> int:
    return bucket.buffer().numel() * bucket.buffer().element_size()


def fp16_bytes(state, bucket) -> int:
    return bucket.buffer().numel() * 2


def powersgd_bytes(state, bucket) -> int:
    """What torch's powerSGD_hook hands to its Allreduces for this bucket: the whole bucket
    before start_powerSGD_iter; then the tensors not worth compressing, and P (n x r) and
    Q (m x r) of each one that is."""
    size = bucket.buffer().element_size()
    if state.iter < state.start_powerSGD_iter:
        return bucket.buffer().numel() * size
    values = 0
    for g in bucket.gradients():
        n = g.shape[0] if g.dim() else 1
        m = g.numel() // max(1, n)
        r = min(n, m, state.matrix_approximation_rank)
        worth, _, compressed = powerSGD_hook._should_compress(n, m, r,
                                                              state.min_compression_rate)
        values += compressed if worth else g.numel()
    return values * size


def install_hook(ddp: DDP, args):
    """Register the chosen hook; return a function giving the bytes handed so far, and the
    LBGM state (or None)."""
    if args.hook == "lbgm":
        state = LBGMHookState(threshold=args.threshold, lookback=args.lookback,    # LBGM
                              start_iter=args.start_iter, sketch=args.sketch,
                              error_feedback=not args.no_error_feedback, seed=args.seed)
        ddp.register_comm_hook(state, lbgm_hook)                                   # LBGM
        return (lambda: state.bytes), state
    if args.hook == "powersgd":
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=args.powersgd_rank,
            start_powerSGD_iter=max(2, args.start_iter), use_error_feedback=True,
            warm_start=True, random_seed=args.seed)
        hook, size_of = powerSGD_hook.powerSGD_hook, powersgd_bytes
    elif args.hook == "fp16":
        state, hook, size_of = None, default_hooks.fp16_compress_hook, fp16_bytes
    else:
        state, hook, size_of = None, default_hooks.allreduce_hook, allreduce_bytes
    total = {"bytes": 0}
    ddp.register_comm_hook(state, counted(hook, size_of, total))
    return (lambda: total["bytes"]), None


# ---- data, evaluation, checkpoints -------------------------------------------------------------

def shard(n: int, rank: int, world: int, seed: int) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[rank::world]


@torch.no_grad()
def evaluate(model, data, rank: int, world: int, device) -> float:
    """Test accuracy: each process scores its slice of the test set, one small Allreduce sums
    the counts (not a gradient collective: not counted)."""
    model.eval()
    x, y = data.x_test[rank::world], data.y_test[rank::world]
    correct = 0
    for lo in range(0, len(y), 1024):
        out = model(x[lo:lo + 1024].to(device))
        correct += int((out.argmax(1).cpu() == y[lo:lo + 1024]).sum())
    counts = torch.tensor([correct, len(y)], dtype=torch.float64, device=device)
    _ALLREDUCE(counts)
    model.train()
    return float(counts[0] / counts[1])


def count_allreduce() -> dict:
    """Make dist.all_reduce add the bytes of every tensor it is handed to the returned dict."""
    handed = {"bytes": 0}

    def counting(tensor, *args, **kwargs):
        handed["bytes"] += tensor.numel() * tensor.element_size()
        return _ALLREDUCE(tensor, *args, **kwargs)

    dist.all_reduce = counting
    return handed


def load_checkpoint(folder: str, rank: int, model, opt, state):
    path = Path(folder) / f"rank{rank}.pt"
    if not folder or not path.exists():
        return 0, []
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    if state is not None:
        state.load_state_dict(ckpt["hook"])
    return ckpt["epoch"], ckpt["records"]


def save_checkpoint(folder: str, rank: int, model, opt, state, epoch, records):
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(folder) / f"rank{rank}.pt.tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                "hook": None if state is None else state.state_dict(),
                "records": records}, tmp)
    tmp.replace(Path(folder) / f"rank{rank}.pt")


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


# ---- training ------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = init_process_group_from_env()
    rank, world, device = info.rank, info.world_size, info.device
    data = load_dataset(Data(name=args.data, root=args.data_root))
    model = build_model(Model(name=args.model, hidden=args.hidden), data.in_shape,
                        data.num_classes, args.seed).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    ddp = DDP(model, bucket_cap_mb=args.bucket_cap_mb,
              device_ids=[device.index] if device.type == "cuda" else None)
    sent_now, state = install_hook(ddp, args)
    handed = count_allreduce() if args.check_bytes else None
    mine = shard(len(data.y_train), rank, world, args.seed)
    steps = (len(data.y_train) // world) // args.batch_size
    if steps == 0:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than a shard "
                         f"({len(data.y_train) // world} samples)")
    first, records = load_checkpoint(args.checkpoint, rank, model, opt, state)
    # bytes of the epochs before a resume that the hook's own count does not hold (the LBGM
    # state's counters come back with it; the wrappers of torch's hooks start from zero)
    start_bytes = sent_now()
    sent_before = (records[-1]["total_bytes"] if records else 0) - start_bytes
    if rank == 0:
        print(f"{args.hook}: {args.model} of {params:,} parameters on {args.data}, {world} "
              f"processes ({info.launcher}, {info.backend}), {steps} steps of "
              f"{args.batch_size} per epoch" + (f", resumed at epoch {first}" if first else ""),
              flush=True)
    total_s = records[-1]["total_s"] if records else 0.0
    for epoch in range(first, args.epochs):
        order = mine[torch.randperm(len(mine), generator=torch.Generator().manual_seed(
            args.seed * 100_003 + epoch))]
        before = sent_now()
        dist.barrier()
        start = time.perf_counter()
        for s in range(steps):
            idx = order[s * args.batch_size:(s + 1) * args.batch_size]
            x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            loss = loss.detach()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        total_s += seconds
        acc = evaluate(ddp.module, data, rank, world, device)
        rec = {"epoch": epoch + 1, "step": (epoch + 1) * steps, "test_acc": acc,
               "loss": float(loss), "bytes": sent_now() - before,
               "total_bytes": sent_before + sent_now(), "seconds": seconds, "total_s": total_s}
        if state is not None:
            rec.update({k: v for k, v in state.counters().items()
                        if k in ("dense_buckets", "scalar_buckets", "allreduce_buckets")})
        records.append(rec)
        if rank == 0:
            extra = "" if state is None else (f"  dense {rec['dense_buckets']} scalar "
                                              f"{rec['scalar_buckets']}")
            print(f"epoch {epoch + 1:3d}  test acc {acc:.4f}  loss {rec['loss']:.4f}  "
                  f"bytes {human(rec['bytes'])} (total {human(rec['total_bytes'])})  "
                  f"seconds {seconds:.2f} (total {total_s:.2f}){extra}", flush=True)
        if args.checkpoint:
            save_checkpoint(args.checkpoint, rank, model, opt, state, epoch + 1, records)
        if not math.isfinite(rec["loss"]):
            raise SystemExit(f"loss is {rec['loss']} at epoch {epoch + 1}: lower --lr")
        if args.target is not None and acc >= args.target:
            break
    if handed is not None:
        computed = sent_now() - start_bytes
        if handed["bytes"] != computed:
            raise SystemExit(f"rank {rank}: the {args.hook} hook handed {handed['bytes']} bytes "
                             f"to dist.all_reduce, the script computed {computed}")
        if rank == 0:
            print(f"bytes check: {computed} bytes computed = {handed['bytes']} handed to "
                  "dist.all_reduce", flush=True)
    if rank == 0 and args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "params": params,
                                               "world_size": world, "epochs": records},
                                              indent=1))
    # free DDP (its reducer holds gloo work and the process group) while the interpreter is
    # alive: left to the interpreter's teardown, gloo's threads can abort the process
    del ddp, opt, state
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    # everything is printed and saved: end without the interpreter's teardown (see end_process)
    end_process(main())
