"""A stand-in for ComfyUI's ``comfy_api.latest`` (V3 node schema) so that the node declarations can be
imported and inspected without ComfyUI. It records what a node declares, with the field names of the real
``io`` module (``id``, ``tooltip``, ``optional``, ``default``, ``options``, ``display_name``...); the real
module is exercised by the host tests (tests/test_host_nodes.py)."""

from __future__ import annotations

import abc
import dataclasses
import sys
import types


class _Port:
    def __init__(self, io_type: str, id: str | None = None, **options):
        self.io_type, self.id, self.options = io_type, id, options
        self.tooltip = options.get("tooltip")
        self.optional = bool(options.get("optional", False))
        self.display_name = options.get("display_name")


def _comfy_type(io_type: str, widget: bool):
    class Input(_Port):
        def __init__(self, id: str, **options):
            super().__init__(io_type, id, **options)
            self.is_widget = widget

    class Output(_Port):
        def __init__(self, id: str | None = None, **options):
            super().__init__(io_type, id, **options)

    return type(io_type.title(), (), {"io_type": io_type, "Input": Input, "Output": Output})


@dataclasses.dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)
    description: str = ""
    search_aliases: list = dataclasses.field(default_factory=list)


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args, ui=None):
        self.args, self.ui = args, ui


class ComfyExtension(abc.ABC):
    @abc.abstractmethod
    async def get_node_list(self): ...


def make_io() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    io.Schema, io.ComfyNode, io.NodeOutput = Schema, ComfyNode, NodeOutput
    for name, io_type, widget in [
        ("Int", "INT", True),
        ("Float", "FLOAT", True),
        ("Boolean", "BOOLEAN", True),
        ("String", "STRING", True),
        ("Combo", "COMBO", True),
        ("Model", "MODEL", False),
        ("Conditioning", "CONDITIONING", False),
        ("Latent", "LATENT", False),
        ("Sigmas", "SIGMAS", False),
        ("Sampler", "SAMPLER", False),
    ]:
        setattr(io, name, _comfy_type(io_type, widget))
    io.Custom = lambda io_type: _comfy_type(io_type, False)
    return io


def install() -> types.ModuleType:
    """Put the stand-in at ``comfy_api`` / ``comfy_api.latest`` in ``sys.modules``; returns its ``io``."""
    if "comfy_api.latest" in sys.modules:
        return sys.modules["comfy_api.latest"].io
    root, latest = types.ModuleType("comfy_api"), types.ModuleType("comfy_api.latest")
    latest.io, latest.ComfyExtension, root.latest = make_io(), ComfyExtension, latest
    sys.modules.update({"comfy_api": root, "comfy_api.latest": latest})
    return latest.io
