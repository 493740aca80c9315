"""The ComfyUI extension (V3 registration) that lists the MCM nodes. Imported only by ``comfy_entrypoint``,
inside ComfyUI (it needs ``comfy_api``)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension

from . import adapters, modelscope, sampling


class MCMExtension(ComfyExtension):
    async def get_node_list(self):
        return [*adapters.NODES, *sampling.NODES, *modelscope.NODES]
