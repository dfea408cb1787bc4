"""HDF5 checkpoints: an atomic store of named arrays (store.py) and the trainer's state (state.py)."""
