"""Client partitions: deterministic, disjoint, complete, with the promised class structure."""

import numpy as np
import pytest

from lbgm_mpi.config import Data
from lbgm_mpi.data.partition import label_histograms, partition
from lbgm_mpi.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 10, 2000)


@pytest.mark.parametrize("cfg", [Data(partition="iid"), Data(partition="shards"),
                                 Data(partition="dirichlet", alpha=0.3)])
def test_disjoint_complete_deterministic(cfg):
    parts = partition(LABELS, 10, cfg, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)
    again = partition(LABELS, 10, cfg, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 10, cfg, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_shards_give_exactly_n_distinct_classes():
    parts = partition(LABELS, 7, Data(partition="shards", classes_per_client=3), seed=0)
    hist = label_histograms(LABELS, parts, 10)
    assert all(sum(1 for c in h if c) == 3 for h in hist)


def test_iid_is_stratified():
    parts = partition(LABELS, 4, Data(partition="iid"), seed=0)
    hist = np.array(label_histograms(LABELS, parts, 10))
    assert (hist.max(axis=0) - hist.min(axis=0)).max() <= 1


def test_too_many_classes_per_client_is_a_config_error():
    with pytest.raises(ConfigError, match="data.classes_per_client"):
        partition(LABELS, 4, Data(partition="shards", classes_per_client=11), seed=0)


def test_empty_client_is_a_config_error():
    with pytest.raises(ConfigError, match="receive no sample"):
        partition(LABELS[:5], 10, Data(partition="iid"), seed=0)


def test_shards_that_cannot_cover_every_class_are_refused():
    with pytest.raises(ConfigError, match="cannot cover"):
        partition(LABELS, 2, Data(partition="shards", classes_per_client=3), seed=0)
