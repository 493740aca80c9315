"""Run inside a real ComfyUI: load a comfyui-mcm checkout as a custom node and print, as one JSON line,
what ComfyUI's ``/object_info`` says about each ``MCM_`` node, and how the node was registered.

usage: python dump_node_info.py COMFYUI_DIR PACKAGE_DIR
The entries are built as ComfyUI's server builds them (``GET_NODE_INFO_V1`` for a V3 node; the class
attributes for a V1 node), without starting a server or loading any model. Runs on the CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile


def v1_info(node_id: str, cls, display_names: dict) -> dict:
    """``/object_info`` of a V1 node class, field by field as ComfyUI's server.py builds it."""
    inputs = cls.INPUT_TYPES()
    info = {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": node_id,
        "display_name": display_names.get(node_id, node_id),
        "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
    return info


def main(comfy_dir: str, package_dir: str) -> dict:
    os.chdir(comfy_dir)
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = True
    import nodes

    try:
        from comfy_api.internal import _ComfyNodeInternal
    except ImportError:  # a ComfyUI without the V3 API
        _ComfyNodeInternal = ()
    custom = tempfile.mkdtemp(prefix="mcm-dump-")
    os.symlink(os.path.abspath(package_dir), os.path.join(custom, "comfyui-mcm"))
    loaded = asyncio.run(nodes.load_custom_node(os.path.join(custom, "comfyui-mcm")))
    out = {"loaded": loaded, "comfyui": None, "nodes": {}, "v3": {}, "schema_has_search_aliases": None}
    try:
        from comfy_api.latest import io

        out["schema_has_search_aliases"] = "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {})
    except ImportError:
        pass
    try:
        import comfyui_version

        out["comfyui"] = comfyui_version.__version__
    except ImportError:
        pass
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if not node_id.startswith("MCM_"):
            continue
        is_v3 = bool(_ComfyNodeInternal) and issubclass(cls, _ComfyNodeInternal)
        out["v3"][node_id] = is_v3
        info = cls.GET_NODE_INFO_V1() if is_v3 else v1_info(node_id, cls, nodes.NODE_DISPLAY_NAME_MAPPINGS)
        out["nodes"][node_id] = json.loads(json.dumps(info, default=str))
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3]), sort_keys=True))
