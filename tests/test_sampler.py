"""The multistep consistency sampler: parity with diffusers' LCMScheduler loop, VE/VP and layout
equivalence, callbacks and interruption."""

from __future__ import annotations

import pytest
import torch
from diffusers import LCMScheduler
from einops import rearrange

from mcm.boundary import append_dims
from mcm.sampler import add_noise, comfy_sigmas, sample_consistency, sample_mcm, ve_consistency_output
from mcm.schedule import NoiseSchedule, lcm_timesteps

VIDEO_SHAPE = (2, 4, 3, 8, 8)  # (b, c, f, h, w)


def diffusers_lcm_loop(model, z, steps, beta_schedule, timestep_scaling, prediction_type, seed, float64_table):
    sched = LCMScheduler(
        beta_schedule=beta_schedule, timestep_scaling=timestep_scaling, prediction_type=prediction_type
    )
    if float64_table:
        # diffusers' ᾱ table is float32 and its square roots are taken in float32; holding the same
        # values in float64 makes this a float64 comparison of the algorithm.
        sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.set_timesteps(steps, original_inference_steps=50)
    g = torch.Generator().manual_seed(seed)
    x, denoised = z.clone(), None
    for t in sched.timesteps.tolist():
        x, denoised = sched.step(model(x, t), t, x, generator=g, return_dict=False)
    return denoised


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("timestep_scaling", [4.0, 10.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampling_loop_equals_diffusers_lcm_scheduler(
    toy_eps_model, seeded_noise, steps, beta_schedule, timestep_scaling, prediction_type
):
    z = torch.randn(VIDEO_SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref = diffusers_lcm_loop(toy_eps_model, z, steps, beta_schedule, timestep_scaling, prediction_type, 3, True)
    ours = sample_consistency(
        toy_eps_model,
        z.clone(),
        lcm_timesteps(steps),
        NoiseSchedule(beta_schedule),
        prediction_type=prediction_type,
        timestep_scaling=timestep_scaling,
        noise_sampler=seeded_noise(3),
    )
    # The bar is 1e-6; the two loops agree to the last bit today, so hold them to 1e-12.
    assert (ours - ref).abs().max().item() <= 1e-12
    assert not torch.equal(ours, z)


def test_sampling_agrees_with_stock_float32_diffusers_to_float32_precision(toy_eps_model, seeded_noise):
    z = torch.randn(VIDEO_SHAPE, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ref = diffusers_lcm_loop(toy_eps_model, z, 4, "linear", 4.0, "epsilon", 5, False)
    ours = sample_consistency(
        toy_eps_model, z, lcm_timesteps(4), NoiseSchedule("linear"), noise_sampler=seeded_noise(5)
    )
    assert (ours - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_different_noise_gives_a_different_multistep_sample(toy_eps_model, seeded_noise):
    z = torch.randn(VIDEO_SHAPE, dtype=torch.float64)
    a = sample_consistency(toy_eps_model, z, lcm_timesteps(4), NoiseSchedule(), noise_sampler=seeded_noise(0))
    b = sample_consistency(toy_eps_model, z, lcm_timesteps(4), NoiseSchedule(), noise_sampler=seeded_noise(1))
    assert (a - b).abs().max() > 1e-3


def test_oracle_denoiser_is_recovered_in_one_step():
    schedule = NoiseSchedule("linear")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64)
    z = torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64)
    x_t = add_noise(x0, z, 999, schedule)

    def oracle(x, t, cond):  # the exact ε for this x0
        alpha, sigma = schedule.alpha_sigma(t)
        return (x - append_dims(alpha, x.ndim) * x0) / append_dims(sigma, x.ndim)

    out = sample_consistency(oracle, x_t, lcm_timesteps(1), schedule)
    assert torch.allclose(out, x0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_comfyui_ve_form_equals_the_vp_form(toy_eps_model, steps, beta_schedule):
    """sample_mcm over a ComfyUI-style denoiser (VE x, sigmas) gives the same video as the VP loop."""
    schedule = NoiseSchedule(beta_schedule)
    timesteps = lcm_timesteps(steps)
    sigmas = comfy_sigmas(timesteps, schedule, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    z0 = torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64)
    renoise = [torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64) for _ in range(steps)]

    vp_noise = iter(renoise)
    vp = sample_consistency(toy_eps_model, z0, timesteps, schedule, noise_sampler=lambda like: next(vp_noise))

    def denoiser(x, sigma):  # what ComfyUI's BaseModel + MCM model sampling computes
        s = append_dims(sigma, x.ndim)
        t = schedule.t_at(sigma).round()
        eps = toy_eps_model(x / (1 + s**2).sqrt(), t)
        return ve_consistency_output(eps, x, sigma, schedule)

    ve_noise = iter(renoise)
    x_start = z0 * (1 + sigmas[0] ** 2).sqrt()  # ComfyUI's noise_scaling at sigma_max
    ve = sample_mcm(denoiser, x_start, sigmas, noise_sampler=lambda s, s_next: next(ve_noise), disable=True)
    assert torch.allclose(ve, vp, rtol=0, atol=1e-9)


def test_video_and_frames_as_batch_layouts_agree(toy_eps_model):
    schedule = NoiseSchedule()
    b, c, f, h, w = VIDEO_SHAPE
    g = torch.Generator().manual_seed(4)
    z = torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64)
    noises = [torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64) for _ in range(4)]
    it = iter(noises)
    video = sample_consistency(toy_eps_model, z, lcm_timesteps(4), schedule, noise_sampler=lambda like: next(it))
    it = iter(rearrange(n, "b c f h w -> (b f) c h w") for n in noises)
    frames = sample_consistency(
        toy_eps_model,
        rearrange(z, "b c f h w -> (b f) c h w"),
        lcm_timesteps(4),
        schedule,
        noise_sampler=lambda like: next(it),
    )
    assert video.shape == VIDEO_SHAPE and frames.shape == (b * f, c, h, w)
    assert torch.allclose(rearrange(frames, "(b f) c h w -> b c f h w", b=b), video, atol=1e-12)


def test_model_sees_per_sample_long_timesteps_and_the_cond():
    seen = []

    def model(x, t, cond):
        seen.append((t.dtype, tuple(t.shape), t.unique().tolist(), cond))
        return torch.zeros_like(x)

    sample_consistency(model, torch.zeros(6, 4, 2, 2), lcm_timesteps(2), NoiseSchedule(), cond="ctx")
    assert seen == [(torch.long, (6,), [999], "ctx"), (torch.long, (6,), [499], "ctx")]


def test_float32_inputs_stay_float32(toy_eps_model):
    x = torch.randn(1, 4, 2, 4, 4)
    out = sample_consistency(lambda x, t, c: toy_eps_model(x, t).float(), x, lcm_timesteps(2), NoiseSchedule())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_callback_reports_every_step(toy_eps_model):
    events = []
    sample_consistency(
        toy_eps_model,
        torch.randn(VIDEO_SHAPE, dtype=torch.float64),
        lcm_timesteps(4),
        NoiseSchedule(),
        callback=events.append,
    )
    assert [(e["i"], e["t"], e["total"]) for e in events] == [(0, 999, 4), (1, 759, 4), (2, 499, 4), (3, 259, 4)]
    assert all(e["denoised"].shape == VIDEO_SHAPE for e in events)


def test_interrupt_hook_stops_before_the_next_model_call(toy_eps_model):
    class Stop(Exception):
        pass

    calls = {"n": 0}

    def check():
        calls["n"] += 1
        if calls["n"] == 3:
            raise Stop

    with pytest.raises(Stop):
        sample_consistency(
            toy_eps_model,
            torch.randn(VIDEO_SHAPE, dtype=torch.float64),
            lcm_timesteps(8),
            NoiseSchedule(),
            check_interrupt=check,
        )
    assert toy_eps_model.calls == 2


def test_sample_mcm_callback_and_interrupt(toy_eps_model):
    schedule = NoiseSchedule()
    sigmas = comfy_sigmas(lcm_timesteps(4), schedule)
    events = []
    out = sample_mcm(lambda x, s: x * 0.5, torch.ones(2, 4, 4, 4), sigmas, callback=events.append, disable=True)
    assert [e["i"] for e in events] == [0, 1, 2, 3] and out.shape == (2, 4, 4, 4)
    assert torch.equal(events[0]["sigma"], sigmas[0])
    with pytest.raises(KeyboardInterrupt):
        sample_mcm(
            lambda x, s: x, torch.ones(1, 4), sigmas, check_interrupt=lambda: (_ for _ in ()).throw(KeyboardInterrupt())
        )


def test_comfy_sigmas_are_the_grid_sigmas_then_zero():
    schedule = NoiseSchedule("linear")
    sigmas = comfy_sigmas(lcm_timesteps(4), schedule)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 5 and sigmas[-1] == 0
    assert torch.allclose(
        schedule.t_at(sigmas[:-1].double()), torch.tensor([999.0, 759, 499, 259], dtype=torch.float64), atol=1e-3
    )


@pytest.mark.parametrize("timesteps, match", [([259, 499], "strictly descending"), ([], "non-empty")])
def test_bad_timesteps_are_refused(toy_eps_model, timesteps, match):
    with pytest.raises(ValueError, match=match):
        sample_consistency(
            toy_eps_model, torch.zeros(1, 4, 2, 2), torch.tensor(timesteps, dtype=torch.long), NoiseSchedule()
        )


# --- the teacher's sampler: DDIM with classifier-free guidance -------------------------------------------


def diffusers_ddim_cfg_loop(model, z, cond, uncond, guidance, beta_schedule, prediction_type, steps=50):
    """diffusers' DDIMScheduler on the trailing grid (999, 979, …, 19), η = 0, the last step to ᾱ = 1, with
    the pipelines' CFG: one call on [x; x] with [cond; uncond], then u + guidance · (c − u)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
    )
    sched.alphas_cumprod = sched.alphas_cumprod.double()  # a float64 comparison of the algorithm
    sched.set_timesteps(steps)
    x = z.clone()
    for t in sched.timesteps.tolist():
        c, u = model(torch.cat([x, x]), torch.full((2 * len(x),), t), torch.cat([cond, uncond])).chunk(2)
        x = sched.step(u + guidance * (c - u), t, x, eta=0.0, return_dict=False)[0]
    return x


class CondEpsModel:
    """A fixed nonlinear model whose output depends on a per-sample conditioning vector ``(b, c)``."""

    def __init__(self, base):
        self.base = base

    def __call__(self, x, t, cond):
        return self.base(x, t) + 0.3 * torch.tanh(append_dims(cond.to(x), x.ndim))


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_teacher_ddim_with_cfg_equals_diffusers_ddim_scheduler(toy_eps_model, beta_schedule, prediction_type):
    from mcm.sampler import sample_ddim
    from mcm.schedule import ddim_timesteps

    g = torch.Generator().manual_seed(11)
    z = torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64)
    cond, uncond = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64)
    model = CondEpsModel(toy_eps_model)
    ref = diffusers_ddim_cfg_loop(model, z, cond, uncond, 5.0, beta_schedule, prediction_type)
    ours = sample_ddim(
        model,
        z.clone(),
        ddim_timesteps(50).flip(0),
        NoiseSchedule(beta_schedule),
        cond,
        uncond,
        guidance=5.0,
        prediction_type=prediction_type,
    )
    assert (ours - ref).abs().max().item() <= 1e-10 * ref.abs().max().item()
    without_guidance = sample_ddim(model, z.clone(), ddim_timesteps(50).flip(0), NoiseSchedule(beta_schedule), cond)
    assert (ours - without_guidance).abs().max().item() > 1e-3  # guidance changes the sample


def test_teacher_ddim_recovers_x0_from_an_oracle_on_any_descending_timesteps(seeded_noise):
    """With a model that returns the true noise of a fixed x0, every DDIM step stays on that x0's path."""
    from mcm.sampler import add_noise, sample_ddim

    schedule = NoiseSchedule("scaled_linear")
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(VIDEO_SHAPE, generator=g, dtype=torch.float64), torch.randn(VIDEO_SHAPE, generator=g)
    eps = eps.double()

    def oracle(x, t, cond):
        return eps

    for timesteps in (lcm_timesteps(4), torch.tensor([999, 500, 3])):
        start = add_noise(x0, eps, timesteps[0], schedule)
        out = sample_ddim(oracle, start, timesteps, schedule, guidance=1.0)
        assert (out - x0).abs().max().item() < 1e-9
    with pytest.raises(ValueError, match="strictly descending"):
        sample_ddim(oracle, x0, torch.tensor([259, 499]), schedule)
