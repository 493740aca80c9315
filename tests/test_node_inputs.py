"""What the MCM nodes do with inputs ComfyUI's validation lets through (found by the host fuzz target,
tests/fuzz/test_fuzz_host.py): NaN in a number widget (every min/max comparison with it is false), a linked value
out of the widget's range, and any JSON value an API client puts on an input meant for a link. Each is refused
before any sampling with one line naming the node and the input; the largest seed no longer overflows on the CPU.
No ComfyUI needed: the checks run before the glue touches it."""

from __future__ import annotations

import importlib
import math

import pytest
import torch


@pytest.fixture
def sampling(package):
    return importlib.import_module(f"{package.__name__}.nodes.glue.sampling")


@pytest.fixture
def patching(package):
    return importlib.import_module(f"{package.__name__}.nodes.glue.patching")


@pytest.fixture
def weights(package):
    """The package's own ``mcm.weights`` (its AdapterError is the one the glue raises)."""
    return importlib.import_module(f"{package.__name__}.mcm.weights")


class _Model:
    """A stand-in MODEL: what the checks look for (the glue would fail on anything more)."""

    def get_model_object(self, name):
        raise AssertionError("the check should have refused the input before the model is used")


COND = [[torch.zeros(1, 77, 768), {}]]
LATENT = {"samples": torch.zeros(4, 4, 8, 8)}
BAD_NUMBERS = [math.nan, math.inf, -math.inf, "nan", None, True, [1.0], 1e308]


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_a_bad_number_is_refused_naming_the_node_and_the_input(sampling, value):
    with pytest.raises(ValueError, match=r"^MCM Scheduler: denoise = .*; expected a number in \[0.02, 1\]$"):
        sampling.checked_number(value, "denoise", "MCM Scheduler", 0.02, 1.0)
    assert sampling.checked_number(0.5, "denoise", "MCM Scheduler", 0.02, 1.0) == 0.5


@pytest.mark.parametrize("denoise", [math.nan, 0.0, 1.5, "x"])
def test_scheduler_refuses_a_bad_denoise(sampling, denoise):
    with pytest.raises(ValueError, match=r"^MCM Scheduler: denoise = "):
        sampling.scheduler_sigmas(_Model(), 4, denoise)


@pytest.mark.parametrize("steps", [0, 51, 2.0, True, "4", None])
def test_scheduler_refuses_bad_steps(sampling, steps):
    with pytest.raises(ValueError, match=r"^MCM Scheduler: steps = .*; expected a whole number in \[1, 50\]"):
        sampling.scheduler_sigmas(_Model(), steps, 1.0)


def test_too_low_a_denoise_for_the_steps_names_both_inputs(sampling):
    with pytest.raises(ValueError, match=r"^MCM Scheduler: steps = 2 with denoise = 0.02: .*keeps only 1 of the 50"):
        sampling.scheduler_sigmas(_Model(), 2, 0.02)


@pytest.mark.parametrize("where, call", [("MCM Scheduler", "scheduler"), ("MCM Model Sampling", "model_sampling")])
@pytest.mark.parametrize("model", ["", 1.5, None, {"model": 1}])
def test_a_value_on_the_model_input_is_refused(sampling, where, call, model):
    with pytest.raises(ValueError, match=rf"^{where}: model must be a MODEL \(connect a model output\), got "):
        if call == "scheduler":
            sampling.scheduler_sigmas(model, 4, 1.0)
        else:
            sampling.model_sampling_node(model, "sqrt_linear (diffusers linear; MCM AnimateDiff demo)", 4.0)


@pytest.mark.parametrize("scaling", [math.nan, math.inf, 0.0, 101.0])
def test_model_sampling_refuses_a_bad_timestep_scaling(sampling, scaling):
    with pytest.raises(ValueError, match=r"^MCM Model Sampling: timestep_scaling = .*\[0.1, 100\]$"):
        sampling.model_sampling_node(_Model(), "sqrt_linear (diffusers linear; MCM AnimateDiff demo)", scaling)


@pytest.mark.parametrize(
    "change, name",
    [
        ({"model": "m"}, "model"),
        ({"steps": 0}, "steps"),
        ({"cfg": math.nan}, "cfg"),
        ({"cfg": 31.0}, "cfg"),
        ({"denoise": math.nan}, "denoise"),
        ({"positive": "p"}, "positive"),
        ({"negative": 0}, "negative"),
        ({"negative": [1, 2]}, "negative"),
        ({"latent_image": "l"}, "latent_image"),
        ({"latent_image": {"samples": 1}}, "latent_image"),
    ],
)
def test_ksampler_refuses_bad_inputs_before_sampling(sampling, change, name):
    inputs = dict(model=_Model(), seed=0, steps=1, cfg=1.0, positive=COND, negative=COND, latent_image=LATENT)
    inputs.update(denoise=1.0)
    inputs.update(change)
    with pytest.raises(ValueError, match=rf"^MCM KSampler: {name} "):
        sampling.ksample(**inputs)


def test_the_largest_seed_does_not_overflow_the_cpu_noise_sampler(sampling):
    # ComfyUI's default_noise_sampler seeds seed + 1 on the CPU; torch takes seeds up to 2**64 - 1
    assert sampling.noise_sampler_seed(2**64 - 1, "cpu") == -1
    torch.Generator().manual_seed(sampling.noise_sampler_seed(2**64 - 1, "cpu") + 1)
    for seed in (0, 42, 2**63, 2**64 - 2):
        assert sampling.noise_sampler_seed(seed, "cpu") == seed  # every other seed: the noise as before
    assert sampling.noise_sampler_seed(2**64 - 1, "cuda") == 2**64 - 1
    assert sampling.noise_sampler_seed(None, "cpu") is None


def _selected(patching, w):
    g = torch.Generator().manual_seed(0)
    layers = {"down_blocks.0.attentions.0.proj_in": w.LoraWeights(torch.randn(2, 8, generator=g), torch.randn(8, 2), 2)}
    adapter = w.Adapter(w.AdapterMeta(lora_rank=2, lora_alpha=2.0, style="test"), layers)
    return patching.SelectedAdapter(label="x", adapter=adapter, beta_schedule="linear", schedule_note="test")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": ""}, r"^Load MCM LoRA: model must be a MODEL \(connect a model output\), got str$"),
        ({"motion_model": 3}, r"^Load MCM LoRA: motion_model must be a MOTION_MODEL_ADE .* got int$"),
        ({"strength_model": math.nan}, r"^Load MCM LoRA: strength_model = nan is outside \[-2, 2\]$"),
    ],
)
def test_lora_loader_refuses_values_on_its_link_inputs(patching, weights, change, message):
    inputs = dict(model=_Model(), selected=_selected(patching, weights), strength_model=1.0, strength_motion=1.0)
    inputs.update(mcm_sampling=True, temporal_norm="auto", motion_model=None)
    inputs.update(change)
    with pytest.raises(weights.AdapterError, match=message):
        patching.load_mcm_lora(**inputs)
