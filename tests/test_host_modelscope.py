"""ModelScope T2V as a native ComfyUI model, in a real host: loaded by Load ModelScope T2V Model, patched by Load MCM
LoRA with an official-layout adapter, sampled by the MCM nodes, against diffusers.

The host runs tests/host/check_modelscope.py on files that tests/host/make_modelscope.py writes: a full-size random
UNet3D with the text-to-video-ms-1.7b shapes (diffusers folder and the original release's .pth layout), a full-size
official-layout PEFT adapter, SD 2.x's text encoder and the SD VAE. They take ~12 GB of disk and 1-3 minutes to
write, so they are kept under ~/.cache/comfyui-mcm-tests (MCM_TEST_CACHE), keyed by the scripts that write them.
Costs ~3 minutes per host (two 1.4-billion-parameter models, one at a time; ~12 GB of memory at the peak).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_host import CKPT, COMFYUI_DIR, MARKS, ROOT

pytestmark = MARKS

WRITERS = [ROOT / "tests" / "host" / n for n in ("make_modelscope.py", "make_adapters.py")]
WRITERS.append(ROOT / "tests" / "modelscope_layout.py")
CASES = ["1@cfg1", "4@cfg1", "1@cfg2", "4@cfg2"]
#: diffusers' UNet3DConditionModel() (the ms-1.7b config): its parameter count.
MS_1_7B_PARAMETERS = 1_411_233_860


def data_dir() -> Path:
    """The random ModelScope files, written once per version of the scripts that write them."""
    key = hashlib.sha256(b"".join(p.read_bytes() for p in WRITERS)).hexdigest()[:12]
    cache = Path(os.environ.get("MCM_TEST_CACHE", Path.home() / ".cache" / "comfyui-mcm-tests"))
    target = cache / f"modelscope-{key}"
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("modelscope-*"):  # earlier versions: 12 GB each
            shutil.rmtree(old, ignore_errors=True)
        proc = subprocess.run(
            [sys.executable, str(WRITERS[0]), str(target)], capture_output=True, text=True, timeout=1800
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    return target


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("COMFYUI_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["COMFYUI_PYTHONPATH"]
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    sd = CKPT if (Path(COMFYUI_DIR) / "models" / "checkpoints" / CKPT).exists() else ""
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "host" / "check_modelscope.py"), COMFYUI_DIR, str(ROOT), str(data_dir()), sd],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _no_failure(report, part):
    assert part not in report.get("failures", {}), report["failures"][part]


def test_the_loader_builds_the_full_size_network_as_a_comfyui_model(report):
    _no_failure(report, "nodes")
    assert "MCM_ModelScopeLoader" in report["registered"]
    # the diffusers folder's UNet and the original .pth are listed; its other parts (text encoder, VAE) are not
    assert report["listed"] == ["ms-rand-original.pth", "ms-rand/unet/diffusion_pytorch_model.safetensors"]
    model = report["model"]
    assert model["network"] == "ModelScopeDiffusionModel" and model["config"] == "ModelScopeT2V"
    assert model["parameters"] == MS_1_7B_PARAMETERS
    assert model["latent_scale"] == 0.18215  # the SD VAE's latents


def test_the_selector_hands_the_official_demos_settings(report):
    """An official ModelScope adapter carries no metadata: the demo's settings (the ms-1.7b scheduler's
    scaled_linear betas, timestep scaling 4, 4 steps, cfg 1)."""
    _no_failure(report, "nodes")
    sel = report["selector"]
    assert (sel["base"], sel["beta_schedule"], sel["timestep_scaling"]) == ("modelscope-t2v", "scaled_linear", 4.0)
    assert (sel["steps"], sel["cfg"]) == (4, 1.0)


def test_load_mcm_lora_patches_spatial_and_temporal_layers_with_their_strengths(report):
    _no_failure(report, "nodes")
    sel = report["selector"]
    assert report["patched_layers"] == sel["layers"]  # every layer of the adapter, each accepted by ComfyUI
    assert report["patched_layers_motion_off"] == sel["layers"] - sel["temporal_layers"]  # strength_motion 0
    assert report["patched_model_sampling"] == "MCMGridSampling"


@pytest.mark.parametrize("case", CASES)
def test_comfyui_graph_equals_diffusers(report, case):
    """SamplerCustom + MCM Scheduler + MCM Sampler on the patched model vs diffusers' UNet3DConditionModel with the
    adapter merged by peft and its LCMScheduler (scaled_linear, timestep scaling 4), the same noise."""
    _no_failure(report, "sampling")
    _no_failure(report, "reference")
    assert report["finite"]
    assert report["parity_rel_err"][case] <= 1e-4
    # the check can fail: the same noise without the adapter is far off
    assert report["no_adapter_rel_err_1@cfg1"] > 1e-2


def test_frames_are_counted_per_video_in_the_batch(report):
    """cfg 1 runs one 8-frame video per UNet call; cfg 2 batches cond and uncond into one call of 16 frames, which
    the model splits into two videos of 8 (the parity above holds for both)."""
    calls = report["unet_calls"]
    assert calls["1@cfg1"] == [[8, [0]]]
    assert all(len(c) * 8 == b for b, c in calls["4@cfg2"]) and any(len(c) == 2 for _, c in calls["4@cfg2"])


def test_mcm_ksampler_samples_it_like_sampler_custom(report):
    _no_failure(report, "sampling")
    assert report["ksampler_equals_sampler_custom_4@cfg2"]


def test_stock_text_encoder_and_vae_loaders_serve_it(report):
    """Load CLIP (stable_diffusion) reads SD 2.x's 23-layer text encoder as CLIP-H (1024 wide); Load VAE decodes."""
    _no_failure(report, "text_vae")
    assert report["clip"]["shape"] == [1, 77, 1024]
    assert report["decoded"] == [8, 64, 64, 3]


def test_original_release_layout_loads_to_exactly_the_diffusers_weights(report):
    _no_failure(report, "original")
    layout = report["original_layout"]
    assert layout["tensors"] == layout["model_tensors"] == 1480 and layout["different"] == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated", "truncated.safetensors: cannot be read as a safetensors file"),
        ("not_listed", "'nothing_here.safetensors' is not in models/text2video"),
        ("sd15_checkpoint", "looks like a Stable Diffusion 1.5 checkpoint"),
        ("animatediff_adapter_on_modelscope", "load an SD1.5 checkpoint and an AnimateDiff motion model"),
        ("modelscope_adapter_on_sd15", "load ModelScope with 'Load ModelScope T2V Model'"),
        ("per_frame_on_modelscope", "ModelScope's temporal layers always normalise over the frames"),
        ("motion_model_on_modelscope", "disconnect motion_model"),
    ],
)
def test_bad_inputs_give_one_clear_line(report, case, expected):
    _no_failure(report, "errors")
    if case not in report["errors"]:
        pytest.skip("the host has no SD1.5 checkpoint")
    message = report["errors"][case]
    assert message and expected in message and "\n" not in message and "Traceback" not in message, message


def test_bad_inputs_write_nothing(report):
    _no_failure(report, "errors")
    assert report["errors"]["nothing_written"]
