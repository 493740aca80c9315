"""One prediction type and one schedule per run: read from the teacher's scheduler config (or the flags),
used by the distillation step, the generated trajectories, the adapter metadata and the sampler. A
v-prediction tiny teacher is checked against diffusers' own DDIM and LCM schedulers."""

from __future__ import annotations

import json

import pytest
import torch

from mcm.sampler import sample_consistency
from mcm.schedule import NoiseSchedule, lcm_timesteps
from mcm.weights import load_adapter, merge_lora
from tests.tiny_runs import tiny_run_flags
from training import distill
from training.models import call_unet, noise_settings, read_scheduler_config, tiny_teacher

V_CONFIG = {
    "_class_name": "DDIMScheduler",
    "prediction_type": "v_prediction",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}


def v_teacher():
    teacher = tiny_teacher("animatediff")
    teacher.scheduler_config, teacher.scheduler_config_path = dict(V_CONFIG), "tiny/scheduler/scheduler_config.json"
    return teacher


def diffusers_scheduler(cls, **extra):
    return cls(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        **extra,
    )


def test_the_scheduler_config_is_read_from_the_teacher_folder(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(V_CONFIG))
    assert read_scheduler_config(str(tmp_path))[0]["prediction_type"] == "v_prediction"
    assert read_scheduler_config(str(tmp_path / "scheduler")) == (None, None)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="scheduler_config.json: not a readable JSON"):
        read_scheduler_config(str(tmp_path))


def test_flag_over_teacher_config_over_default_and_contradictions_are_refused():
    plain = tiny_teacher("animatediff")
    assert (noise_settings(plain).prediction_type, noise_settings(plain).beta_schedule) == ("epsilon", "scaled_linear")
    assert noise_settings(plain, "v_prediction", "linear").prediction_type == "v_prediction"
    assert noise_settings(plain, "v_prediction", "linear").beta_schedule == "linear"
    teacher = v_teacher()
    assert noise_settings(teacher).prediction_type == "v_prediction"
    assert noise_settings(teacher, "v_prediction", "scaled_linear").prediction_type == "v_prediction"
    with pytest.raises(ValueError, match=r"--prediction-type epsilon contradicts tiny/scheduler/scheduler_config.json"):
        noise_settings(teacher, "epsilon")
    with pytest.raises(ValueError, match=r"--beta-schedule linear contradicts"):
        noise_settings(teacher, "auto", "linear")
    for key, value in (
        ("beta_end", 0.02),
        ("trained_betas", [0.1]),
        ("prediction_type", "flow"),
        ("rescale_betas_zero_snr", True),
    ):
        teacher.scheduler_config = {**V_CONFIG, key: value}
        with pytest.raises(ValueError, match=key):
            noise_settings(teacher)


def _spy(monkeypatch):
    """The first call of the trainer's distillation step and one-step sample (inputs and outputs), and
    the prediction type of every call."""
    calls = {"step": [], "generated": []}
    step, generated = distill.distillation_step, distill.generated_x0

    def spy_step(student, teacher, x0, cond, uncond, schedule, config, **kw):
        out = step(student, teacher, x0, cond, uncond, schedule, config, **kw)
        keep = {k: out[k].detach().clone() for k in ("x_t", "x_prev", "target", "t_start", "t_end")}
        calls["step"].append(
            {"pt": config.prediction_type, "cond": cond.clone(), "uncond": uncond.clone(), "w": kw["w"], **keep}
        )
        return out

    def spy_generated(student, noise, cond, schedule, prediction_type="epsilon"):
        out = generated(student, noise, cond, schedule, prediction_type)
        calls["generated"].append(
            {"pt": prediction_type, "noise": noise.clone(), "cond": cond.clone(), "x0": out.clone()}
        )
        return out

    monkeypatch.setattr(distill, "distillation_step", spy_step)
    monkeypatch.setattr(distill, "generated_x0", spy_generated)
    return calls


