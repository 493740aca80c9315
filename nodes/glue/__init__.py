"""The only place the MCM nodes touch ComfyUI's internals (``comfy.*``, ``folder_paths``, ``latent_preview``,
AnimateDiff-Evolved's objects), one module per concern: ``folders`` (the ``models/mcm`` folder and the
installed adapters), ``selection`` (MCM Style Adapter), ``patching`` (Load MCM LoRA: the UNet and
motion-model patches), ``sampling``, ``temporal_norm`` and ``modelscope`` (the ModelScope model and its
loader). Each node's ``execute`` is one call into here. Nothing here imports ComfyUI at module import time. The
imports between these modules form a tree: patching → selection → folders; patching → sampling, temporal_norm;
patching → modelscope → folders."""

from .folders import register_model_folders


def register_in_host() -> None:
    """Inside ComfyUI, register the ``models/mcm`` folder (at import, as model packs do); outside, nothing."""
    try:
        import folder_paths  # noqa: F401  (present only inside ComfyUI)
    except ImportError:
        return
    register_model_folders()
