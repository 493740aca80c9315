"""comfyui-mcm: ComfyUI entry point.

ComfyUI imports this file as a package and, finding no ``NODE_CLASS_MAPPINGS``, calls ``comfy_entrypoint``
(the V3 registration, ComfyUI 0.3.68 and later), which returns the extension listing the MCM nodes.
Importing it needs no ComfyUI (the node classes are built only when ComfyUI calls the entry point), so
tests and tools can load it too. ``WEB_DIRECTORY`` is the folder ComfyUI serves at
``/extensions/<this folder's name>/``; it holds the nodes' help pages (``web/docs/<node id>.md``), which the
frontend shows in the node library's help and the selection's info panel.
"""

from .nodes import NODE_IDS, comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "NODE_IDS", "WEB_DIRECTORY"]
