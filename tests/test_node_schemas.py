"""The MCM nodes' V3 declarations: documented for users (tooltips, names, category, description, search
aliases), compatible with every saved workflow (same ids, link inputs, widget order and outputs), and
declaration-only (ComfyUI's internals are touched only in nodes/glue/)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODES = ROOT / "nodes"
REQUIRED_ALIASES = {"LCM", "AnimateDiff", "few-step", "consistency"}
#: Widget types and how many values each takes in a saved UI workflow (a seed also stores its control mode).
WIDGETS = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"}


def _ports(schema):
    return [*schema.inputs, *schema.outputs]


def test_every_node_is_documented(mcm_nodes):
    for node_id, cls in mcm_nodes.items():
        schema = cls.define_schema()
        assert node_id.startswith("MCM_") and schema.display_name and schema.display_name != node_id
        assert schema.category == "sampling/MCM"
        description = schema.description
        assert description.endswith(".") and not re.search(r"[.;:]\s+[A-Z]", description), (node_id, description)
        assert set(schema.search_aliases) >= REQUIRED_ALIASES, node_id
        for port in _ports(schema):
            assert port.tooltip and len(port.tooltip) > 10, f"{node_id}.{port.id or port.io_type} has no tooltip"


def test_nodes_still_declare_on_a_comfyui_without_search_aliases(mcm_nodes, comfy_io, monkeypatch):
    fields = [(f.name, f.type, f) for f in dataclasses.fields(comfy_io.Schema) if f.name != "search_aliases"]
    older = dataclasses.make_dataclass("Schema", fields)
    monkeypatch.setattr(comfy_io, "Schema", older)
    for cls in mcm_nodes.values():
        schema = cls.define_schema()
        assert isinstance(schema, older) and not hasattr(schema, "search_aliases")


def _saved_nodes():
    """(workflow file, node) of every MCM node in the shipped UI workflows."""
    for path in sorted((ROOT / "workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"].startswith("MCM_"):
                yield path.name, node


def _widget_values(schema) -> int:
    widgets = [i for i in schema.inputs if i.io_type in WIDGETS]
    return len(widgets) + sum(bool(i.options.get("control_after_generate")) for i in widgets)


def test_every_saved_workflow_finds_its_sockets_and_widgets_where_they_were(mcm_nodes):
    seen = set()
    for name, node in _saved_nodes():
        schema = mcm_nodes[node["type"]].define_schema()
        seen.add(node["type"])
        links = [(i.id, i.io_type) for i in schema.inputs if i.io_type not in WIDGETS]
        saved_links = [(i["name"], i["type"]) for i in node["inputs"] if "widget" not in i]
        assert saved_links == [link for link in links if link in saved_links], (name, node["type"])
        assert [
            i.optional for i in schema.inputs if (i.id, i.io_type) not in saved_links and i.io_type not in WIDGETS
        ] == [True] * (len(links) - len(saved_links)), (name, node["type"])  # only optional sockets may be absent
        outputs = [(o.display_name or o.io_type, o.io_type) for o in schema.outputs]
        assert [(o["name"], o["type"]) for o in node["outputs"]] == outputs, (name, node["type"])
        assert len(node["widgets_values"]) == _widget_values(schema), (name, node["type"])
        for widget, value in zip([i for i in schema.inputs if i.io_type in WIDGETS], _plain_values(node, schema)):
            _check_widget(widget, value, name, node["type"])
    assert seen == set(mcm_nodes) - {"MCM_ModelSampling"}  # the one node no shipped workflow uses


def _plain_values(node, schema):
    """The saved widget values, one per widget (a seed's stored control mode dropped)."""
    values = iter(node["widgets_values"])
    for widget in (i for i in schema.inputs if i.io_type in WIDGETS):
        yield next(values)
        if widget.options.get("control_after_generate"):
            assert next(values) in ("fixed", "increment", "decrement", "randomize")


def _check_widget(widget, value, name, node_type):
    where = f"{name}: {node_type}.{widget.id} = {value!r}"
    opts = widget.options
    if widget.io_type == "COMBO":
        # the adapter and UNet lists are the user's files
        assert widget.id in ("adapter", "unet_name") or value in opts["options"], where
    elif widget.io_type in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and opts["min"] <= value <= opts["max"], where
    elif widget.io_type == "BOOLEAN":
        assert isinstance(value, bool), where


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


COMFY_INTERNALS = {
    "comfy",
    "folder_paths",
    "latent_preview",
    "nodes",
    "comfy_extras",
    "comfy_execution",
    "node_helpers",
}


def test_only_the_glue_touches_comfyuis_internals():
    for path in NODES.rglob("*.py"):
        touched = _imports(path) & COMFY_INTERNALS
        assert path.parent.name == "glue" or not touched, f"{path.relative_to(ROOT)} imports {sorted(touched)}"
        if path.parent.name != "glue":
            assert _imports(path) <= {"__future__", "comfy_api", "dataclasses"}, path.relative_to(ROOT)


@pytest.mark.parametrize("module", ["adapters.py", "sampling.py"])
def test_node_files_only_declare(module):
    tree = ast.parse((NODES / module).read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes
    for cls in classes:
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            assert len(body) == 1 and isinstance(body[0], ast.Return), (
                f"{module}: {cls.name}.{fn.name} does more than declare"
            )
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):  # input factories: one return as well
        assert len(fn.body) == 1 and isinstance(fn.body[0], ast.Return), f"{module}: {fn.name}"


def test_no_two_classes_share_a_name():
    names = {}
    for path in sorted(NODES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert {n: where for n, where in names.items() if len(where) > 1} == {}
