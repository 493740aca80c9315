"""Opt-in: the ControlNet, long-video (ACN + context windows), high-resolution and prompt-travel workflows in a
real ComfyUI + ADE + Advanced-ControlNet host, against independent references (tests/host/check_controlnet.py).

Set COMFYUI_DIR (and COMFYUI_PYTHON, COMFYUI_PYTHONPATH as for tests/test_host.py); MCM_HOST_CONTROLNET names an
SD1.5 ControlNet in the host's models/controlnet (default: the random-weight `rand_cn_sd15.safetensors` that
../shared/tools/comfyui-host/setup_host.sh writes; it must be a diffusers-layout single file, which the reference
loads into diffusers' ControlNetModel). 2 to 4 minutes of CPU, one full-size host at a time.

Errors are max |ComfyUI - reference| / max |reference| on the latents the UNet sees (64 px; 8 frames, or two
context windows of the long template), the official-layout PEFT adapter at strength 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_host import CKPT, COMFYUI_DIR, MARKS, MOTION, ROOT, make_adapters, skip_without_models
from tests.test_hires_grid import hires_passes

pytestmark = MARKS
CONTROLNET = os.environ.get("MCM_HOST_CONTROLNET", "rand_cn_sd15.safetensors")
PARITY = 1e-4


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    skip_without_models()
    if not (Path(COMFYUI_DIR) / "models" / "controlnet" / CONTROLNET).exists():
        pytest.skip(f"{CONTROLNET} not found in {COMFYUI_DIR}/models/controlnet (set MCM_HOST_CONTROLNET)")
    adapters = make_adapters(tmp_path_factory.mktemp("mcm-adapters"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("COMFYUI_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["COMFYUI_PYTHONPATH"]
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = ROOT / "tests" / "host" / "check_controlnet.py"
    proc = subprocess.run(
        [python, str(script), COMFYUI_DIR, str(ROOT), CKPT, MOTION, str(adapters), CONTROLNET],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (adapters / "report.json").write_text(proc.stdout.strip().splitlines()[-1])  # kept in pytest's temp folder
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _no_failure(report, *parts):
    for part in parts:
        assert part not in report.get("failures", {}), report["failures"][part]


def _shipped_or_stand_in(name: str) -> str:
    return "shipped" if (ROOT / "workflows" / "api" / f"{name}.json").exists() else "stand-in"


def test_controlnet_graph_equals_diffusers_with_controlnet_at_1_and_4_steps_cfg_1_and_2(report):
    _no_failure(report, "reference", "controlnet")
    assert report["controlnet_workflow"]["source"] == _shipped_or_stand_in("mcm_pose_gen2_4step")
    errs = report["controlnet_parity"]
    for key in ("cfg1_1", "cfg1_4", "cfg2_1", "cfg2_4"):
        assert errs[key] <= PARITY, errs
    # the same graph against diffusers without the ControlNet: far off, so the residuals are what matched
    assert errs["vs_no_controlnet_1"] > 100 * PARITY, errs


def test_acn_in_context_windows_equals_diffusers_run_per_window_and_fused(report):
    _no_failure(report, "reference", "acn_context")
    wf = report["acn_workflow"]
    assert wf["source"] == _shipped_or_stand_in("mcm_pose_long_acn")
    assert wf["apply"] == "ACN_AdvancedControlNetApply_v2"
    assert report["acn_windows"] == report["acn_reference_windows"] and len(report["acn_windows"]) == 2
    assert report["acn_context_parity"] <= PARITY


def test_hires_passes_land_on_diffusers_lcm_timesteps_in_the_host(report):
    from diffusers import LCMScheduler

    _no_failure(report, "hires")
    hires = report["hires"]
    assert hires["source"] == _shipped_or_stand_in("mcm_hires_gen2_4step")
    assert [(p["steps"], p["denoise"]) for p in hires["passes"]] == hires_passes()
    for p in hires["passes"]:
        lcm = LCMScheduler(beta_schedule="linear", timestep_scaling=4.0, original_inference_steps=50)
        lcm.set_timesteps(p["steps"], strength=p["denoise"])
        assert p["model_sampling"] == "MCMGridSampling"
        assert p["timesteps"] == lcm.timesteps.tolist(), p


@pytest.mark.parametrize("sampler", ["samplercustom", "mcm_ksampler"])
def test_prompt_travel_gives_each_frame_its_scheduled_embedding(report, sampler):
    _no_failure(report, "travel")
    travel = report["travel"]
    assert travel["source"] == _shipped_or_stand_in("mcm_prompt_travel_gen2")
    got = travel[sampler]
    assert got["calls"] >= 1 and got["shapes"] == [[travel["frames"], 77, 768]]
    assert got["max_rel_err"] <= 1e-5, got["per_frame_rel_err"]
    # the keyframe prompts' embeddings are far apart, so a frame given the wrong one would fail above
    assert travel["prompts_differ"] > 1e-2
