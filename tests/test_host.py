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

import pytest

from tests.real_host import ALL_NODES, CKPT, COMFYUI_DIR, MARKS, MOTION, ROOT, make_adapters, skip_without_models

pytestmark = MARKS


@pytest.fixture(scope="module")
def host_report(tmp_path_factory):
    skip_without_models()
    adapters = make_adapters(tmp_path_factory.mktemp("mcm-adapters"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if os.environ.get("COMFYUI_PYTHONPATH"):  # e.g. the host harness's torchvision shim
        env["PYTHONPATH"] = os.environ["COMFYUI_PYTHONPATH"]
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = ROOT / "tests" / "host" / "check_nodes.py"
    proc = subprocess.run(
        [python, str(script), COMFYUI_DIR, str(ROOT), CKPT, MOTION, str(adapters)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def _no_failure(report, part):
    assert part not in report.get("failures", {}), report["failures"][part]


def test_nodes_register_in_the_host(host_report):
    assert host_report["registered"] == ALL_NODES


def test_model_sampling_patches_a_clone(host_report):
    assert host_report["model_sampling"] == "MCMGridSampling"
    assert host_report["input_model_sampling"] != "MCMGridSampling"


GRID = {
    "1": [999],
    "2": [999, 499],
    "4": [999, 759, 499, 259],
    "8": [999, 879, 759, 639, 499, 379, 259, 139],
}


def test_unet_sees_the_exact_training_timesteps(host_report):
    assert host_report["unet_timesteps"] == GRID
    assert host_report["v2v_timesteps"] == [499, 379, 259, 139]


def test_plain_ksampler_scheduler_simple_lands_on_the_training_timesteps(host_report):
    assert host_report["simple_scheduler_timesteps"] == GRID
    assert host_report["simple_equals_mcm_scheduler"]


def test_comfyui_sampling_equals_the_reference_sampler(host_report):
    _no_failure(host_report, "parity")
    errs = host_report["parity_rel_err"]
    assert set(errs) == {"1@1.0", "4@1.0", "8@1.0", "4@0.6"}
    assert max(errs.values()) <= 1e-4, errs


def test_selector_lists_official_folders_and_mcm_files(host_report):
    _no_failure(host_report, "adapters")
    assert host_report["adapter_choices"] == ["animatediff-webvid", "mcm-test-laion.safetensors"]
    sel = host_report["selected"]
    assert sel["webvid_betas"] == "linear"  # no metadata: the official demo's (ComfyUI sqrt_linear)
    assert sel["laion_betas"] == "scaled_linear"  # from the file's metadata
    assert sel["steps"] == 4 and sel["cfg"] == 1.0
    assert "official release's settings are assumed" in sel["info"]


def test_our_ldm_names_are_comfyuis_own(host_report):
    _no_failure(host_report, "adapters")
    assert host_report["ldm_names_match_comfy"] and host_report["spatial_layers"] == 278


def test_loader_patches_unet_and_motion_model_gen2(host_report):
    _no_failure(host_report, "adapters")
    gen2 = host_report["gen2"]
    assert gen2["unet_patches"] == 278 and gen2["motion_patches"] == 252
    assert gen2["input_untouched"]
    assert gen2["model_sampling"] == "MCMGridSampling" and gen2["sampling_betas"] == "linear"
    assert gen2["unet_weight_err"] <= 1e-5 and gen2["motion_weight_err"] <= 1e-5
    assert gen2["unet_restored_err"] == 0.0


def test_loader_patches_the_gen1_motion_model_on_a_clone(host_report):
    _no_failure(host_report, "adapters")
    gen1 = host_report["gen1"]
    assert gen1["motion_patches"] == [252] and gen1["input_motion_patches"] == [0]
    assert gen1["sampling_betas"] == "scaled_linear"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_adapter", "'no-such-adapter' is not installed"),
        ("escape_folder", "is not installed"),
        ("wrong_base", "cannot be applied to a Stable Diffusion 1.5"),
        ("shape_mismatch", "does not fit this Stable Diffusion UNet"),
        ("no_motion_model", "Gen2: connect 'Load AnimateDiff Model'"),
        ("ade_missing", "need ComfyUI-AnimateDiff-Evolved (not installed)"),
        ("strength_range", "strength_model = 5.0 is outside"),
        ("not_an_adapter", "must come from an MCM Style Adapter"),
    ],
)
def test_bad_input_gives_a_clear_message(host_report, case, expected):
    _no_failure(host_report, "errors")
    assert expected in (host_report["errors"][case] or ""), host_report["errors"][case]


def test_zero_motion_strength_needs_no_motion_model(host_report):
    _no_failure(host_report, "errors")
    assert host_report["errors"]["motion_strength_zero_ok"] is None


def test_ade_use_existing_keeps_mcm_sampling(host_report):
    _no_failure(host_report, "ade_sample")
    assert host_report["after_ade_use_existing"] == "MCMGridSampling"


def test_samplercustom_and_the_one_node_sampler_run_mcm_in_an_ade_gen2_graph(host_report):
    _no_failure(host_report, "ade_sample")
    assert host_report["sample_shape"] == [4, 4, 4, 4]
    assert host_report["sample_finite"] and host_report["one_vs_two_steps_differ"]
    assert host_report["ksampler_equals_samplercustom"] <= 1e-6


# --- training-exact motion-module normalisation (tests/host/check_temporal_norm.py) ------------------------------
# Errors are max |ours − reference| / max |reference| on the latents the UNet sees; 64 px, 8 frames (16 with
# context windows), full-size random SD1.5 + AnimateDiff v2 weights, the official-layout PEFT adapter at strength 1.
PARITY = 1e-4


@pytest.fixture
def tn_report(host_report):
    """The report, unless MCM_HOST_SKIP_TEMPORAL_NORM=1 left these checks out (about 2 minutes of CPU)."""
    if os.environ.get("MCM_HOST_SKIP_TEMPORAL_NORM") == "1":
        pytest.skip("MCM_HOST_SKIP_TEMPORAL_NORM=1")
    return host_report


def test_default_graph_equals_diffusers_at_1_and_4_steps(tn_report):
    _no_failure(tn_report, "tn_reference")
    _no_failure(tn_report, "tn_parity")
    errs = tn_report["temporal_norm_parity"]
    assert errs["frames_1"] <= PARITY and errs["frames_4"] <= PARITY, errs
    # what the patch removes: stock ADE's per-frame norm is about 1% of the output away from diffusers
    assert tn_report["temporal_norm_facts"]["per_frame_vs_diffusers_1"] > 100 * PARITY


def test_per_frame_equals_stock_ade_and_stock_lcm(tn_report):
    _no_failure(tn_report, "tn_parity")
    assert tn_report["temporal_norm_parity"]["per_frame_vs_stock"] <= PARITY
    assert tn_report["temporal_norm_facts"]["stock_model_sampling"] != "MCMGridSampling"


def test_cfg2_batches_cond_and_uncond_and_keeps_their_statistics_apart(tn_report):
    _no_failure(tn_report, "tn_parity")
    assert tn_report["temporal_norm_facts"]["cfg2_batches"] == [16]  # 2 videos of 8 frames in one UNet call
    assert tn_report["temporal_norm_parity"]["cfg2"] <= PARITY


def test_context_windows_normalise_over_the_window(tn_report):
    _no_failure(tn_report, "tn_parity")
    facts = tn_report["temporal_norm_facts"]
    assert facts["context_windows"] == tn_report["reference_windows"] == [list(range(s, s + 8)) for s in (0, 4, 8)]
    assert facts["context_batches"] == [8]
    assert tn_report["temporal_norm_parity"]["context"] <= PARITY


def test_ades_groupnorm_hack_and_the_patch_never_span_twice(tn_report):
    _no_failure(tn_report, "tn_hack")
    hack = tn_report["hack"]
    assert hack["active"] and hack["patched_norms"] == {"frames": 21, "per_frame": 0}
    assert hack["norm_forward"]["frames"] == ["FramesGroupNorm"]
    assert hack["frames_vs_per_frame"] <= PARITY  # the hack's span and ours are the same single span


def test_mcm_sampler_draws_the_same_noise_as_stock_lcm(tn_report):
    _no_failure(tn_report, "tn_sampler")
    assert tn_report["sampler_vs_lcm"] == 0.0


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("frames_without_motion_model", "Load MCM LoRA: temporal_norm 'frames'"),
        ("frames_without_motion_model", "no motion model reached this node"),
        (
            "unknown_format",
            "Load MCM LoRA: temporal_norm 'frames' knows the motion modules of AnimateDiff, AnimateLCM, PIA",
        ),
        ("unknown_format", "is HotshotXL"),
    ],
)
def test_temporal_norm_errors_name_the_node_and_what_it_expected(tn_report, case, expected):
    _no_failure(tn_report, "tn_errors")
    assert expected in (tn_report["temporal_norm_errors"][case] or ""), tn_report["temporal_norm_errors"][case]


def test_temporal_norm_patches_a_clone_and_needs_no_motion_model_when_not_asked(tn_report):
    _no_failure(tn_report, "tn_errors")
    errors = tn_report["temporal_norm_errors"]
    assert errors["auto_without_motion_model_image_only"] is None  # image-only use: said in the log, not an error
    assert errors["unknown_format_per_frame"] is None  # per_frame patches nothing
    assert errors["input_untouched"] and errors["patched_norms"] == 21
