"""Named methods for ``lbgm-mpi compare``: each is a set of config overrides on the base config.

A method names everything that makes it what it is (algorithm, compressor, error feedback), so a
base config that sets a compressor does not leak into "fedavg" or "lbgm". Compressor settings
(algo.ratio, algo.rank) and LBGM's threshold come from the base config, shared by all methods.
Plain compressors run FedAvg on the compressed updates; "+lbgm" stacks LBGM on the compressor
(one look-back coefficient per client: granularity "model"). Any method followed by "@star"
runs in the star topology (system.topology = "star": rank 0 is the server), so that one compare
puts, say, "fedavg" (Allreduce) and "fedavg@star" side by side; without it a method runs in the
base config's topology.
"""

from lbgm_mpi.config import COMPRESSORS

STAR = "@star"


def _method(name: str, compressor: str = "none", error_feedback: bool = False,
            scope: str = "client") -> dict:
    algo = {"name": name, "compressor": compressor, "error_feedback": error_feedback,
            "scope": scope}
    if name == "lbgm" and compressor != "none":
        algo["granularity"] = "model"
    return {"algo": algo}


METHODS = {
    "fedavg": _method("fedavg"),
    "lbgm": _method("lbgm"),
    **{label: _method(name, compressor)
       for compressor in COMPRESSORS[1:]
       for label, name in ((compressor, "fedavg"), (f"{compressor}+lbgm", "lbgm"))},
    "ef-sign": _method("fedavg", "sign", error_feedback=True),
    # benchmarks/bench_links.py: LBGM at a named granularity; PowerSGD with error feedback,
    # alone and under LBGM
    **{f"lbgm-{granularity}": {"algo": {"name": "lbgm", "compressor": "none",
                                        "error_feedback": False, "granularity": granularity,
                                        "scope": "client"}}
       for granularity in ("model", "layer")},
    "ef-powersgd": _method("fedavg", "powersgd", error_feedback=True),
    "ef-powersgd+lbgm": _method("lbgm", "powersgd", error_feedback=True),
}

# LBGM variants (README, "LBGM variants and FedLUAR"): m look-back gradients per client and a
# threshold multiplied by DECAY each round, from the base config's threshold; and FedLUAR, which
# takes algo.recycle_layers from the base config.
DECAY = 0.97


def _variant(lookback: int, decay: float) -> dict:
    return {"algo": {**_method("lbgm")["algo"], "lookback": lookback, "threshold_decay": decay}}


METHODS.update({"lbgm-m2": _variant(2, 1.0), "lbgm-m3": _variant(3, 1.0),
                "lbgm-decay": _variant(1, DECAY), "lbgm-m3-decay": _variant(3, DECAY),
                "fedluar": _method("fedluar")})


def known_method(method: str) -> bool:
    """Whether ``method`` names a method (a name of METHODS, optionally with "@star")."""
    return method.removesuffix(STAR) in METHODS


def method_overrides(method: str) -> dict:
    """Config sections to replace for ``method`` (its label included)."""
    base = method.removesuffix(STAR)
    sections = {name: dict(values) for name, values in METHODS[base].items()}
    sections.setdefault("run", {})["label"] = method
    if base != method:
        sections.setdefault("system", {})["topology"] = "star"
    return sections

# LBGM on the aggregate, for Allreduce clusters (docs/global-scope.md): the base config's m
# and threshold, or m named; PowerSGD in its Allreduce form (error feedback per rank, as its
# authors run it), alone and refreshing global LBGM's dense rounds.
_GLOBAL = {"name": "lbgm", "compressor": "none", "error_feedback": False, "scope": "global",
           "granularity": "model"}
METHODS.update({
    "lbgm-global": {"algo": dict(_GLOBAL)},
    **{f"lbgm-global-m{m}": {"algo": {**_GLOBAL, "lookback": m}} for m in (1, 3, 10)},
    "allreduce-powersgd": _method("fedavg", "powersgd", error_feedback=True, scope="global"),
    "allreduce-powersgd+lbgm-global": {"algo": {**_GLOBAL, "compressor": "powersgd",
                                                "error_feedback": True}},
})
