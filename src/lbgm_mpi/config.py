"""Typed, frozen run configuration: TOML files plus dotted command-line overrides.

Every section is a frozen dataclass; every field has a comment. Unknown sections or keys, wrong
types and out-of-range values raise ConfigError naming the key. Cross-field rules are checked once,
in ``RunSpec.__post_init__``.
"""

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbgm_mpi.errors import ConfigError


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


# algo.compressor's values: the names lbgm_mpi.compress builds (and "none"), in one place
COMPRESSORS = ("none", "topk", "randomk", "sign", "lowrank", "powersgd")


@dataclass(frozen=True)
class Run:
    seed: int = 0             # master seed: model init, partition, sampling, client streams
    rounds: int = 30          # communication rounds
    eval_every: int = 1       # evaluate the global model on the test set every N rounds
    check_every: int = 10     # compare a hash of theta across ranks every N rounds (0 = never)
    checkpoint_every: int = 0  # write an HDF5 checkpoint every N rounds (0 = only at the end)
    checkpoint_minutes: float = 30.0  # and one when N minutes passed since the last (0 = off)
    keep_checkpoints: int = 2  # how many checkpoints to keep in the run folder
    label: str = ""           # name of the run in tables and plots ("" = derived from algo)
    plots: bool = True        # train and compare end by drawing the run's PNGs (about 1 s)

    def __post_init__(self):
        _check(self.rounds >= 1, "run.rounds", "must be >= 1")
        _check(self.eval_every >= 1, "run.eval_every", "must be >= 1")
        _check(self.check_every >= 0, "run.check_every", "must be >= 0")
        _check(self.checkpoint_every >= 0, "run.checkpoint_every", "must be >= 0")
        _check(math.isfinite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0,
               "run.checkpoint_minutes", f"{self.checkpoint_minutes} must be a number >= 0 "
               "(0 = no checkpoints by time)")
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints", "must be >= 1")
        # the seed travels as a signed 64-bit integer (TOML, torch.manual_seed)
        _check(0 <= self.seed < 2**63, "run.seed", f"{self.seed} is outside 0 .. 2^63 - 1")
        _check(self.label.isprintable(), "run.label", f"{self.label!r} holds a newline or "
               "another control character; use printable characters only")


DATASETS = ("digits", "mnist1d", "synthetic", "mnist", "fmnist", "cifar10", "cifar100",
            "celeba", "hdf5")


@dataclass(frozen=True)
class Data:
    name: str = "digits"          # digits | mnist1d | synthetic (no download); mnist | fmnist | cifar10 | cifar100 | celeba | hdf5 (read from data.root)
    root: str = ""                # folder (or .h5 file for hdf5) holding the standard files
    partition: str = "shards"     # iid | shards (classes_per_client classes each) | dirichlet(alpha)
    classes_per_client: int = 3   # shards: distinct classes per client (the paper uses 3 of 10)
    alpha: float = 0.5            # dirichlet: concentration; smaller is more skewed
    synthetic_samples: int = 2000  # synthetic: number of samples (train + test)
    synthetic_features: int = 20  # synthetic: input dimension
    synthetic_classes: int = 4    # synthetic: number of classes

    def __post_init__(self):
        _one_of(self.name, "data.name", DATASETS)
        _one_of(self.partition, "data.partition", ("iid", "shards", "dirichlet"))
        _check(self.classes_per_client >= 1, "data.classes_per_client", "must be >= 1")
        _check(math.isfinite(self.alpha) and self.alpha > 0, "data.alpha",
               f"{self.alpha} must be a finite number > 0 (smaller is more skewed; try 0.1 to 10)")
        _check(self.synthetic_samples >= 20, "data.synthetic_samples", "must be >= 20")
        _check(self.synthetic_features >= 1, "data.synthetic_features", "must be >= 1")
        _check(self.synthetic_classes >= 2, "data.synthetic_classes", "must be >= 2")
        _check(self.name not in ("mnist", "fmnist", "cifar10", "cifar100", "celeba", "hdf5")
               or bool(self.root), "data.root", f"data.name = {self.name!r} reads its files from "
               "data.root; set it to the folder (or .h5 file) that holds them")


MAX_LOOKBACK = 16

MODELS = ("linear", "mlp", "cnn", "fcn", "lenet", "resnet18", "vgg19")


@dataclass(frozen=True)
class Model:
    name: str = "cnn"   # linear (the paper's FCN) | mlp | cnn (small) | lenet | resnet18 | vgg19
    hidden: int = 64    # mlp: width of the hidden layer; cnn: channels of the second conv

    def __post_init__(self):
        _one_of(self.name, "model.name", MODELS)
        _check(self.hidden >= 1, "model.hidden", "must be >= 1")


