"""Hosts joined by real bandwidth-limited links on one machine: network namespaces on a bridge.

Host K is the network namespace PREFIX-hK. A veth pair joins it to the bridge PREFIX-br in the
root namespace: PREFIX-vK on the bridge side, PREFIX-pK inside the host, which holds the host's
only address, SUBNET.(K+1)/24. No address is ever given to the root namespace. Both ends of every
veth carry a `tc tbf` qdisc at the link rate, so each host has an uplink and a downlink of that
rate into a switch that is never the bottleneck: a star of full-duplex links.

The kernel of this machine kind has no netem, so the links add no delay beyond the veth's own
(tens of microseconds); only their bandwidth is limited.

``Hosts`` creates all of it and removes all of it when it ends, fails or is interrupted
(SIGINT, SIGTERM, SIGHUP). A file lock keeps two runs off the same prefix, and each run first
removes what a crashed run with the same prefix left behind. As a command (root), it runs one
MPI job on fresh hosts:

    python benchmarks/links/netns.py --hosts 4 --rate 100mbit [--mca KEY VALUE ...] -- COMMAND
"""

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SBIN = os.pathsep.join(["/usr/sbin", "/sbin", os.environ.get("PATH", "")])
AGENT = Path(__file__).resolve().parent / "agent.sh"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(k|m|g)?bit$")


class LinkError(RuntimeError):
    """A namespace, link or qdisc could not be created (the message says which command)."""


def rate_bits(rate: str) -> float:
    """Bits per second of a tc rate such as "100mbit", "1gbit" or "10mbit"."""
    match = _RATE.match(rate.lower())
    if not match:
        raise ValueError(f"rate {rate!r}: write it as tc does, e.g. 10mbit, 100mbit, 1gbit")
    scale = {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]
    return float(match.group(1)) * scale


def _tool(name: str) -> str:
    path = shutil.which(name, path=SBIN)
    if path is None:
        raise LinkError(f"no `{name}` command (looked in {SBIN}): install iproute2")
    return path


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run an ip/tc command; raise LinkError with its message if it fails and ``check``."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LinkError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done


def probe(prefix: str) -> str | None:
    """Why namespaces cannot be created here (None if they can): tries one and removes it."""
    if os.geteuid() != 0:
        return "not root: creating network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    try:
        ip, tc = _tool("ip"), _tool("tc")
        name = f"{prefix}-probe"
        _run(ip, "netns", "del", name, check=False)
        _run(ip, "netns", "add", name)
        try:
            _run(ip, "-n", name, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1")
            _run(tc, "-n", name, "qdisc", "add", "dev", "pv0", "root", "tbf", "rate", "10mbit",
                 "burst", "32kb", "latency", "50ms")
        finally:
            _run(ip, "netns", "del", name, check=False)
    except LinkError as exc:
        return str(exc)
    return None


def namespaces(prefix: str) -> list[str]:
    """The network namespaces named PREFIX-* that exist now."""
    out = _run(_tool("ip"), "netns", "list").stdout.split()
    return [w for w in out if w.startswith(f"{prefix}-")]


def _links(prefix: str) -> list[str]:
    """Root-namespace interfaces named PREFIX-* (bridge, veth ends)."""
    out = _run(_tool("ip"), "-o", "link", "show").stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(f"{prefix}-")]


def namespace_pids(namespaces: list[str]) -> set[int]:
    """The processes living in ``namespaces`` (PRRTE's daemons leave mpirun's process group, so
    a process group does not find them all; their network namespace does)."""
    ip = _tool("ip")
    return {int(p) for ns in namespaces
            for p in _run(ip, "netns", "pids", ns, check=False).stdout.split()}


