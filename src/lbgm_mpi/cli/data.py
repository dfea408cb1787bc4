"""``lbgm-mpi data convert``: write a data set to one HDF5 file, to train with data.name = "hdf5".

The paper's data sets are read from their standard files under --root (see data/formats.py); the
embedded ones (digits, mnist1d, synthetic) are built as training builds them. Under mpirun only the
root rank does the work.
"""

from pathlib import Path

from lbgm_mpi.errors import UserError

FILE_SETS = ("mnist", "fmnist", "cifar10", "cifar100", "celeba")  # read from --root
EMBEDDED_SETS = ("digits", "mnist1d", "synthetic")  # built in memory, --root unused


def register(sub) -> None:
    data = sub.add_parser("data", help="data-set tools")
    tools = data.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    convert = tools.add_parser("convert", help="write a data set to one HDF5 file "
                               "(then train with data.name = \"hdf5\", data.root = FILE.h5)")
    convert.add_argument("name", metavar="NAME", choices=FILE_SETS + EMBEDDED_SETS,
                         help=f"one of {', '.join(FILE_SETS + EMBEDDED_SETS)}")
    convert.add_argument("--root", default=None, metavar="DIR",
                         help=f"folder with the standard files ({', '.join(FILE_SETS)})")
    convert.add_argument("--out", required=True, metavar="FILE.h5", help="HDF5 file to write")
    convert.set_defaults(handler=cmd_convert)


def _embedded(name: str) -> dict:
    from lbgm_mpi.config import Data
    from lbgm_mpi.data.datasets import load_dataset
    ds = load_dataset(Data(name=name))
    # stored exactly as the trainer sees them (float32), so training from the file is the same
    x_train, x_test = ds.x_train.numpy(), ds.x_test.numpy()
    return {"x_train": x_train, "y_train": ds.y_train.numpy(), "x_test": x_test,
            "y_test": ds.y_test.numpy(), "num_classes": ds.num_classes, "name": name}


def _from_files(name: str, root: str | None) -> dict:
    from lbgm_mpi.data.formats import LOADERS
    if not root:
        raise UserError(f"data convert {name}: --root must name the folder with its files")
    if not Path(root).is_dir():
        raise UserError(f"data convert {name}: --root {root} is not a folder")
    return LOADERS[name](root)


def read_for_convert(name: str, root: str | None) -> dict:
    """The data-set dict of ``name``, ready for ``write_dataset_h5``."""
    from lbgm_mpi.data.formats import DataFormatError
    try:
        return _embedded(name) if name in EMBEDDED_SETS else _from_files(name, root)
    except DataFormatError as err:
        raise UserError(str(err)) from None


def cmd_convert(comm, args, spec) -> int:
    if not comm.is_root:
        return 0
    from lbgm_mpi.data.hdf5_store import write_dataset_h5
    data = read_for_convert(args.name, args.root)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    write_dataset_h5(out, data)
    print(f"wrote {out}: {data['name']}, {len(data['y_train'])} train / {len(data['y_test'])} "
          f"test, images {tuple(data['x_train'].shape[1:])}, {data['num_classes']} classes, "
          f"{out.stat().st_size / 1e6:.1f} MB; train from it with --set data.name=hdf5 "
          f"--set data.root={out}")
    return 0
