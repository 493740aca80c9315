"""ComfyUI nodes for MCM. Thin adapters over ``mcm/``; ComfyUI is imported only when a node runs,
except that inside ComfyUI the ``models/mcm`` folder is registered at import, as model packs do."""

from .adapters import NODE_CLASS_MAPPINGS as _ADAPTERS, NODE_DISPLAY_NAME_MAPPINGS as _ADAPTER_NAMES
from .sampling import NODE_CLASS_MAPPINGS as _SAMPLING, NODE_DISPLAY_NAME_MAPPINGS as _SAMPLING_NAMES

NODE_CLASS_MAPPINGS = {**_ADAPTERS, **_SAMPLING}
NODE_DISPLAY_NAME_MAPPINGS = {**_ADAPTER_NAMES, **_SAMPLING_NAMES}


def _register_in_host() -> None:
    try:
        import folder_paths  # noqa: F401  (present only inside ComfyUI)
    except ImportError:
        return
    from .comfy_adapters import register_model_folders

    register_model_folders()


_register_in_host()
