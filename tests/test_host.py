"""Opt-in tests in a real ComfyUI + AnimateDiff-Evolved host.

Set COMFYUI_DIR to a ComfyUI checkout with ADE in custom_nodes/ (and COMFYUI_PYTHON to the Python of
its environment, if it is not this one). MCM_HOST_CHECKPOINT / MCM_HOST_MOTION_MODEL name an SD1.5
checkpoint and an AnimateDiff motion module in its model folders (defaults: the random-weight files
that ../shared/tools/comfyui-host/setup_host.sh writes). `.ci/run` builds such a host when it can.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALL_NODES = ["MCM_KSampler", "MCM_LoraLoader", "MCM_ModelSampling", "MCM_Sampler", "MCM_Scheduler", "MCM_StyleAdapter"]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CKPT = os.environ.get("MCM_HOST_CHECKPOINT", "rand_sd15.safetensors")
MOTION = os.environ.get("MCM_HOST_MOTION_MODEL", "rand_mm_v2.safetensors")

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to run the real-host tests"),
]


@pytest.fixture(scope="module")
def host_report():
    for sub, name in (("checkpoints", CKPT), ("animatediff_models", MOTION)):
        if not (Path(COMFYUI_DIR) / "models" / sub / name).exists():
            pytest.skip(f"{name} not found in {COMFYUI_DIR}/models/{sub} (set MCM_HOST_CHECKPOINT / MCM_HOST_MOTION_MODEL)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("COMFYUI_PYTHONPATH"):  # e.g. the host harness's torchvision shim
        env["PYTHONPATH"] = os.environ["COMFYUI_PYTHONPATH"]
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = ROOT / "tests" / "host" / "check_sampling_nodes.py"
    proc = subprocess.run([python, str(script), COMFYUI_DIR, str(ROOT), CKPT, MOTION],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_nodes_register_in_the_host(host_report):
    assert host_report["registered"] == ALL_NODES


def test_model_sampling_patches_a_clone(host_report):
    assert host_report["model_sampling"] == "MCMModelSampling"
    assert host_report["input_model_sampling"] != "MCMModelSampling"


def test_unet_sees_the_exact_training_timesteps(host_report):
    assert host_report["unet_timesteps"] == {
        "1": [999],
        "2": [999, 499],
        "4": [999, 759, 499, 259],
        "8": [999, 879, 759, 639, 499, 379, 259, 139],
    }
    assert host_report["v2v_timesteps"] == [499, 379, 259, 139]


def test_ade_use_existing_keeps_mcm_sampling(host_report):
    assert host_report["after_ade_use_existing"] == "MCMModelSampling"


def test_samplercustom_runs_mcm_in_an_ade_gen2_graph(host_report):
    assert host_report["sample_shape"] == [4, 4, 4, 4]
    assert host_report["sample_finite"] and host_report["one_vs_two_steps_differ"]
