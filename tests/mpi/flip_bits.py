"""Write a small checkpoint, then read back N copies of it, each with one random bit flipped.

Prints one JSON object: how many copies were refused with a one-line CheckpointError, read back
identical, or raised anything else (with examples). Run in a subprocess under a timeout: a
damaged HDF5 file can hang the HDF5 library itself."""

import json
import sys
from pathlib import Path

import numpy as np

from lbgm_mpi.checkpoint.store import CheckpointError, read_checkpoint, write_checkpoint

folder, flips, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
arrays = {"theta": rng.normal(size=500).astype(np.float32),
          "bank/rows": rng.normal(size=(3, 50)).astype(np.float32),
          "bank/valid": np.ones((3, 1), np.uint8),
          "metrics_json": np.frombuffer(b'[{"round": 8}]', np.uint8)}
attrs = {"round": 8, "config": {"run": {"rounds": 10}}, "ranks": 2}
good = folder / "good.h5"
write_checkpoint(good, arrays, attrs)
data = good.read_bytes()
bad = folder / "bad.h5"
outcome = {"refused": 0, "identical": 0, "other": 0, "examples": []}
for _ in range(flips):
    copy = bytearray(data)
    copy[int(rng.integers(len(copy)))] ^= 1 << int(rng.integers(8))
    bad.write_bytes(bytes(copy))
    try:
        got, got_attrs = read_checkpoint(bad)
        same = got_attrs == attrs and got.keys() == arrays.keys() and all(
            np.array_equal(got[k], arrays[k]) for k in arrays)
        outcome["identical" if same else "other"] += 1
    except CheckpointError as err:
        outcome["refused"] += int("\n" not in str(err) and str(bad) in str(err))
    except Exception as err:  # noqa: BLE001 -- counting what must never happen
        outcome["other"] += 1
        outcome["examples"].append(repr(err)[:200])
print(json.dumps(outcome))
