"""Write checkpoint round 1, then start round 2 and kill -9 the process just before the rename."""

import os
import signal
import sys
from pathlib import Path

import numpy as np

from lbgm_mpi.checkpoint.store import checkpoint_path, write_checkpoint

folder = Path(sys.argv[1])
arrays = {"theta": np.arange(1000, dtype=np.float32)}
write_checkpoint(checkpoint_path(folder, 1), arrays, {"round": 1})
big = {"theta": np.ones(3_000_000, dtype=np.float32)}
write_checkpoint(checkpoint_path(folder, 2), big, {"round": 2},
                 before_rename=lambda tmp: os.kill(os.getpid(), signal.SIGKILL))