def _stop_processes(namespaces: list[str], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, every process living in ``namespaces``.

    Only processes inside our own namespaces are touched: this run (or a crashed run of the same
    prefix, which the lock says is gone) started them all."""
    pids = lambda: namespace_pids(namespaces) - {os.getpid()}
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        alive = pids()
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = pids()


def remove(prefix: str) -> list[str]:
    """Remove everything named PREFIX-*: processes in its namespaces, the veth pairs, the
    namespaces, the bridge (their qdiscs go with them). Idempotent; returns what it removed."""
    ip = _tool("ip")
    spaces = namespaces(prefix)
    _stop_processes(spaces)
    links = _links(prefix)
    # deleting the root-side veth end removes the pair at once; a namespace's own teardown is
    # asynchronous, and would leave the bridge-side end alive for a moment
    for link in sorted(links, key=lambda n: n.endswith("-br")):
        _run(ip, "link", "del", link, check=False)
    for ns in spaces:
        _run(ip, "netns", "del", ns, check=False)
    return spaces + links


def leftovers(prefix: str) -> list[str]:
    """Namespaces and root-namespace interfaces named PREFIX-* that exist now."""
    return namespaces(prefix) + _links(prefix)


class Hosts:
    """``count`` namespace hosts on a bridge, every link shaped to ``rate`` (a tc rate)."""

    def __init__(self, count: int, rate: str, prefix: str = "lkb", subnet: str = "10.77.0"):
        if not 1 <= count <= 250:
            raise ValueError(f"hosts: {count} is not in 1..250")
        if len(f"{prefix}-v{count - 1}") > 15:
            raise ValueError(f"prefix {prefix!r}: interface names would exceed 15 characters")
        self.count, self.rate, self.prefix, self.subnet = count, rate, prefix, subnet
        self.rate_bits = rate_bits(rate)
        self.names = [f"{prefix}-h{k}" for k in range(count)]
        self._lock = None
        self._old_handlers = {}

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def __enter__(self) -> "Hosts":
        self._take_lock()
        self._trap_signals()
        try:
            stale = remove(self.prefix)
            if stale:
                print(f"removed leftovers of an earlier run: {' '.join(stale)}", file=sys.stderr)
            self._create()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            remove(self.prefix)
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            if self._lock is not None:
                self._lock.close()

    def _take_lock(self) -> None:
        path = Path(tempfile.gettempdir()) / f"lbgm-links-{self.prefix}.lock"
        self._lock = open(path, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise LinkError(f"another run holds {path}: it is using the prefix {self.prefix!r}")

    def _trap_signals(self) -> None:
        """Turn SIGTERM and SIGHUP into SystemExit (SIGINT already raises KeyboardInterrupt), so
        that the ``with`` block unwinds and removes the hosts."""
        def stop(signum, frame):
            raise SystemExit(128 + signum)
        for sig in SIGNALS:
            self._old_handlers[sig] = signal.getsignal(sig)
            if sig != signal.SIGINT:
                signal.signal(sig, stop)

    def _create(self) -> None:
        ip = _tool("ip")
        bridge = f"{self.prefix}-br"
        _run(ip, "link", "add", bridge, "type", "bridge")
        _run(ip, "link", "set", bridge, "up")
        for k, ns in enumerate(self.names):
            outer, inner = f"{self.prefix}-v{k}", f"{self.prefix}-p{k}"
            _run(ip, "netns", "add", ns)
            _run(ip, "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run(ip, "link", "set", inner, "netns", ns)
            _run(ip, "link", "set", outer, "master", bridge, "up")
            _run(ip, "-n", ns, "link", "set", "lo", "up")
            _run(ip, "-n", ns, "addr", "add", f"{self.subnet}.{k + 1}/24", "dev", inner)
            _run(ip, "-n", ns, "link", "set", inner, "up")
        self.shape(self.rate)

    def shape(self, rate: str) -> None:
        """Set every link, both directions, to ``rate`` (a tc rate); links may carry traffic."""
        tc, bits = _tool("tc"), rate_bits(rate)
        # tbf's bucket must hold more than a timer tick of traffic: 32 kB (as measured to give
        # 95.7 Mbit/s at 100 Mbit/s), or 2 ms of traffic at faster rates
        burst = f"{max(32, int(bits / 8 * 0.002 / 1024))}kb"
        tbf = ("root", "tbf", "rate", rate, "burst", burst, "latency", "50ms")
        for k, ns in enumerate(self.names):
            _run(tc, "qdisc", "replace", "dev", f"{self.prefix}-v{k}", *tbf)
            _run(tc, "-n", ns, "qdisc", "replace", "dev", f"{self.prefix}-p{k}", *tbf)
        self.rate, self.rate_bits = rate, bits

    def mpirun(self, np_: int, argv: list[str], hostfile: Path, mca: list[str]) -> list[str]:
        """The command that runs ``argv`` as ``np_`` ranks, one per host h0..h(np_-1), over TCP
        on the shaped links. mpirun itself runs inside h0; ``hostfile`` is written here.

        Needs PRTE_MCA_plm_ssh_agent=AGENT in the environment (see ``mpi_env``)."""
        if not 1 <= np_ <= self.count:
            raise ValueError(f"{np_} ranks on {self.count} hosts")
        hostfile.write_text("".join(f"{name} slots=1\n" for name in self.names[:np_]))
        mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep
                              + os.environ.get("PATH", ""))
        if mpirun is None:
            raise LinkError("no mpirun next to the Python interpreter or on the PATH")
        # every namespace sees the same host name unless it gets its own UTS namespace, and
        # PRRTE tells nodes apart by name; --bind-to none, since each "node" thinks it owns
        # core 0
        return [_tool("ip"), "netns", "exec", self.names[0], "unshare", "--uts", "sh", "-c",
                f'hostname {self.names[0]} && exec "$@"', "sh",
                mpirun, "-n", str(np_), "--hostfile", str(hostfile), "--bind-to", "none",
                "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", self.cidr,
                "--prtemca", "oob_tcp_if_include", self.cidr,
                "--mca", "mpi_yield_when_idle", "1", *mca, *argv]


def mpi_env(extra: dict | None = None) -> dict:
    """The environment for ``Hosts.mpirun``: PRRTE starts remote daemons through AGENT."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PRTE_MCA_plm_ssh_agent=str(AGENT), OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


def main() -> int:
    """Run one command as MPI ranks on fresh shaped hosts, then remove them."""
    import argparse
    p = argparse.ArgumentParser(description="Run COMMAND as MPI ranks, one per network-namespace "
                                "host, over links shaped by tc tbf; remove the hosts after.")
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--ranks", type=int, default=None, help="default: one per host")
    p.add_argument("--rate", default="100mbit", help="tc rate of every link, each way")
    p.add_argument("--prefix", default="lkb")
    p.add_argument("--subnet", default="10.77.0")
    p.add_argument("--mca", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="an Open MPI MCA setting for mpirun (repeatable)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no COMMAND after --")
    mca = [a for key, value in args.mca for a in ("--mca", key, value)]
    with tempfile.TemporaryDirectory() as tmp, \
            Hosts(args.hosts, args.rate, args.prefix, args.subnet) as hosts:
        cmd = hosts.mpirun(args.ranks or args.hosts, command, Path(tmp) / "hostfile", mca)
        return subprocess.run(cmd, env=mpi_env()).returncode


if __name__ == "__main__":
    sys.exit(main())
