"""The V3 node base the MCM nodes share: what every MCM node declares alike.

Search aliases are a schema field only in ComfyUI versions that have it (added to ``io.Schema`` after
0.8.0); on older versions the nodes are declared without them rather than failing to load.
"""

from __future__ import annotations

from comfy_api.latest import io

from .choices import CATEGORY, SEARCH_ALIASES


def has_search_aliases() -> bool:
    fields = getattr(io.Schema, "__dataclass_fields__", None)
    return fields is None or "search_aliases" in fields


class MCMNode(io.ComfyNode):
    """An MCM node declared by class attributes (``node_id``, ``display_name``, ``inputs``, ``outputs``) and
    its docstring, the one-sentence description ComfyUI shows, as ComfyUI's own node families share one
    ``define_schema``. ``current_inputs`` is asked at every listing (a dropdown of installed files overrides it)."""

    node_id = display_name = ""
    inputs: list = []
    outputs: list = []

    @classmethod
    def current_inputs(cls) -> list:
        return list(cls.inputs)

    @classmethod
    def define_schema(cls) -> io.Schema:
        extra = {"search_aliases": list(SEARCH_ALIASES)} if has_search_aliases() else {}
        description = " ".join((cls.__doc__ or "").split())  # the docstring, on one line
        return io.Schema(
            node_id=cls.node_id,
            display_name=cls.display_name,
            category=CATEGORY,
            description=description,
            inputs=cls.current_inputs(),
            outputs=list(cls.outputs),
            **extra,
        )
