"""ModelScope T2V as a native ComfyUI model, in a real host: loaded by Load ModelScope T2V Model, patched by Load MCM
LoRA with an official-layout adapter, sampled by the MCM nodes, against diffusers.

The host runs tests/host/check_modelscope.py on files that tests/host/make_modelscope.py writes: a full-size random
UNet3D with the text-to-video-ms-1.7b shapes (diffusers folder and the original release's .pth layout), a full-size
official-layout PEFT adapter, SD 2.x's text encoder and the SD VAE. They take ~12 GB of disk and 1-3 minutes to
write, so they are kept under ~/.cache/comfyui-mcm-tests (MCM_TEST_CACHE), keyed by the scripts that write them.
Costs ~3 minutes per host (two 1.4-billion-parameter models, one at a time; ~12 GB of memory at the peak).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_host import CKPT, COMFYUI_DIR, MARKS, ROOT, modelscope_data

pytestmark = MARKS

CASES = ["1@cfg1", "4@cfg1", "1@cfg2", "4@cfg2"]
#: diffusers' UNet3DConditionModel() (the ms-1.7b config): its parameter count.
MS_1_7B_PARAMETERS = 1_411_233_860


STEPS = (1, 2, 4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_data):
    """A tiny ModelScope-architecture run with validation at its last step, and what the host needs to sample its
    validation again: the teacher's UNet (a diffusers folder), the exported adapter, and the validation's inputs
    (text embedding, starting noise and re-noising draws of each prompt, drawn as training/validation.py draws them).
    """
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from tests.tiny_runs import tiny_run_flags
    from training import distill
    from training.models import tiny_teacher
    from training.validation import DEFAULT_PROMPTS

    tmp = tmp_path_factory.mktemp("ms-trained")
    flags = ["--teacher", "tiny-modelscope", "--checkpointing-steps", "2", "--no-disc", "--max-train-steps", "2"]
    args = distill.parse_args(tiny_run_flags(tmp / "runs", toy_data, *flags, "--validation-steps", "2"))
    run = distill.train(args, teacher=tiny_teacher("modelscope"))
    teacher = tiny_teacher("modelscope")  # the same seeded weights the run started from
    out = tmp / "host"
    for part in ("unet", "vae", "text_encoder"):  # a whole diffusers folder, as users copy it
        getattr(teacher, part).save_pretrained(out / "text2video" / "tiny-ms" / part)
    (out / "mcm").mkdir(parents=True)
    shutil.copy(run / "checkpoint-2" / "adapter.safetensors", out / "mcm" / "tiny-ms.safetensors")
    inputs = {}
    for seed, prompt in enumerate(DEFAULT_PROMPTS):
        with torch.no_grad():
            cond = teacher.text_encoder(teacher.tokenizer([prompt]))[0]
        for steps in STEPS:
            g = torch.Generator().manual_seed(seed)
            key = f"{steps}-{seed}"
            latent = args.resolution // teacher.vae_downsample
            shape = (1, teacher.latent_channels, args.num_frames, latent, latent)
            inputs[f"z.{key}"] = torch.randn(shape, generator=g)
            for i in range(steps - 1):
                inputs[f"renoise.{key}.{i}"] = torch.randn(shape, generator=g)
            inputs[f"cond.{key}"] = cond.clone()
    save_file(inputs, str(out / "inputs.safetensors"))
    strips = {
        steps: np.asarray(Image.open(run / "validation" / "step-2" / f"mcm-{steps}-step.png").convert("RGB"))
        for steps in STEPS
    }
    return {
        "dir": out,
        "teacher": teacher,
        "strips": strips,
        "prompts": len(DEFAULT_PROMPTS),
        "frames": args.num_frames,
    }


@pytest.fixture(scope="module")
def report(trained):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("COMFYUI_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["COMFYUI_PYTHONPATH"]
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    sd = CKPT if (Path(COMFYUI_DIR) / "models" / "checkpoints" / CKPT).exists() else ""
    proc = subprocess.run(
        [
            python,
            str(ROOT / "tests" / "host" / "check_modelscope.py"),
            *(COMFYUI_DIR, str(ROOT), str(modelscope_data()), sd, str(trained["dir"])),
        ],
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
    # the diffusers folders' UNets and the original .pth are listed; their other parts (text encoder, VAE) are not
    assert report["listed"] == [
        "ms-rand-original.pth",
        "ms-rand/unet/diffusion_pytorch_model.safetensors",
        "tiny-ms/unet/diffusion_pytorch_model.safetensors",
    ]
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


def test_a_trained_modelscope_adapter_samples_what_the_trainers_validation_sampled(report, trained):
    """What is trained is what is sampled: a tiny ModelScope run's exported adapter, loaded by the nodes onto its
    teacher's UNet and sampled from the validation's noise (MCM Scheduler + MCM Sampler, cfg 1), decodes to the
    validation's own pictures (uint8, within 1) at 1, 2 and 4 steps."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from training.sampling import decode_to_frames

    _no_failure(report, "trained")
    got = load_file(trained["dir"] / "comfyui.safetensors")
    teacher, frames = trained["teacher"], trained["frames"]
    assert len(got) == len(STEPS) * trained["prompts"]
    for steps in STEPS:
        strip = trained["strips"][steps]
        for seed in range(trained["prompts"]):
            with torch.no_grad():
                video = decode_to_frames(teacher.vae, got[f"{steps}-{seed}"], teacher.scaling_factor)[0]
            row = strip[seed * 16 : (seed + 1) * 16].reshape(16, frames, 16, 3).transpose(1, 0, 2, 3)
            assert np.abs(row.astype(int) - video.astype(int)).max() <= 1, (steps, seed)
