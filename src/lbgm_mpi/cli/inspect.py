"""``lbgm-mpi inspect CKPT|RUN_DIR``: what a checkpoint holds, and whether its checksum holds."""

import math
from pathlib import Path

from lbgm_mpi.checkpoint.store import checkpoint_layout, list_checkpoints
from lbgm_mpi.errors import UserError
from lbgm_mpi.units import human_bytes


def register(sub) -> None:
    p = sub.add_parser("inspect", help="print what a checkpoint holds (and verify its checksum)")
    p.add_argument("checkpoint", help="an .h5 checkpoint (OUT/checkpoints/round-NNNNNN.h5), or a "
                   "run folder or its checkpoints folder (then its newest checkpoint)")
    p.set_defaults(handler=cmd_inspect, needs_config=False)


def _chosen(path: Path) -> tuple[Path, str]:
    """The checkpoint file ``path`` names (a folder names its newest), and how it was chosen."""
    if not path.is_dir():
        return path, ""
    found = list_checkpoints(path) or list_checkpoints(path / "checkpoints")
    if not found:
        raise UserError(f"{path} is a folder with no checkpoints (round-NNNNNN.h5) in it or in "
                        f"{path / 'checkpoints'}")
    return found[-1], f" (newest of {len(found)} in {found[-1].parent})"


def describe(path: Path) -> str:
    """A human-readable description of the checkpoint at ``path`` (verified on the way)."""
    path, chosen = _chosen(Path(path))
    arrays, attrs = checkpoint_layout(path)  # verified, but no array read: a bank may be GBs
    cfg = attrs["config"]
    lines = [f"checkpoint {path}  ({human_bytes(path.stat().st_size)} on disk){chosen}",
             f"  round {attrs['round']} of {cfg['run']['rounds']}, written by {attrs['ranks']} "
             f"rank(s); checksum OK",
             f"  algo {cfg['algo']['name']} (threshold {cfg['algo']['threshold']}, "
             f"{cfg['algo']['granularity']} granularity, compressor {cfg['algo']['compressor']}, "
             f"scope {cfg['algo'].get('scope', 'client')})",
             f"  data {cfg['data']['name']} ({cfg['data']['partition']}), model "
             f"{cfg['model']['name']} with {attrs['num_params']} values, "
             f"{cfg['clients']['count']} clients, seed {cfg['run']['seed']}",
             "  arrays:"]
    for name in sorted(arrays):
        dtype, shape = arrays[name]
        nbytes = dtype.itemsize * math.prod(shape)
        lines.append(f"    {name:<28} {str(dtype):<8} {str(shape):<16} {human_bytes(nbytes)}")
    return "\n".join(lines)


def cmd_inspect(comm, args, spec) -> int:
    if comm.is_root:
        print(describe(Path(args.checkpoint)))
    return 0
