"""The MCM nodes as a real ComfyUI lists them (``/object_info``), against what the V1 nodes listed.

Set COMFYUI_DIR (and COMFYUI_PYTHON, COMFYUI_PYTHONPATH as for tests/test_host.py). Loads ComfyUI's node
registry and this package in process (no model, no server) via tests/host/dump_node_info.py.

tests/host/object_info_v1_nodes.json holds the ``/object_info`` entries of the V1 nodes (before the V3
port, recorded on ComfyUI 0.8.0) and of each node added since, as first shipped: saved UI workflows store
widget values by position and links by name, so input names, their order, their widget options and the
outputs must stay exactly as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
BEFORE = json.loads((ROOT / "tests" / "host" / "object_info_v1_nodes.json").read_text())["nodes"]
REQUIRED_ALIASES = {"LCM", "AnimateDiff", "few-step", "consistency"}

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to run the real-host tests"),
]


@pytest.fixture(scope="module")
def listing():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("COMFYUI_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["COMFYUI_PYTHONPATH"]
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "host" / "dump_node_info.py"), COMFYUI_DIR, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _inputs(info: dict) -> dict:
    """``{(section, name): (type, options)}`` with the combo form unified (V1 ``[choices, opts]``, V3
    ``["COMBO", {"options": choices, "multiselect": false}]``) and tooltips left out."""
    out = {}
    for section, inputs in info["input"].items():
        for name, (kind, *rest) in inputs.items():
            opts = {k: v for k, v in (rest[0] if rest else {}).items() if k != "tooltip"}
            if isinstance(kind, list):
                kind, opts["options"] = "COMBO", kind
            if kind == "COMBO" and opts.get("multiselect") is False:
                del opts["multiselect"]
            if name in ("adapter", "unet_name"):  # the user's installed files
                opts.pop("options", None)
            out[(section, name)] = (kind, opts)
    return out


def test_every_node_registers_the_v3_way(listing):
    assert listing["loaded"] is True
    assert listing["v3"] == dict.fromkeys(BEFORE, True)


@pytest.mark.parametrize("node_id", sorted(BEFORE))
def test_inputs_and_outputs_are_where_saved_workflows_expect_them(listing, node_id):
    before, now = BEFORE[node_id], listing["nodes"][node_id]
    assert now["input_order"] == before["input_order"]
    assert _inputs(now) == _inputs(before)
    for key in ("output", "output_is_list", "output_name", "name", "display_name", "category", "output_node"):
        assert now[key] == before[key], key


@pytest.mark.parametrize("node_id", sorted(BEFORE))
def test_every_input_and_output_has_a_tooltip_and_the_node_its_aliases(listing, node_id):
    now = listing["nodes"][node_id]
    for _section, inputs in now["input"].items():
        for name, (_, *rest) in inputs.items():
            assert rest and rest[0].get("tooltip"), f"{node_id}.{name}"
    assert len(now["output_tooltips"]) == len(now["output"]) and all(now["output_tooltips"])
    assert now["description"] and now["display_name"] != node_id
    if listing["schema_has_search_aliases"]:  # a schema field since after ComfyUI 0.8.0
        assert set(now["search_aliases"]) >= REQUIRED_ALIASES
    else:
        assert not now.get("search_aliases")
