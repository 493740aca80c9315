"""What the real-host tests (tests/test_host.py, tests/test_host_workflows.py) share: the host named by the
environment (see tests/README.md), their markers, and the setup both take before they run a script in the host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALL_NODES = [
    "MCM_KSampler",
    "MCM_LoraLoader",
    "MCM_ModelSampling",
    "MCM_ModelScopeLoader",
    "MCM_Sampler",
    "MCM_Scheduler",
    "MCM_StyleAdapter",
]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CKPT = os.environ.get("MCM_HOST_CHECKPOINT", "rand_sd15.safetensors")
MOTION = os.environ.get("MCM_HOST_MOTION_MODEL", "rand_mm_v2.safetensors")

#: A real-host test module's ``pytestmark``.
MARKS = [
    pytest.mark.host,
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to run the real-host tests"),
]


def skip_without_models() -> None:
    """Skips the test unless the host's model folders hold the checkpoint and the motion module."""
    for sub, name in (("checkpoints", CKPT), ("animatediff_models", MOTION)):
        if not (Path(COMFYUI_DIR) / "models" / sub / name).exists():
            pytest.skip(
                f"{name} not found in {COMFYUI_DIR}/models/{sub} (set MCM_HOST_CHECKPOINT / MCM_HOST_MOTION_MODEL)"
            )


def make_adapters(folder: Path) -> Path:
    """``folder`` with the test adapters written into it (tests/host/make_adapters.py, in this Python)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "host" / "make_adapters.py"), str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return folder
