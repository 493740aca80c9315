"""The only place the MCM nodes touch ComfyUI's internals (``comfy.*``, ``folder_paths``, ``latent_preview``,
AnimateDiff-Evolved's objects), one module per concern: ``sampling``, ``adapters`` (listing and patching),
``selection`` (MCM Style Adapter) and ``temporal_norm``. Each node's ``execute`` is one call into here.
Nothing here imports ComfyUI at module import time."""


def register_in_host() -> None:
    """Inside ComfyUI, register the ``models/mcm`` folder (at import, as model packs do); outside, nothing."""
    try:
        import folder_paths  # noqa: F401  (present only inside ComfyUI)
    except ImportError:
        return
    from .adapters import register_model_folders

    register_model_folders()