@dataclass(frozen=True)
class Clients:
    count: int = 4           # K, number of clients (>= number of MPI ranks)
    per_round: int = 0       # participants drawn per round (0 = all clients)
    update: str = "local"    # local (local_epochs of minibatch SGD) | fedsgd (one full-batch gradient)
    local_epochs: int = 1    # local: epochs over the client's shard per round
    batch_size: int = 32     # local: minibatch size
    lr: float = 0.05         # client learning rate
    placement: str = "cyclic"  # cyclic (client k on rank k mod P) | block (contiguous blocks)

    def __post_init__(self):
        _check(self.count >= 1, "clients.count", "must be >= 1")
        _check(0 <= self.per_round <= self.count, "clients.per_round",
               f"must be between 0 (all) and clients.count = {self.count}")
        _one_of(self.update, "clients.update", ("local", "fedsgd"))
        _check(self.local_epochs >= 1, "clients.local_epochs", "must be >= 1")
        _check(self.batch_size >= 1, "clients.batch_size", "must be >= 1")
        _check(math.isfinite(self.lr) and self.lr > 0, "clients.lr",
               f"{self.lr} must be a finite number > 0")
        _one_of(self.placement, "clients.placement", ("cyclic", "block"))

    @property
    def participants(self) -> int:
        return self.per_round or self.count


@dataclass(frozen=True)
class Algo:
    name: str = "lbgm"        # fedavg (dense Allreduce) | lbgm (look-back gradient multiplier) | fedluar (layer-wise update recycling)
    threshold: float = 0.2    # lbgm: send a scalar iff sin^2(angle(g, b)) <= threshold; 0 = always refresh
    granularity: str = "model"  # lbgm: model (one scalar per client) | layer (per tensor; no compressor)
    compressor: str = "none"  # none | topk | randomk | sign | lowrank | powersgd (runs before LBGM)
    ratio: float = 0.01       # topk / randomk: fraction of each layer's entries kept
    rank: int = 4             # lowrank / powersgd: rank of each matrix-shaped layer
    error_feedback: bool = False  # carry each client's compression residual into its next update
    lookback: int = 1         # lbgm: m, look-back gradients per client (its last m refreshes); m coefficients per scalar send; 1 = the paper's LBGM
    threshold_decay: float = 1.0  # lbgm: the threshold is multiplied by this once per round (1 = constant)
    warmup_rounds: int = 0    # lbgm: rounds at the start in which every client refreshes (threshold 0)
    recycle_layers: int = 1   # fedluar: weight tensors whose last update the server reuses each round instead of receiving them (0 = FedAvg)
    scope: str = "client"     # client (the paper: a look-back per client, refreshes all-gathered) | global (a look-back on the aggregate, Allreduce only: for clusters; with fedavg + powersgd: PowerSGD in its Allreduce form)
    sketch: int = 1024        # global scope: count-sketch buckets per segment for the residual's norm (relative error of |r|^2 at most sqrt(2/sketch) in standard deviation; capped at d/16 values in all)

    def __post_init__(self):
        _one_of(self.name, "algo.name", ("fedavg", "lbgm", "fedluar"))
        _one_of(self.compressor, "algo.compressor", COMPRESSORS)
        _check(0.0 < self.ratio <= 1.0, "algo.ratio", "must be in (0, 1]")
        _check(self.rank >= 1, "algo.rank", "must be >= 1")
        _one_of(self.scope, "algo.scope", ("client", "global"))
        _check(self.sketch >= 1, "algo.sketch", "must be >= 1 (buckets per segment)")
        _check(not (self.error_feedback and self.compressor == "none"
                    and not (self.scope == "global" and self.name == "lbgm")),
               "algo.error_feedback", "needs a compressor (set algo.compressor) or algo.scope = "
               "\"global\" with algo.name = \"lbgm\", or set it to false")
        _check(not (self.scope == "global" and self.compressor not in ("none", "powersgd")),
               "algo.compressor", f"{self.compressor!r} cannot run with algo.scope = \"global\" "
               "(its payloads do not sum across ranks): use \"none\" or \"powersgd\", or set "
               "algo.scope = \"client\"")
        _check(not (self.scope == "global" and self.name == "fedluar"), "algo.scope",
               "\"global\" is for fedavg and lbgm; FedLUAR runs with algo.scope = \"client\"")
        _check(0.0 <= self.threshold <= 1.0, "algo.threshold",
               f"{self.threshold} is outside [0, 1] (it bounds sin^2 of an angle)")
        _one_of(self.granularity, "algo.granularity", ("model", "layer"))
        _check(1 <= self.lookback <= MAX_LOOKBACK, "algo.lookback",
               f"must be between 1 and {MAX_LOOKBACK} (the bank holds m rows per client)")
        _check(0.0 < self.threshold_decay <= 1.0, "algo.threshold_decay",
               f"{self.threshold_decay} is outside (0, 1] (1 keeps the threshold constant)")
        _check(self.warmup_rounds >= 0, "algo.warmup_rounds", "must be >= 0")
        _check(self.recycle_layers >= 0, "algo.recycle_layers", "must be >= 0")
        _check(not (self.name == "fedluar" and self.compressor != "none"), "algo.compressor",
               f"{self.compressor!r} cannot be combined with algo.name = \"fedluar\" (it sends "
               "raw tensors): set algo.compressor = \"none\"")
        _check(not (self.name == "lbgm" and self.compressor != "none"
                    and self.granularity == "layer"), "algo.granularity",
               f"'layer' cannot be stacked on algo.compressor = {self.compressor!r} (a compressor "
               "sends one payload per client): set algo.granularity = \"model\"")


