"""What every benchmark writes: one JSON record with the command that produced it and the machine
it ran on (and, where it prints one, the text report beside it), so that a number in
benchmarks/README.md can always be traced back to its run.

    from record import write_record
    write_record("benchmarks/results/x.json", {"results": rows}, text=table)
"""

import json
import os
import platform
import sys
from pathlib import Path


def command() -> str:
    """The command line that is running (``python benchmarks/bench_x.py --opt ...``)."""
    return " ".join(["python", *sys.argv])


def machine() -> dict:
    """The facts about this machine that a benchmark's numbers depend on."""
    facts = {"cpus": os.cpu_count(), "platform": platform.platform(),
             "python": platform.python_version()}
    try:
        import torch
        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return facts


def write_record(path, record: dict, text: str | None = None) -> Path:
    """Write ``record`` as JSON at ``path`` (".json" added when it has no suffix), with
    "command" and "machine" filled in unless the record sets them; with ``text``, write it to the
    same name with ".txt" too. Returns the JSON file's path."""
    path = Path(path)
    out = path if path.suffix == ".json" else path.with_name(path.name + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    full = {"command": command(), **record}
    full.setdefault("machine", machine())
    out.write_text(json.dumps(full, indent=1))
    if text is not None:
        out.with_suffix(".txt").write_text(text if text.endswith("\n") else text + "\n")
    return out
