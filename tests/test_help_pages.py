"""The nodes' help pages (web/docs/<node id>.md), which ComfyUI's frontend fetches from the package's
WEB_DIRECTORY: one per node, naming every input and output exactly as the node declares it (the schemas
come from the node declarations against tests/comfy_api_stub.py). tests/test_browser.py checks that a real
server serves them and that the frontend shows them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.real_host import ALL_NODES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([A-Z_]+)\s*\|")


def _section(text: str, title: str) -> list[str]:
    """The lines under ``## title`` up to the next ``## `` heading."""
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _table(text: str, title: str) -> list[tuple[str, str]]:
    """(name, type) of each row of the table under ``## title``."""
    return [m.groups() for m in map(ROW.match, _section(text, title)) if m]


def test_web_directory_is_the_folder_holding_the_pages(package):
    assert (ROOT / package.WEB_DIRECTORY).resolve() == ROOT / "web"
    assert "WEB_DIRECTORY" in package.__all__


def test_every_node_has_a_page_and_every_page_a_node(package, mcm_nodes):
    assert sorted(package.NODE_IDS) == sorted(mcm_nodes)
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(mcm_nodes)
    assert [p.name for p in DOCS.iterdir() if p.suffix != ".md"] == []  # no locale folders to fall out of date


@pytest.mark.parametrize("node_id", ALL_NODES)
def test_a_page_names_every_input_and_output_exactly(mcm_nodes, node_id):
    schema = mcm_nodes[node_id].define_schema()
    text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# {schema.display_name}"
    assert 30 <= len(text.splitlines()) <= 80, f"{node_id}.md has {len(text.splitlines())} lines"
    assert _table(text, "Inputs") == [(i.id, i.io_type) for i in schema.inputs]
    # an output's name in the UI: its display name, else its type (what the frontend and saved workflows show)
    assert _table(text, "Outputs") == [(o.display_name or o.io_type, o.io_type) for o in schema.outputs]
    if not schema.inputs:
        assert "no inputs" in " ".join(_section(text, "Inputs"))


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_a_page_names_only_shipped_workflows_and_real_node_ids(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    assert "## In a graph" in text and "→" in "".join(_section(text, "In a graph"))
    named = set(re.findall(r"\b(mcm_\w+)\.json", text))
    assert named, f"{page} names no shipped workflow"
    assert named <= {p.stem for p in (ROOT / "workflows").glob("*.json")}, page
    assert not re.search(r"\]\((?!https?://)[^)]*\)", text), f"{page}: a relative link would not resolve in the UI"
