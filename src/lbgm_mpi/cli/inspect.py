"""``lbgm-mpi inspect CKPT``: what a checkpoint holds, and whether its checksum holds."""

from pathlib import Path

from lbgm_mpi.checkpoint.store import read_checkpoint
from lbgm_mpi.analysis.report import human_bytes


def register(sub) -> None:
    p = sub.add_parser("inspect", help="print what a checkpoint holds (and verify its checksum)")
    p.add_argument("checkpoint", help="an .h5 checkpoint (OUT/checkpoints/round-NNNNNN.h5)")
    p.set_defaults(handler=cmd_inspect, needs_config=False)


def describe(path: Path) -> str:
    """A human-readable description of the checkpoint at ``path`` (verified on the way)."""
    arrays, attrs = read_checkpoint(path)
    cfg = attrs["config"]
    lines = [f"checkpoint {path}  ({human_bytes(Path(path).stat().st_size)} on disk)",
             f"  round {attrs['round']} of {cfg['run']['rounds']}, written by {attrs['ranks']} "
             f"rank(s); checksum OK",
             f"  algo {cfg['algo']['name']} (threshold {cfg['algo']['threshold']}, "
             f"{cfg['algo']['granularity']} granularity, compressor {cfg['algo']['compressor']})",
             f"  data {cfg['data']['name']} ({cfg['data']['partition']}), model "
             f"{cfg['model']['name']} with {attrs['num_params']} values, "
             f"{cfg['clients']['count']} clients, seed {cfg['run']['seed']}",
             "  arrays:"]
    for name in sorted(arrays):
        a = arrays[name]
        lines.append(f"    {name:<28} {str(a.dtype):<8} {str(a.shape):<16} "
                     f"{human_bytes(a.nbytes)}")
    return "\n".join(lines)


def cmd_inspect(comm, args, spec) -> int:
    if comm.is_root:
        print(describe(Path(args.checkpoint)))
    return 0