@dataclass(frozen=True)
class Server:
    lr: float = 1.0        # server learning rate applied to the aggregated update
    momentum: float = 0.0  # heavy-ball momentum on the server (the paper's authors use 0.9)

    def __post_init__(self):
        _check(self.lr > 0, "server.lr", "must be > 0")
        _check(0.0 <= self.momentum < 1.0, "server.momentum", "must be in [0, 1)")


@dataclass(frozen=True)
class System:
    threads: int = 1        # torch CPU threads per rank; pinned so results do not depend on P
    device: str = "cpu"     # cpu | cuda | auto (one GPU per rank, chosen from the node-local rank)
    kernels: str = "torch"  # torch | cupy | auto: back end of the projection and aggregation
    bank_dtype: str = "float32"  # float32 | bfloat16: storage of the look-back bank (K x d)
    allow_gpu_sharing: bool = False  # let several ranks of a node share one GPU
    cuda_aware_mpi: str = "auto"  # auto | yes | no: hand device buffers to MPI (else stage on host)
    bank: str = "replicated"  # replicated (a bank per rank, on its device) | shared (one bank per node, in host shared memory)
    max_message_bytes: int = 64 << 20  # most bytes handed to MPI in one call: bigger payloads move in steps (also bounds the step buffers)
    precision: str = "fp32"  # fp32 | tf32 (TensorFloat-32 matmuls on GPUs) | bf16 (bfloat16 autocast in local training)
    topology: str = "replicated"  # replicated (every rank a server replica: refreshes all-gathered, FedAvg by Allreduce) | star (rank 0 is the server: clients send to it alone, it sends the aggregate back; the paper's federated network)
    server: str = "shared"  # star: shared (rank 0 also hosts clients) | dedicated (rank 0 hosts none: the usual federated deployment; needs 2+ ranks)

    def __post_init__(self):
        _check(self.threads >= 1, "system.threads", "must be >= 1")
        _one_of(self.device, "system.device", ("cpu", "cuda", "auto"))
        _one_of(self.kernels, "system.kernels", ("torch", "cupy", "auto"))
        _one_of(self.bank_dtype, "system.bank_dtype", ("float32", "bfloat16"))
        _one_of(self.cuda_aware_mpi, "system.cuda_aware_mpi", ("auto", "yes", "no"))
        _one_of(self.bank, "system.bank", ("replicated", "shared"))
        _check(MIN_MESSAGE_BYTES <= self.max_message_bytes <= 2**31 - 1,
               "system.max_message_bytes", f"must lie in [{MIN_MESSAGE_BYTES}, 2^31 - 1] (MPI "
               "counts are C ints)")
        _one_of(self.precision, "system.precision", ("fp32", "tf32", "bf16"))
        _one_of(self.topology, "system.topology", ("replicated", "star"))
        _one_of(self.server, "system.server", ("shared", "dedicated"))
        _check(not (self.server == "dedicated" and self.topology != "star"), "system.server",
               "\"dedicated\" needs system.topology = \"star\" (replicas have no server rank)")
        _check(not (self.bank == "shared" and self.topology == "star"), "system.bank",
               "\"shared\" cannot run with system.topology = \"star\" (in a star only the "
               "server holds the look-back bank): use \"replicated\"")


MIN_MESSAGE_BYTES = 4096  # below this the steps cost more than they move

SECTIONS = {"run": Run, "data": Data, "model": Model, "clients": Clients, "algo": Algo,
            "server": Server, "system": System}


