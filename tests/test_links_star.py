"""The star form of the slow-link benchmark (benchmarks/bench_links.py --topology star) and its
pieces: split links (benchmarks/links/shaping.py), method specs NAME@star, and the star's round
model (benchmarks/links/starmodel.py).

- pure pieces, anywhere: the phases of the model against hand-computed seconds, its limits (no
  refresh, every refresh, the break-even refresh fraction), the placement of clients, the
  benchmark's arguments;
- as root, where network namespaces can be created (else skipped, saying why): split hosts
  carry a tbf qdisc at the right rate on each end of each link, and leave nothing behind.
"""

import importlib.util
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "links"))
import netns  # noqa: E402
import shaping  # noqa: E402
import starmodel  # noqa: E402

PREFIX = "lks"
SUBNET = "10.79.0"
# one fitted parameter set for the Allgatherv, whose values the star's phases take
PARAMS = {"allgatherv": {"alpha": 1e-3, "b0": 2e-10, "c": 9.0},
          "allreduce": {"alpha": 1e-3, "b0": 2e-9, "c": 10.0}}
LINKS = starmodel.Links(server=1e9, up=2e7, down=1e8)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_links", REPO / "benchmarks" /
                                                  "bench_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_rates_per_host():
    split = shaping.Split("1gbit", "20mbit", "100mbit")
    assert split.rates(0) == ("1gbit", "1gbit")
    assert split.rates(3) == ("20mbit", "100mbit")
    assert split.slowest_bits == 2e7
    assert shaping.tbf("20mbit")[:6] == ("root", "tbf", "rate", "20mbit", "burst", "32kb")
    assert shaping.tbf("1gbit")[5] == "244kb"  # 2 ms of traffic
    with pytest.raises(ValueError, match="10mbit"):
        shaping.Split("1gbit", "20 Mb/s", "100mbit")


def test_gather_and_send_take_the_busiest_link():
    mb = 1e6
    p = PARAMS["allgatherv"]
    # three client ranks send 4 MB each: each uplink carries 4 MB at 20 Mbit/s (the server's
    # 12 MB at 1 Gbit/s is faster)
    want = p["alpha"] + p["b0"] * 12 * mb + p["c"] * 4 * mb / 2e7
    assert starmodel.gather(PARAMS, [4 * mb] * 3, LINKS) == pytest.approx(want)
    # 255 client ranks: the server's downlink (1020 MB at 1 Gbit/s) is now the slower
    want = p["alpha"] + p["b0"] * 1020 * mb + p["c"] * 1020 * mb / 1e9
    assert starmodel.gather(PARAMS, [4 * mb] * 255, LINKS) == pytest.approx(want)
    # the root sends 4 MB to 3 client ranks at once: each downlink carries 4 MB
    want = p["alpha"] + p["b0"] * 12 * mb + p["c"] * 4 * mb / 1e8
    assert starmodel.send_all(PARAMS, 3, 4 * mb, LINKS) == pytest.approx(want)
    assert starmodel.gather(PARAMS, [0, 0], LINKS) == pytest.approx(p["alpha"])


def test_star_round_limits():
    d = 1_000_000
    fed = {"kind": "star-allreduce", "bytes": 4 * (d + 1)}
    lbgm = {"kind": "star-gather", "record": 21, "payload": 4 * d, "down": 4 * d,
            "refresh": 0.0, "refresh_all": 0.0}
    fed_s = starmodel.star_round(PARAMS, fed, 4, LINKS)
    scalar_s = starmodel.star_round(PARAMS, lbgm, 4, LINKS)
    every_s = starmodel.star_round(PARAMS, {**lbgm, "refresh": 1.0}, 4, LINKS)
    # no refresh: the records and the aggregate's way down; every refresh: FedAvg's round plus
    # the records' and the figures' latency
    assert scalar_s < fed_s < every_s
    assert every_s - fed_s == pytest.approx(2 * PARAMS["allgatherv"]["alpha"], rel=0.05)
    bench = _bench()
    f = bench.star_break_even(PARAMS, lbgm, fed, 4, LINKS)
    assert 0 < f < 1
    assert starmodel.star_round(PARAMS, {**lbgm, "refresh": f}, 4, LINKS) == \
        pytest.approx(fed_s, rel=1e-6)
    # a ring on split links runs at the slowest direction
    ring = {"kind": "allreduce", "bytes": 4 * (d + 1)}
    import costmodel
    assert starmodel.round_comm(PARAMS, ring, 4, LINKS) == \
        pytest.approx(costmodel.seconds(PARAMS, "allreduce", 4, [4 * (d + 1)], 2e7))


