"""Schedule, grid and inference timesteps against diffusers, plus properties and errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, LCMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from mcm.schedule import (
    COMFY_BETA_NAMES,
    NoiseSchedule,
    beta_schedule_from_comfy,
    ddim_timesteps,
    lcm_timesteps,
)

SCHEDULES = ["linear", "scaled_linear"]


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_alphas_cumprod_equal_diffusers(beta_schedule):
    ours = NoiseSchedule(beta_schedule).alphas_cumprod
    for cls in (LCMScheduler, DDPMScheduler):
        theirs = cls(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012).alphas_cumprod
        assert torch.equal(ours, theirs.double()), cls.__name__


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("timestep_scaling", [4.0, 10.0])
def test_lcm_timesteps_equal_diffusers_for_every_step_count(beta_schedule, timestep_scaling):
    sched = LCMScheduler(beta_schedule=beta_schedule, timestep_scaling=timestep_scaling)
    for n in range(1, 51):
        sched.set_timesteps(n, original_inference_steps=50)
        assert torch.equal(lcm_timesteps(n), sched.timesteps), n


@pytest.mark.parametrize("strength", [1.0, 0.9, 0.75, 0.6, 0.5, 0.33, 0.2, 0.02])
def test_lcm_timesteps_with_strength_equal_diffusers(strength):
    sched = LCMScheduler()
    for n in range(1, int(50 * strength) + 1):
        sched.set_timesteps(n, original_inference_steps=50, strength=strength)
        assert torch.equal(lcm_timesteps(n, strength=strength), sched.timesteps), (n, strength)


def test_mcm_four_step_timesteps_are_the_documented_ones():
    assert lcm_timesteps(4).tolist() == [999, 759, 499, 259]
    assert lcm_timesteps(1).tolist() == [999]
    assert lcm_timesteps(2).tolist() == [999, 499]


def test_ddim_grid():
    grid = ddim_timesteps()
    assert grid.tolist() == [20 * i + 19 for i in range(50)]
    assert ddim_timesteps(25).tolist()[:3] == [39, 79, 119]


@pytest.mark.parametrize("n", [1, 2, 10, 50, 100, 1000])
def test_grids_are_monotonic(n):
    grid = ddim_timesteps(n)
    assert torch.all(grid[1:] > grid[:-1]) and grid[-1] == 999 and grid[0] >= 0


@given(st.integers(1, 50), st.floats(0.02, 1.0))
def test_lcm_timesteps_descend_on_the_grid(n, strength):
    if int(50 * strength) < n:
        with pytest.raises(ValueError, match="strength"):
            lcm_timesteps(n, strength=strength)
        return
    ts = lcm_timesteps(n, strength=strength)
    assert len(ts) == n
    assert torch.all(ts[1:] < ts[:-1])
    assert set(ts.tolist()) <= set(ddim_timesteps().tolist())


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_comfy_sigmas_match_the_closed_form(beta_schedule):
    s = NoiseSchedule(beta_schedule)
    a = s.alphas_cumprod
    assert torch.allclose(s.comfy_sigmas, ((1 - a) / a) ** 0.5, rtol=0, atol=0)
    assert torch.all(s.comfy_sigmas[1:] > s.comfy_sigmas[:-1])


def test_comfy_sigmas_match_comfyui_reference_values():
    # ComfyUI's SD1.5 model sampling (its "linear" = diffusers "scaled_linear") has sigma_min 0.0292
    # and sigma_max 14.6146, the values every SD1.5 ComfyUI user sees in its sigma schedules.
    sd = NoiseSchedule("scaled_linear").comfy_sigmas
    assert sd[0].item() == pytest.approx(0.0292, abs=1e-4)
    assert sd[-1].item() == pytest.approx(14.6146, abs=1e-3)
    # diffusers "linear" (ComfyUI "sqrt_linear", AnimateDiff) is noisier at the end: sigma_max 25.15.
    ad = NoiseSchedule("linear").comfy_sigmas
    assert ad[-1].item() == pytest.approx(25.1461, abs=1e-3)


@settings(max_examples=200)
@given(st.sampled_from(SCHEDULES), st.floats(0.0, 999.0, allow_nan=False))
def test_sigma_t_round_trip(beta_schedule, t):
    s = NoiseSchedule(beta_schedule)
    assert s.t_at(s.sigma_at(t)).item() == pytest.approx(t, abs=1e-8)


@settings(max_examples=200)
@given(st.sampled_from(SCHEDULES), st.floats(0.0, 1.0))
def test_t_sigma_round_trip(beta_schedule, u):
    s = NoiseSchedule(beta_schedule)
    lo, hi = s.comfy_sigmas[0].log().item(), s.comfy_sigmas[-1].log().item()
    sigma = torch.tensor(lo + u * (hi - lo), dtype=torch.float64).exp()
    assert s.sigma_at(s.t_at(sigma)).item() == pytest.approx(sigma.item(), rel=1e-10)


def test_sigma_at_integer_t_is_the_table_and_interpolates_in_log_space():
    s = NoiseSchedule("linear")
    t = torch.tensor([0, 19, 500, 999])
    assert torch.allclose(s.sigma_at(t), s.comfy_sigmas[t], rtol=1e-14, atol=0)
    mid = s.sigma_at(10.5)
    assert mid.item() == pytest.approx((s.comfy_sigmas[10] * s.comfy_sigmas[11]).sqrt().item(), rel=1e-12)


def test_t_at_works_on_batches_and_clamps_outside_the_table():
    s = NoiseSchedule()
    sig = s.comfy_sigmas[torch.tensor([[19, 259], [759, 999]])]
    assert torch.allclose(s.t_at(sig), torch.tensor([[19.0, 259.0], [759.0, 999.0]], dtype=torch.float64))
    assert s.t_at(1e6).item() == 999.0 and s.t_at(1e-6).item() == 0.0


def test_naming_trap_translation():
    assert COMFY_BETA_NAMES == {"linear": "sqrt_linear", "scaled_linear": "linear"}
    assert beta_schedule_from_comfy("sqrt_linear") == "linear"
    assert beta_schedule_from_comfy("linear") == "scaled_linear"
    assert NoiseSchedule("linear").comfy_name == "sqrt_linear"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: lcm_timesteps(51), "num_steps must lie in"),
        (lambda: lcm_timesteps(0), "num_steps must lie in"),
        (lambda: lcm_timesteps(4.0), "must be an int"),
        (lambda: lcm_timesteps(4, strength=0.0), r"strength must lie in \(0, 1\]"),
        (lambda: lcm_timesteps(4, strength=1.5), r"strength must lie in \(0, 1\]"),
        (lambda: lcm_timesteps(8, strength=0.1), "keeps only 5 of the 50"),
        (lambda: NoiseSchedule("cosine"), "unknown beta schedule 'cosine'"),
        (lambda: NoiseSchedule("sqrt_linear"), "ComfyUI's 'sqrt_linear' is diffusers' 'linear'"),
        (lambda: beta_schedule_from_comfy("scaled_linear"), "unknown ComfyUI beta schedule"),
        (lambda: ddim_timesteps(0), "num_ddim_timesteps must lie in"),
        (lambda: NoiseSchedule().sigma_at(1000), r"timestep must lie in \[0, 999\]"),
        (lambda: NoiseSchedule().alpha_sigma(1000), "timestep must be < 1000"),
        (lambda: NoiseSchedule().t_at(0.0), "sigma must be > 0"),
    ],
)
def test_impossible_requests_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
