"""Boundary conditions and the DDIM solver step against diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from mcm.boundary import (
    boundary_scalings,
    consistency_output,
    predicted_eps,
    predicted_x0,
)
from mcm.schedule import NoiseSchedule, ddim_timesteps
from mcm.solver import ddim_solver_step, solver_timesteps

PREDICTIONS = ["epsilon", "v_prediction", "sample"]


@pytest.mark.parametrize("timestep_scaling", [4.0, 10.0])
def test_boundary_scalings_equal_diffusers(timestep_scaling):
    sched = LCMScheduler(timestep_scaling=timestep_scaling)
    t = torch.arange(1000)
    c_skip, c_out = boundary_scalings(t.double(), timestep_scaling=timestep_scaling)
    for i in range(1000):
        ref_skip, ref_out = sched.get_scalings_for_boundary_condition_discrete(i)
        assert c_skip[i].item() == pytest.approx(ref_skip, rel=1e-15, abs=0)
        assert c_out[i].item() == pytest.approx(ref_out, rel=1e-15, abs=0)


def test_boundary_is_identity_at_zero_and_nearly_x0_at_grid_timesteps():
    c_skip, c_out = boundary_scalings(0.0)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    x, x0 = torch.randn(2, 4, 3, 3, dtype=torch.float64).unbind(0)
    assert torch.equal(consistency_output(x, x0, 0.0), x)
    c_skip, c_out = boundary_scalings(torch.tensor(19.0, dtype=torch.float64))
    assert c_skip < 1e-3 and c_out > 0.999


def test_boundary_scalings_satisfy_their_identity():
    # c_skip·(τ² + σd²) = σd² and c_out² = τ²/(τ² + σd²), so c_out² + c_skip = 1 with σd = 0.5.
    t = torch.linspace(0, 999, 101, dtype=torch.float64)
    c_skip, c_out = boundary_scalings(t)
    assert torch.allclose(c_out**2 + c_skip, torch.ones_like(t), atol=1e-15)
    assert torch.all(c_skip[1:] < c_skip[:-1]) and torch.all(c_out[1:] > c_out[:-1])


def test_boundary_rejects_bad_constants():
    with pytest.raises(ValueError, match="timestep_scaling must be > 0"):
        boundary_scalings(1.0, timestep_scaling=0.0)
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        boundary_scalings(1.0, sigma_data=-1.0)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_parameterisations_are_consistent(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).unbind(0)
    alpha, sigma = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    output = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[prediction_type]
    assert torch.allclose(predicted_x0(output, x_t, alpha, sigma, prediction_type), x0, atol=1e-12)
    assert torch.allclose(predicted_eps(output, x_t, alpha, sigma, prediction_type), eps, atol=1e-12)


def test_unknown_prediction_type_is_refused():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        predicted_x0(x, x, x + 1, x + 1, "flow")


def test_solver_timesteps_hop_twenty_and_clamp_at_zero():
    t_n_k, t_n = solver_timesteps(torch.arange(50))
    assert torch.equal(t_n_k, ddim_timesteps())
    assert t_n[0] == 0 and torch.equal(t_n[1:], t_n_k[1:] - 20)
    with pytest.raises(ValueError, match=r"grid index must lie in \[0, 50\)"):
        solver_timesteps(torch.tensor([50]))


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_step_equals_diffusers_ddim_at_the_grid_points(beta_schedule, prediction_type):
    # The grid is diffusers' "trailing" 50-step DDIM; the hop below t=19 lands on ᾱ_0
    # (set_alpha_to_one=False), as the MCM solver clamps t_n at 0.
    sched = DDIMScheduler(
        beta_schedule=beta_schedule,
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="trailing",
        set_alpha_to_one=False,
        clip_sample=False,
        prediction_type=prediction_type,
    )
    # diffusers keeps ᾱ in float32 and takes square roots in float32; hold its own table in float64
    # (values unchanged) so the comparison is of the algorithm, at float64 precision.
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.final_alpha_cumprod = sched.alphas_cumprod[0]
    sched.set_timesteps(50)
    assert sorted(sched.timesteps.tolist()) == ddim_timesteps().tolist()
    schedule = NoiseSchedule(beta_schedule)
    g = torch.Generator().manual_seed(1)
    for index, t in enumerate(sorted(sched.timesteps.tolist())):
        x_t, out = torch.randn(2, 2, 4, 3, 8, 8, generator=g, dtype=torch.float64).unbind(0)
        ref = sched.step(out, t, x_t, eta=0.0).prev_sample
        t_n_k, t_n = solver_timesteps(torch.tensor([index, index]))
        assert t_n_k[0] == t
        ours = ddim_solver_step(out, x_t, t_n_k, t_n, schedule, prediction_type)
        assert torch.allclose(ours, ref, rtol=0, atol=1e-12), t