def test_a_v_prediction_teacher_is_trained_recorded_and_sampled_as_v(tmp_path, toy_data, monkeypatch):
    from diffusers import DDIMScheduler, LCMScheduler

    calls = _spy(monkeypatch)
    args = distill.parse_args(
        tiny_run_flags(
            tmp_path / "runs",
            toy_data,
            "--max-train-steps",
            "2",
            "--checkpointing-steps",
            "100",
            "--train-batch-size",
            "2",
            "--no-disc",
            "--lambda-real",
            "0",
            "--motion-repr",
            "raw",
            learning_rate="1e-2",
        )
    )
    run = distill.train(args, teacher=v_teacher())
    assert {c["pt"] for c in calls["step"] + calls["generated"]} == {"v_prediction"} and len(calls["generated"]) == 2
    unet = tiny_teacher("animatediff").unet  # the untrained student (zero LoRA) of the first micro-batch is the teacher

    def model(x, t, c):
        return call_unet(unet, x, t.reshape(-1), c)

    ddim = diffusers_scheduler(DDIMScheduler)
    ddim.set_timesteps(50)
    with torch.no_grad():
        first = calls["generated"][0]  # the one-step sample from t = 999
        v = model(first["noise"], torch.full((2,), 999), first["cond"])
        expected = ddim.step(v, 999, first["noise"]).pred_original_sample
        torch.testing.assert_close(first["x0"], expected, atol=1e-4, rtol=1e-4)

        step = calls["step"][0]  # the teacher's guided DDIM hop and the consistency target, both read as v
        for i in range(2):
            t, t_end, x_t = int(step["t_start"][i]), int(step["t_end"][i]), step["x_t"][i : i + 1]
            v_c, v_u = (
                model(x_t, torch.tensor([t]), step["cond"][i : i + 1]),
                model(x_t, torch.tensor([t]), step["uncond"][i : i + 1]),
            )
            v_g = v_c + float(step["w"][i]) * (v_c - v_u)
            # t = 19 hops to ᾱ_0 in both (the clamp; set_alpha_to_one=False)
            torch.testing.assert_close(
                step["x_prev"][i : i + 1], ddim.step(v_g, t, x_t).prev_sample, atol=1e-4, rtol=1e-4
            )
            lcm = diffusers_scheduler(LCMScheduler, timestep_scaling=4.0)
            lcm.set_timesteps(timesteps=[t_end])
            x_prev = step["x_prev"][i : i + 1]
            target = lcm.step(model(x_prev, torch.tensor([t_end]), step["cond"][i : i + 1]), t_end, x_prev).denoised
            torch.testing.assert_close(step["target"][i : i + 1], target, atol=1e-4, rtol=1e-4)

    adapter = load_adapter(run / "adapter.safetensors")
    assert adapter.meta.prediction_type == "v_prediction" and adapter.meta.beta_schedule == "scaled_linear"
    _sampled_as_v(adapter)


def _sampled_as_v(adapter):
    from diffusers import LCMScheduler

    trained = tiny_teacher("animatediff").unet
    trained.load_state_dict(merge_lora(trained.state_dict(), adapter.layers))
    teacher = tiny_teacher("animatediff")
    with torch.no_grad():
        cond = teacher.text_encoder(teacher.tokenizer(["a red square moving left"]))[0]
    z = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(7))

    def ours(prediction_type):
        g = torch.Generator().manual_seed(8)
        return sample_consistency(
            lambda x, t, c: call_unet(trained, x, t, c),
            z,
            lcm_timesteps(4),
            NoiseSchedule(adapter.meta.beta_schedule),
            cond,
            prediction_type=prediction_type,
            timestep_scaling=adapter.meta.timestep_scaling,
            noise_sampler=lambda x: torch.randn(x.shape, generator=g),
        )

    lcm = diffusers_scheduler(LCMScheduler, timestep_scaling=adapter.meta.timestep_scaling)
    lcm.set_timesteps(4, original_inference_steps=adapter.meta.num_ddim_timesteps)
    assert lcm.timesteps.tolist() == lcm_timesteps(4).tolist()
    g, x = torch.Generator().manual_seed(8), z
    with torch.no_grad():
        for t in lcm.timesteps:
            x, denoised = lcm.step(call_unet(trained, x, t.reshape(1), cond), t, x, generator=g, return_dict=False)
    torch.testing.assert_close(ours(adapter.meta.prediction_type), denoised, atol=1e-4, rtol=1e-4)
    assert (ours("epsilon") - denoised).abs().max() > 1e-2  # read as ε the same model samples something else
