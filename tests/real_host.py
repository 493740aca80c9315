"""What the real-host tests (tests/test_host.py, tests/test_host_workflows.py) share: the host named by the
environment (see tests/README.md), their markers, and the setup both take before they run a script in the host."""

from __future__ import annotations

import hashlib
import os
import shutil
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


#: What writes the random ModelScope files (tests/host/make_modelscope.py): the cache key of :func:`modelscope_data`.
MODELSCOPE_WRITERS = [
    ROOT / "tests" / "host" / "make_modelscope.py",
    ROOT / "tests" / "host" / "make_adapters.py",
    ROOT / "tests" / "modelscope_layout.py",
]


def modelscope_data() -> Path:
    """Random full-size ModelScope T2V files (tests/host/make_modelscope.py: a UNet folder and its .pth, an official
    layout adapter, SD 2.x's text encoder, the SD VAE). ~12 GB and 1-3 minutes to write, so they are kept under
    ~/.cache/comfyui-mcm-tests (MCM_TEST_CACHE), written once per version of the scripts that write them."""
    key = hashlib.sha256(b"".join(p.read_bytes() for p in MODELSCOPE_WRITERS)).hexdigest()[:12]
    cache = Path(os.environ.get("MCM_TEST_CACHE", Path.home() / ".cache" / "comfyui-mcm-tests"))
    target = cache / f"modelscope-{key}"
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("modelscope-*"):  # earlier versions: 12 GB each
            shutil.rmtree(old, ignore_errors=True)
        proc = subprocess.run(
            [sys.executable, str(MODELSCOPE_WRITERS[0]), str(target)], capture_output=True, text=True, timeout=1800
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    return target