def test_server_work_scales_with_the_clients_not_the_measured_ranks():
    alone = {"train_s": 0.5, "eval_s": 0.25}
    # measured: 16 clients on 4 ranks, 0.1 s a round of bank and aggregate work
    prof = {"ranks": 4, "clients": 16, "other_s": 0.2, "scaled_s": 0.1}
    assert starmodel.local_s(prof, alone, 16) == pytest.approx(0.95)   # 16 clients, as measured
    assert starmodel.local_s(prof, alone, 64) == pytest.approx(1.25)   # 4x the clients
    assert starmodel.local_s({**prof, "clients": None}, alone, 16) == pytest.approx(1.25)


def test_placement_follows_the_trainer():
    from lbgm_mpi.topology import place_clients
    for count, ranks, placement in ((16, 4, "cyclic"), (10, 4, "block"), (5, 2, "cyclic")):
        assert starmodel.hosts(count, ranks, placement, "shared") == \
            list(place_clients(count, ranks, placement))
    assert starmodel.hosts(6, 4, "cyclic", "dedicated") == [1, 2, 3, 1, 2, 3]
    assert starmodel.hosts(7, 3, "block", "dedicated") == [1, 1, 1, 1, 2, 2, 2]


def test_star_arguments_and_method_specs():
    bench = _bench()
    args = bench.parse_args(["--topology", "star"])
    assert (args.split.server, args.split.up, args.split.down) == ("1gbit", "20mbit", "100mbit")
    assert args.methods == bench.STAR_METHODS and args.out == "benchmarks/results/links-star"
    assert args.config == bench.STAR_CONFIG == "benchmarks/links/star.toml"
    assert bench.reference_method(args.methods.split(",")) == "fedavg@star"
    assert bench.method_spec("topk+lbgm@star") == ("topk+lbgm", "star")
    assert bench.method_spec("lbgm-global-m10") == ("lbgm-global-m10", "replicated")
    args = bench.parse_args(["--topology", "star", "--server", "dedicated", "--uplink", "10mbit"])
    assert bench.topology_sets(args, "fedavg@star") == ["system.topology=star",
                                                        "system.server=dedicated"]
    assert bench.topology_sets(args, "fedavg") == []
    assert args.split.up == "10mbit"
    plain = bench.parse_args([])  # the symmetric benchmark, as before
    assert plain.split is None and plain.rate == "100mbit"
    assert plain.methods == bench.METHODS and plain.out == "benchmarks/results/links-100mbit"
    assert plain.config == "configs/links-10m.toml"
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "fedavg@ring"])


def test_split_hosts_shape_each_direction():
    reason = netns.probe(PREFIX)
    if reason:
        pytest.skip(f"network namespaces cannot be created here: {reason}")
    split = shaping.Split("1gbit", "20mbit", "100mbit")
    with shaping.SplitHosts(2, split, PREFIX, SUBNET) as hosts:
        shown = hosts.qdiscs()
        hosts.shape("10mbit")  # the symmetric shaping of the collective timings
        symmetric = hosts.qdiscs()
        hosts.restore()
        again = hosts.qdiscs()
    rates = lambda qdiscs: {end: q.split(" rate ")[1].split()[0] for end, q in qdiscs.items()}
    assert rates(shown) == {"h0 up": "1Gbit", "h0 down": "1Gbit", "h1 up": "20Mbit",
                            "h1 down": "100Mbit"}
    assert set(rates(symmetric).values()) == {"10Mbit"}
    assert rates(again) == rates(shown)
    assert netns.leftovers(PREFIX) == []
