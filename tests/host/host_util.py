"""Helpers shared by the scripts that run inside the ComfyUI host (this folder is on their sys.path)."""

from __future__ import annotations

import time
import traceback


def error_of(fn):
    """``"Type: message"`` of what ``fn()`` raises, or None: the message is what the checks assert on."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return None


def run_node(cls, *args, **kwargs) -> tuple:
    """A node's outputs as a tuple, for V3 nodes (``execute`` returns an ``io.NodeOutput``) and V1 alike."""
    if hasattr(cls, "GET_SCHEMA"):
        return tuple(cls.execute(*args, **kwargs).args)
    return tuple(getattr(cls(), cls.FUNCTION)(*args, **kwargs))


def combo_options(spec) -> list:
    """A dropdown's choices from an ``INPUT_TYPES`` / ``/object_info`` entry: V1 ``[choices, opts]`` or
    V3 ``["COMBO", {"options": choices}]``."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    return list(kind) if isinstance(kind, (list, tuple)) else list(opts.get("options", []))


def run_parts(parts, out: dict) -> None:
    """Each ``(name, fn)`` of ``parts`` in turn: a failing part is recorded (the end of its traceback, under
    ``out["failures"][name]``) and the others go on; ``out["seconds"][name]`` is its time."""
    for name, fn in parts:
        t0 = time.time()
        try:
            fn()
        except Exception:  # noqa: BLE001 - report and go on with the other checks
            out.setdefault("failures", {})[name] = traceback.format_exc()[-3000:]
        out.setdefault("seconds", {})[name] = round(time.time() - t0, 1)
