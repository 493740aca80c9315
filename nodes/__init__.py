"""ComfyUI nodes for MCM, on ComfyUI's V3 node schema (``comfy_api.latest``).

Node files (``adapters``, ``sampling``) only declare; ``glue/`` is the only place touching ComfyUI's
internals. Importing this package needs no ComfyUI: the node classes are built when ComfyUI calls
:func:`comfy_entrypoint`; inside ComfyUI the ``models/mcm`` folder is registered at import, as model packs do.
"""

from __future__ import annotations

from .glue import register_in_host

#: The node ids, in the order the extension lists them (saved workflows refer to nodes by these ids).
NODE_IDS = [
    "MCM_StyleAdapter",
    "MCM_LoraLoader",
    "MCM_ModelSampling",
    "MCM_Scheduler",
    "MCM_Sampler",
    "MCM_KSampler",
    "MCM_ModelScopeLoader",
]


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the extension whose ``get_node_list`` returns the MCM node classes."""
    from .extension import MCMExtension  # here, not at the top: extension imports comfy_api (only inside ComfyUI)

    return MCMExtension()


register_in_host()
