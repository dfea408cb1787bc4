"""``lbgm-mpi analyze``: train centrally and measure the rank of the gradient space (N95 / N99).

One process, all the training data, the config's model, data, seed, clients.lr and
clients.batch_size (and system.device, system.threads); writes subspace.json, subspace.png and the
resolved config.toml into --out, which is made only once the device and the data are there. Needs
no MPI (see lbgm_mpi.cli): under a launcher with several ranks it refuses to start.
"""

import json
import sys
import time
from pathlib import Path

from lbgm_mpi.config import to_toml
from lbgm_mpi.errors import UserError
from lbgm_mpi.runs.lock import make_folder
from lbgm_mpi.runs.log import write_file

DEFAULT_EPOCHS = 30


def register(sub) -> None:
    p = sub.add_parser("analyze", help="train centrally (one process) and report how many "
                       "principal components the per-epoch gradients need (N95, N99)")
    p.add_argument("config", help="TOML config file: model, data, run.seed, clients.lr, "
                   "clients.batch_size, system.device and system.threads are used")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help=f"epochs over the whole training set, one gradient each "
                   f"(default {DEFAULT_EPOCHS}, at least 2)")
    p.add_argument("--out", default=None,
                   help="output folder (default runs/analyze-<config>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(handler=cmd_analyze, needs_config=True, check=_check)


def _check(args, spec) -> None:
    if args.epochs < 2:
        raise UserError(f"--epochs: {args.epochs} is too few; PCA of the gradients needs at "
                        "least 2 epochs")


def _check_fresh(out: Path) -> None:
    """Refuse an --out that is a file, or a folder that already holds something (as train
    does): an analysis never writes over another one's results."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} already holds files (an earlier analysis?): choose another "
                        "--out, or remove the folder first")


def _device(pref: str):
    """The device for the one analysing process (system.device: cpu | cuda | auto)."""
    import torch

    from lbgm_mpi.gpu import pick_device
    try:
        return pick_device(pref, 0, 1, torch.cuda.device_count(), allow_sharing=True)
    except RuntimeError as err:
        raise UserError(str(err)) from None


def _progress_line(record, epochs: int) -> str:
    ranks = "" if record.n95 is None else f"  N95 {record.n95:3d}  N99 {record.n99:3d}"
    lbg = "" if record.lookback is None else f"  cos(g, LBG) {record.lookback['cos_prev']:+.3f}"
    return (f"[analyze] epoch {record.epoch:3d}/{epochs}  train loss {record.train_loss:.4f}  "
            f"test acc {100 * record.test_acc:5.1f}%{ranks}{lbg}  {record.seconds:.1f}s")


def _report_progress(epochs: int, quiet: bool):
    def show(record) -> None:
        if not quiet:
            print(_progress_line(record, epochs), file=sys.stderr, flush=True)
    return show


def _command(args, out: Path) -> str:
    """The command line that reproduces this analysis."""
    sets = "".join(f" --set {text}" for text in args.overrides)
    return f"lbgm-mpi analyze {args.config}{sets} --epochs {args.epochs} --out {out}"


def cmd_analyze(comm, args, spec) -> int:
    if comm.size > 1:
        if comm.is_root:
            print(f"lbgm-mpi: error: analyze trains in one process; run it without mpirun "
                  f"(or with -n 1), not on {comm.size} ranks", file=sys.stderr)
        return 2
    import torch

    from lbgm_mpi.analysis.centralized import CentralizedRun
    from lbgm_mpi.analysis.plots import plot_subspace
    from lbgm_mpi.data.datasets import load_dataset
    torch.set_num_threads(spec.system.threads)
    device = _device(spec.system.device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/analyze-{Path(args.config).stem}-{stamp}")
    _check_fresh(out)
    data = load_dataset(spec.data)  # before the folder: missing data files leave none behind
    make_folder(out)  # now: an --out that cannot be written fails before the training
    run = CentralizedRun(spec, data, device)
    result = run.run(args.epochs, _report_progress(args.epochs, args.quiet))
    result = {"command": _command(args, out), "device": str(device),
              "data": spec.data.name, "model": spec.model.name, "lr": spec.clients.lr,
              "batch_size": spec.clients.batch_size, **result}
    write_file(out / "config.toml", to_toml(spec))
    write_file(out / "subspace.json", json.dumps(result, indent=1))
    plot_subspace(result["subspace"], out / "subspace.png")
    model = result["subspace"]["model"]
    print(f"analysis folder: {out}  {args.epochs} epochs, {result['num_params']} parameters: "
          f"N95 {model['n95'][-1]}  N99 {model['n99'][-1]} (whole model)  "
          f"test acc {100 * result['training'][-1]['test_acc']:.2f}%")
    return 0
