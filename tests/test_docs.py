"""The documentation against what it documents: every measured table equals what its results JSON
renders (benchmarks/render_tables.py), every relative link and anchor resolves, and the config
reference lists every key of lbgm_mpi.config with its default."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from lbgm_mpi import config

REPO = Path(__file__).resolve().parents[1]
# guides other changes add; a link to them is allowed while the file does not exist yet
PENDING = {REPO / "docs" / "global-scope.md", REPO / "docs" / "ddp.md"}


def _renderer():
    spec = importlib.util.spec_from_file_location("render_tables",
                                                  REPO / "benchmarks" / "render_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_tables = _renderer()
DOCS = render_tables.doc_files(REPO)
REGIONS = [(path, name, content) for path in DOCS if path.exists()
           for name, content in render_tables.regions(path.read_text())]


def test_the_documents_exist():
    missing = [str(p.relative_to(REPO)) for p in DOCS if not p.exists()]
    assert not missing, f"missing: {missing}"
    assert len(REGIONS) >= len(render_tables.TABLES), "some tables are placed nowhere"


@pytest.mark.parametrize("path,name,content", REGIONS,
                         ids=[f"{p.relative_to(REPO)}:{n}" for p, n, _ in REGIONS])
def test_a_marked_table_equals_what_its_json_renders(path, name, content):
    assert name in render_tables.TABLES, f"{path.name}: unknown table {name!r}"
    assert content.strip() == render_tables.render(name).strip(), (
        f"{path.relative_to(REPO)}: table {name!r} differs from its JSON; run "
        "python benchmarks/render_tables.py --write")


def test_the_check_mode_names_a_table_that_differs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "benchmarks").mkdir()
    good = render_tables.render("rounds")
    (tmp_path / "README.md").write_text(f"<!-- table: rounds -->\n{good}\n<!-- /table -->\n")
    stale = good.replace("93.04%", "90.00%", 1)
    (tmp_path / "docs" / "a.md").write_text(f"x\n<!-- table: checkpoint -->\n| old |\n"
                                           f"<!-- /table -->\n<!-- table: rounds -->\n{stale}\n"
                                           "<!-- /table -->\n")
    (tmp_path / "benchmarks" / "README.md").write_text("<!-- table: nosuch -->\n<!-- /table -->\n")
    found = render_tables.problems(tmp_path)
    assert len(found) == 3 and "'checkpoint'" in found[0] and "'rounds'" in found[1] \
        and "'nosuch'" in found[2], found
    fixed = render_tables.rewrite((tmp_path / "docs" / "a.md").read_text())
    assert render_tables.regions(fixed) == [("checkpoint", render_tables.render("checkpoint") + "\n"),
                                            ("rounds", good + "\n")]


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code, where links are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", text, re.M)}


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _links(path: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(path.read_text()))]


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_relative_link_resolves(path):
    bad = []
    for link in _links(path):
        if re.match(r"[a-z]+:", link):
            continue  # http:, https:, mailto:
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists():
            if resolved not in PENDING:
                bad.append(f"{link} (no such file)")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            bad.append(f"{link} (no heading with that anchor)")
    assert not bad, f"{path.relative_to(REPO)}: {bad}"


def test_the_config_reference_lists_every_key_with_its_default():
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| `([^`]*)`", text, re.M))
    problems = []
    for section, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            default = config._toml_value(f.default)
            if key not in rows:
                problems.append(f"{key} is missing")
            elif rows[key] != default:
                problems.append(f"{key}: documented default {rows[key]}, config.py has {default}")
    extra = set(rows) - {f"{s}.{f.name}" for s, c in config.SECTIONS.items()
                         for f in dataclasses.fields(c)}
    problems += [f"{key} is documented but not in config.py" for key in sorted(extra)]
    assert not problems, problems
