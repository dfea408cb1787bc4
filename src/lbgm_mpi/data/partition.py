"""Splitting the training set among clients: iid, shards (n classes each), dirichlet(alpha).

Deterministic from (seed, config) alone, so every rank computes the same partition.
"""

import numpy as np

from lbgm_mpi.errors import ConfigError


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag])


def iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Stratified: each class's samples are shuffled and dealt round-robin to the clients."""
    rng = _rng(seed, 1)
    parts = [[] for _ in range(num_clients)]
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for j, i in enumerate(idx):
            parts[(offset + j) % num_clients].append(i)
        offset += len(idx)
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def shards(labels: np.ndarray, num_clients: int, classes_per_client: int,
           seed: int) -> list[np.ndarray]:
    """Each client gets ``classes_per_client`` distinct classes; class usage is balanced and each
    class's samples are split evenly among the clients that hold it."""
    classes = np.unique(labels)
    if classes_per_client > len(classes):
        raise ConfigError(f"data.classes_per_client: {classes_per_client} is more than the "
                          f"{len(classes)} classes of the data set")
    if num_clients * classes_per_client < len(classes):
        raise ConfigError(f"data.classes_per_client: {num_clients} clients x "
                          f"{classes_per_client} classes cannot cover the {len(classes)} classes "
                          "(some would never be trained on); raise clients.count or "
                          "data.classes_per_client")
    rng = _rng(seed, 2)
    order = rng.permutation(classes)
    owned = [[order[(k * classes_per_client + j) % len(classes)]
              for j in range(classes_per_client)] for k in range(num_clients)]
    parts = [[] for _ in range(num_clients)]
    for c in classes:
        holders = [k for k in range(num_clients) if c in owned[k]]
        idx = rng.permutation(np.flatnonzero(labels == c))
        for k, chunk in zip(holders, np.array_split(idx, len(holders)) if holders else []):
            parts[k].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Each class is split among clients in proportions drawn from Dirichlet(alpha)."""
    rng = _rng(seed, 3)
    parts = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients))[:-1] * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def partition(labels: np.ndarray, num_clients: int, data_cfg, seed: int) -> list[np.ndarray]:
    """Indices of each client's training samples; every client gets at least one sample."""
    if data_cfg.partition == "iid":
        parts = iid(labels, num_clients, seed)
    elif data_cfg.partition == "shards":
        parts = shards(labels, num_clients, data_cfg.classes_per_client, seed)
    else:
        parts = dirichlet(labels, num_clients, data_cfg.alpha, seed)
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(f"data.partition: clients {empty[:10]} receive no sample "
                          f"({len(labels)} samples for {num_clients} clients); use fewer clients, "
                          "more classes per client or a larger data.alpha")
    return parts


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int):
    """Per client, the count of each class (a list of lists of ints)."""
    return [np.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
