"""ComfyUI nodes for MCM. Thin adapters over ``mcm/``; ComfyUI is imported only when a node runs."""

from .sampling import NODE_CLASS_MAPPINGS as _SAMPLING, NODE_DISPLAY_NAME_MAPPINGS as _SAMPLING_NAMES

NODE_CLASS_MAPPINGS = {**_SAMPLING}
NODE_DISPLAY_NAME_MAPPINGS = {**_SAMPLING_NAMES}
