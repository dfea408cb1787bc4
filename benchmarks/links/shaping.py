"""Per-direction link shaping for namespace hosts (benchmarks/links/netns.py): a server host and
client hosts whose uplink and downlink differ, as on a federated network.

Each host's veth pair has two ends, each shaped by a `tc tbf` qdisc on what it sends:

  - the end inside host K's namespace (PREFIX-pK) sends what host K sends: its UPLINK;
  - the bridge-side end (PREFIX-vK) sends what reaches host K: its DOWNLINK.

``Split`` names the rates: host 0 (the server; mpirun starts there, rank 0 runs there) at
``server`` both ways, every other host at ``up`` / ``down``. ``SplitHosts`` applies them; its
``shape(rate)`` still sets every link to one rate both ways (the collective timings of the cost
model are taken on symmetric links), and ``restore()`` puts the split back.
"""

from dataclasses import dataclass

import netns


@dataclass(frozen=True)
class Split:
    """Link rates as tc writes them: the server host's (both ways) and every client host's."""

    server: str
    up: str
    down: str

    def __post_init__(self):
        for rate in (self.server, self.up, self.down):
            netns.rate_bits(rate)  # raises on a rate tc would not read

    def rates(self, host: int) -> tuple[str, str]:
        """(uplink, downlink) of host ``host``."""
        return (self.server, self.server) if host == 0 else (self.up, self.down)

    @property
    def slowest_bits(self) -> float:
        """Bits per second of the slowest direction of any link (what paces a ring)."""
        return min(netns.rate_bits(r) for r in (self.server, self.up, self.down))

    def describe(self) -> str:
        return (f"server host h0 {self.server} both ways; client hosts {self.up} up / "
                f"{self.down} down")


def tbf(rate: str) -> tuple[str, ...]:
    """The root tbf qdisc of one link end at ``rate``: a 32 kB bucket (measured to give 95.7
    Mbit/s at 100 Mbit/s), or 2 ms of traffic at rates where that is more (netns.Hosts.shape)."""
    burst = f"{max(32, int(netns.rate_bits(rate) / 8 * 0.002 / 1024))}kb"
    return ("root", "tbf", "rate", rate, "burst", burst, "latency", "50ms")


class SplitHosts(netns.Hosts):
    """``netns.Hosts`` whose links are shaped per direction by ``split`` once created."""

    def __init__(self, count: int, split: Split, prefix: str = "lkb", subnet: str = "10.77.0"):
        super().__init__(count, split.server, prefix, subnet)
        self.split = split

    def _create(self) -> None:
        super()._create()  # every link at split.server, then the split
        self.restore()

    def restore(self) -> None:
        """Shape every link per direction (``split``); links may carry traffic."""
        tc = netns._tool("tc")
        for k, ns in enumerate(self.names):
            up, down = self.split.rates(k)
            netns._run(tc, "-n", ns, "qdisc", "replace", "dev", f"{self.prefix}-p{k}", *tbf(up))
            netns._run(tc, "qdisc", "replace", "dev", f"{self.prefix}-v{k}", *tbf(down))
        self.rate, self.rate_bits = self.split.server, netns.rate_bits(self.split.server)

    def qdiscs(self) -> dict[str, str]:
        """What tc reports for every link end ("hK up" / "hK down"), to record what was run."""
        tc = netns._tool("tc")
        out = {}
        for k, ns in enumerate(self.names):
            for side, argv in (("up", ["-n", ns, "qdisc", "show", "dev", f"{self.prefix}-p{k}"]),
                               ("down", ["qdisc", "show", "dev", f"{self.prefix}-v{k}"])):
                out[f"h{k} {side}"] = netns._run(tc, *argv).stdout.strip()
        return out
