"""Update compressors: a flat float32 update in, the exact bytes handed to MPI out, and back.

``make_compressor`` builds one from its name and settings; LBGM and the trainer use only the
``Compressor`` interface (lbgm_mpi.compress.base).
"""

from lbgm_mpi.compress.base import Compressor
from lbgm_mpi.compress.error_feedback import ErrorFeedback
from lbgm_mpi.compress.lowrank import AtomoCompressor, PowerSGDCompressor
from lbgm_mpi.compress.per_client import ClientCompressors
from lbgm_mpi.compress.sign import SignCompressor
from lbgm_mpi.compress.topk import RandomKCompressor, TopKCompressor
from lbgm_mpi.config import COMPRESSORS
from lbgm_mpi.models.layout import Layout

# name -> builder(layout, ratio, rank, seed); each takes the settings it uses
_BUILDERS = {
    "topk": lambda layout, ratio, rank, seed: TopKCompressor(layout, ratio),
    "randomk": lambda layout, ratio, rank, seed: RandomKCompressor(layout, ratio, seed),
    "sign": lambda layout, ratio, rank, seed: SignCompressor(layout),
    "lowrank": lambda layout, ratio, rank, seed: AtomoCompressor(layout, rank),
    "powersgd": lambda layout, ratio, rank, seed: PowerSGDCompressor(layout, rank, seed),
}
assert ("none", *_BUILDERS) == COMPRESSORS, "config.COMPRESSORS names what this package builds"


def make_compressor(name: str, layout: Layout, *, ratio: float, rank: int, seed: int,
                    error_feedback: bool) -> Compressor | None:
    """The compressor called ``name`` (None for "none"), wrapped in ErrorFeedback if asked.

    ``ratio`` is used by topk and randomk, ``rank`` by lowrank (ATOMO-style) and powersgd,
    ``seed`` by randomk and powersgd; the others ignore them.
    """
    if name == "none":
        if error_feedback:
            raise ValueError("error_feedback needs a compressor: set compressor to one of "
                             f"{', '.join(_BUILDERS)} or turn error_feedback off")
        return None
    if name not in _BUILDERS:
        raise ValueError(f"unknown compressor {name!r}: choose one of "
                         f"{', '.join(COMPRESSORS)}")
    compressor = _BUILDERS[name](layout, ratio, rank, seed)
    return ErrorFeedback(compressor) if error_feedback else compressor


__all__ = ["AtomoCompressor", "ClientCompressors", "Compressor",
           "ErrorFeedback", "PowerSGDCompressor", "RandomKCompressor", "SignCompressor",
           "TopKCompressor", "make_compressor"]
