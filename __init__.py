"""comfyui-mcm: ComfyUI entry point.

ComfyUI imports this file as a package and reads ``NODE_CLASS_MAPPINGS``. Importing it needs no ComfyUI
(node modules import ``comfy`` only when a node runs), so tests and tools can load it too.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
