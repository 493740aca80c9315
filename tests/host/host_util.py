"""Helpers shared by the scripts that run inside the ComfyUI host (this folder is on their sys.path)."""

from __future__ import annotations


def error_of(fn):
    """``"Type: message"`` of what ``fn()`` raises, or None: the message is what the checks assert on."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return None