@dataclass(frozen=True)
class RunSpec:
    """The whole resolved configuration of one run."""

    run: Run = field(default_factory=Run)
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    clients: Clients = field(default_factory=Clients)
    algo: Algo = field(default_factory=Algo)
    server: Server = field(default_factory=Server)
    system: System = field(default_factory=System)

    def __post_init__(self):
        _check(not (self.system.topology == "star" and self.algo.scope == "global"),
               "algo.scope", "\"global\" is the Allreduce design and cannot run with "
               "system.topology = \"star\": use algo.scope = \"client\" in a star, or "
               "system.topology = \"replicated\"")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def label(self) -> str:
        """Name of the run in tables, plots and progress lines (train and compare alike): run.label,
        or one derived from the algorithm and each setting that sets it apart: "fedavg",
        "topk(k=0.01)", "ef-sign", "powersgd(r=4)+lbgm(t=0.2)", "lbgm(t=0.2, m=3, decay=0.9,
        warmup=5)", "lbgm(t=0.2, layer)", "fedluar(r=1)"; algo.scope = "global" adds "global"
        ("lbgm(t=0.2, global)", "ef-powersgd(r=4, global)"), error feedback without a
        compressor "ef" ("lbgm(t=0.2, ef, global)"); system.topology = "star" adds "@star"
        ("fedavg@star")."""
        if self.run.label:
            return self.run.label
        star = getattr(self.system, "topology", "replicated") == "star"
        return self._algo_label() + ("@star" if star else "")

    def _algo_label(self) -> str:
        algo = self.algo
        scope = getattr(algo, "scope", "client")  # the field came with the global scope
        if algo.name == "fedluar":
            return f"fedluar(r={algo.recycle_layers})"
        compressor = ""
        if algo.compressor != "none":
            params = {"topk": [f"k={algo.ratio:g}"], "randomk": [f"k={algo.ratio:g}"],
                      "lowrank": [f"r={algo.rank}"], "powersgd": [f"r={algo.rank}"]}.get(
                          algo.compressor, [])
            params += ["global"] if scope == "global" and algo.name != "lbgm" else []
            compressor = (("ef-" if algo.error_feedback else "") + algo.compressor
                          + (f"({', '.join(params)})" if params else ""))
        if algo.name != "lbgm":
            return compressor or (f"{algo.name}(global)" if scope == "global" else algo.name)
        params = [f"t={algo.threshold:g}"]
        params += [f"m={algo.lookback}"] if algo.lookback != 1 else []
        params += [f"decay={algo.threshold_decay:g}"] if algo.threshold_decay != 1.0 else []
        params += [f"warmup={algo.warmup_rounds}"] if algo.warmup_rounds else []
        params += ["layer"] if algo.granularity == "layer" else []
        params += ["ef"] if algo.error_feedback and algo.compressor == "none" else []
        params += ["global"] if scope == "global" else []
        lbgm = f"lbgm({', '.join(params)})"
        return f"{compressor}+{lbgm}" if compressor else lbgm

    def replace(self, **sections) -> "RunSpec":
        """Return a copy with some sections' fields changed: replace(algo={"name": "fedavg"})."""
        return from_dict(_merge(self.to_dict(), sections))


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def _coerce(value: Any, target_type: type, key: str) -> Any:
    if target_type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, target_type) and not (target_type is int and isinstance(value, bool))
    _check(ok, key, f"expected {target_type.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build_section(name: str, values: Any):
    cls = SECTIONS[name]
    _check(isinstance(values, dict), name, "must be a table of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        _check(key in fields, f"{name}.{key}",
               f"unknown key (known keys of [{name}]: {', '.join(fields)})")
        kwargs[key] = _coerce(value, fields[key].type, f"{name}.{key}")
    return cls(**kwargs)


def from_dict(tree: dict[str, Any]) -> RunSpec:
    """Build a RunSpec from nested dicts; raises ConfigError naming any bad key."""
    for section in tree:
        _check(section in SECTIONS, section,
               f"unknown section (known: {', '.join(SECTIONS)})")
    return RunSpec(**{name: _build_section(name, values) for name, values in tree.items()})


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse 'section.key=value' (value in TOML syntax, or a bare string)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must look like section.key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as fedavg
    return parts[0], parts[1], value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunSpec:
    """Read a TOML file (or start from defaults when path is None) and apply overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            tree = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder; name a .toml file in it "
                              "(e.g. configs/default.toml)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} cannot be read: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        _check(section in SECTIONS, section, f"unknown section in override {text!r} "
               f"(known: {', '.join(SECTIONS)})")
        tree.setdefault(section, {})[key] = value
    return from_dict(tree)


def to_toml(spec: RunSpec) -> str:
    """Render the resolved config as TOML (every key, defaults included)."""
    lines = []
    for section, values in spec.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    return str(value)
