"""The high-resolution template's passes sample on the training grid.

Every MCM pass of workflows/api/mcm_hires_gen2_4step.json (an MCM Scheduler or an MCM KSampler: its steps and
denoise) gets sigmas from the MCM Scheduler's code (``scheduler_sigmas``); mapped back to timesteps they must be
the timesteps diffusers' LCMScheduler samples for the same steps and strength (= denoise), and every one of them
a point of the 50-step DDIM grid MCM was distilled on (diffusers' DDIMScheduler, 'trailing' spacing:
999, 979, ..., 19). The second pass (denoise < 1) starts inside the grid, below 999. No ComfyUI: the model
stands in with a stock discrete sigma table (ComfyUI's, sigma = sqrt((1 - alpha_bar) / alpha_bar), from
diffusers' alphas). Until the template is shipped the passes are the stand-in below. (0.3 s.)
"""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from tests.real_host import ROOT

HIRES = ROOT / "workflows" / "api" / "mcm_hires_gen2_4step.json"
STAND_IN_PASSES = [(4, 1.0), (4, 0.5)]  # (steps, denoise): the first pass, then the upscaled one


def hires_passes() -> list[tuple[int, float]]:
    """(steps, denoise) of each MCM pass of the shipped template (MCM Scheduler and MCM KSampler nodes)."""
    if not HIRES.exists():
        return STAND_IN_PASSES
    graph = json.loads(HIRES.read_text(encoding="utf-8"))
    return [
        (node["inputs"]["steps"], node["inputs"]["denoise"])
        for _, node in sorted(graph.items(), key=lambda item: int(item[0]))  # API node ids are numbers
        if node["class_type"] in ("MCM_Scheduler", "MCM_KSampler")
    ]


def diffusers_alphas_cumprod() -> torch.Tensor:
    from diffusers import LCMScheduler

    return LCMScheduler(beta_schedule="linear").alphas_cumprod.double()


class _StockSampling:
    """A stock discrete model sampling: one sigma per integer timestep (ComfyUI's table, from diffusers' alphas)."""

    def __init__(self):
        a = diffusers_alphas_cumprod()
        self.sigmas = ((1 - a) / a).sqrt()

    def sigma(self, timestep):
        return self.sigmas[timestep.round().long()].float()


class _Model:
    def __init__(self):
        self.sampling = _StockSampling()

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.sampling


def test_the_template_has_a_full_and_a_partial_pass():
    passes = hires_passes()
    assert len(passes) >= 2, passes
    assert any(d == 1.0 for _, d in passes) and any(d < 1.0 for _, d in passes), passes


@pytest.mark.parametrize(("steps", "denoise"), hires_passes())
def test_each_pass_samples_diffusers_lcm_timesteps_on_the_training_grid(package, steps, denoise):
    from diffusers import DDIMScheduler, LCMScheduler

    sampling = importlib.import_module(f"{package.__name__}.nodes.glue.sampling")
    model = _Model()
    sigmas = sampling.scheduler_sigmas(model, steps, denoise).double()
    assert sigmas[-1] == 0 and len(sigmas) == steps + 1
    table = model.sampling.sigmas
    got = [int((table - s).abs().argmin()) for s in sigmas[:-1]]

    lcm = LCMScheduler(beta_schedule="linear", timestep_scaling=4.0, original_inference_steps=50)
    lcm.set_timesteps(steps, strength=denoise)
    assert got == lcm.timesteps.tolist()

    ddim = DDIMScheduler(beta_schedule="linear", timestep_spacing="trailing")
    ddim.set_timesteps(50)
    grid = set(ddim.timesteps.tolist())
    assert grid == set(range(19, 1000, 20))
    assert set(got) <= grid
    if denoise < 1.0:  # the upscaled pass re-noises the first pass's result part of the way, not to pure noise
        assert got[0] < 999 and got[0] <= 1000 * denoise
