"""Named methods for ``lbgm-mpi compare``: each is a set of config overrides on the base config."""

METHODS = {
    "fedavg": {"algo": {"name": "fedavg"}},
    "lbgm": {"algo": {"name": "lbgm"}},
}


def method_overrides(method: str) -> dict:
    """Config sections to replace for ``method`` (its label included)."""
    sections = {name: dict(values) for name, values in METHODS[method].items()}
    sections.setdefault("run", {})["label"] = method
    return sections
