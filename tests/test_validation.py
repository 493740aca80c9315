"""Validation during a run (training/validation.py): the files and the metrics column it writes, that its
videos are what mcm.sampler gives for the saved adapter, that its error is the held-out consistency error,
that --keep-best keeps the adapter of the lowest logged error, and that it leaves training unchanged."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from mcm.distill import DistillConfig, distillation_step
from mcm.sampler import sample_consistency
from mcm.schedule import NoiseSchedule, lcm_timesteps
from mcm.weights import load_adapter
from tests.tiny_runs import tiny_run_flags
from training import distill
from training.data import Batches, VideoClips
from training.models import call_unet, make_student, tiny_teacher
from training.validation import DEFAULT_PROMPTS, HELD_OUT_SEED


def args_for(tmp_path, data, *extra):
    return distill.parse_args(
        tiny_run_flags(tmp_path / "runs", data, "--checkpointing-steps", "1", "--no-disc", *extra, learning_rate="1e-2")
    )


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory, toy_data):
    tmp = tmp_path_factory.mktemp("validated")
    args = args_for(tmp, toy_data, "--max-train-steps", "4", "--validation-steps", "2", "--keep-best")
    return distill.train(args, teacher=tiny_teacher("animatediff"))


def logged_errors(run) -> dict[int, str]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(row["step"]): row["val_consistency_error"] for row in csv.DictReader(f)}


def test_validation_writes_videos_for_1_2_4_steps_and_the_error_column(validated_run):
    errors = logged_errors(validated_run)
    assert errors[1] == errors[3] == "" and float(errors[2]) > 0 and float(errors[4]) > 0
    for step in (2, 4):
        folder = validated_run / "validation" / f"step-{step}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["prompts.txt"] + [f"mcm-{n}-step.{ext}" for n in (1, 2, 4) for ext in ("gif", "png", "mp4")]
        )
        assert folder.joinpath("prompts.txt").read_text().splitlines() == [
            f"seed {i}: {p}" for i, p in enumerate(DEFAULT_PROMPTS)
        ]
        gif = Image.open(folder / "mcm-4-step.gif")
        assert (gif.n_frames, gif.size) == (4, (16 * len(DEFAULT_PROMPTS), 16))
    assert not (validated_run / "validation" / "step-1").exists()


def _fresh_student(checkpoint):
    """The exported adapter loaded into a fresh student (the PEFT folder into a new LoRA UNet)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    teacher = tiny_teacher("animatediff")
    student = make_student(teacher, 4, 4.0)
    set_peft_model_state_dict(student, load_file(checkpoint / "peft" / "adapter_model.safetensors"))
    return teacher, student.eval()


def test_validation_videos_are_what_mcm_sampler_gives_for_the_saved_adapter(validated_run):
    checkpoint = validated_run / "checkpoint-4"
    meta = load_adapter(checkpoint / "adapter.safetensors").meta
    teacher, student = _fresh_student(checkpoint)
    for steps in (1, 2, 4):
        strip = np.asarray(Image.open(validated_run / "validation" / "step-4" / f"mcm-{steps}-step.png").convert("RGB"))
        for seed, prompt in enumerate(DEFAULT_PROMPTS):
            g = torch.Generator().manual_seed(seed)
            z = torch.randn((1, 4, 4, 8, 8), generator=g)
            with torch.no_grad():
                cond = teacher.text_encoder(teacher.tokenizer([prompt]))[0]
                x = sample_consistency(
                    lambda x, t, c: call_unet(student, x, t, c),
                    z,
                    lcm_timesteps(steps),
                    NoiseSchedule(meta.beta_schedule),
                    cond,
                    prediction_type=meta.prediction_type,
                    timestep_scaling=meta.timestep_scaling,
                    noise_sampler=lambda like, g=g: torch.randn(like.shape, generator=g),
                )
                pixels = teacher.vae.decode(x[0].transpose(0, 1) / teacher.scaling_factor).sample
            frames = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            row = strip[seed * 16 : (seed + 1) * 16].reshape(16, 4, 16, 3).transpose(1, 0, 2, 3)
            assert np.abs(row.astype(int) - frames.astype(int)).max() <= 1, (steps, seed)


def test_the_logged_error_is_the_consistency_error_on_held_out_noise(validated_run, toy_data):
    """The definition of test_training's held-out check: the l2 distillation loss at fixed grid points,
    noise and guidance, here drawn from the documented seed, on the checkpoint of that step."""
    teacher, student = _fresh_student(validated_run / "checkpoint-2")
    batch = next(Batches(VideoClips(toy_data, 4, 1, 16, "center", seed=HELD_OUT_SEED), 2))
    g = torch.Generator().manual_seed(HELD_OUT_SEED)
    with torch.no_grad():
        frames = batch["video"].permute(0, 2, 1, 3, 4).reshape(-1, 3, 16, 16)
        x0 = (
            (teacher.vae.encode(frames).latent_dist.sample(g) * teacher.scaling_factor)
            .reshape(2, 4, 4, 8, 8)
            .permute(0, 2, 1, 3, 4)
        )
        cond = teacher.text_encoder(teacher.tokenizer(batch["caption"]))[0]
        uncond = teacher.text_encoder(teacher.tokenizer(["", ""]))[0]
        draws = [(torch.randint(0, 50, (2,), generator=g), torch.randn(x0.shape, generator=g)) for _ in range(4)]
        plain = tiny_teacher("animatediff").unet
        losses = [
            distillation_step(
                lambda x, t, c: call_unet(student, x, t, c),
                lambda x, t, c: call_unet(plain, x, t, c),
                x0,
                cond,
                uncond,
                NoiseSchedule(),
                DistillConfig(loss_type="l2"),
                index=i,
                noise=n,
                w=torch.full((2,), 10.0, dtype=torch.float64),
            )["loss"].item()
            for i, n in draws
        ]
    assert float(logged_errors(validated_run)[2]) == pytest.approx(sum(losses) / 4, rel=1e-4)


def test_keep_best_keeps_the_adapter_of_the_lowest_logged_error(validated_run):
    errors = {s: float(e) for s, e in logged_errors(validated_run).items() if e}
    best_step = min(errors, key=errors.get)
    best = load_adapter(validated_run / "best" / "adapter.safetensors")
    same = load_adapter(validated_run / f"checkpoint-{best_step}" / "adapter.safetensors")
    assert best.meta.training["step"] == best_step
    assert all(torch.equal(best.layers[k].up, same.layers[k].up) for k in same.layers)
    assert (validated_run / "best" / "best.json").exists() and (validated_run / "best" / "peft").is_dir()
    assert not [p.name for p in validated_run.iterdir() if p.name.startswith(".best")]


def test_validation_leaves_training_unchanged_and_is_off_for_the_toy_default(tmp_path, toy_data):
    assert (
        distill.parse_args([]).validation_steps == 0
        and distill.parse_args(["--teacher", "x/y", "--data", "d"]).validation_steps == 500
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left slowly\n")
    runs = [
        distill.train(
            args_for(
                tmp_path,
                toy_data,
                "--max-train-steps",
                "2",
                "--validation-steps",
                n,
                "--validation-prompts",
                str(prompts),
            ),
            teacher=tiny_teacher("animatediff"),
        )
        for n in ("1", "0")
    ]
    with_validation, without = (load_adapter(r / "adapter.safetensors") for r in runs)
    assert all(torch.equal(with_validation.layers[k].up, without.layers[k].up) for k in without.layers)
    assert (runs[0] / "validation" / "step-2").is_dir() and not (runs[1] / "validation").exists()


def test_unreadable_or_empty_prompt_files_and_keep_best_without_validation_are_refused(tmp_path, toy_data, capsys):
    """Refused when the flags are parsed, before anything is built: exit 2, the flag named, no traceback."""
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    cases = [
        (
            ["--validation-steps", "1", "--validation-prompts", str(tmp_path / "missing.txt")],
            f"--validation-prompts {tmp_path / 'missing.txt'}: cannot read it",
        ),
        (["--validation-steps", "1", "--validation-prompts", str(empty)], f"--validation-prompts {empty}: no prompts"),
        (["--validation-steps", "0", "--keep-best"], "--keep-best needs --validation-steps"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_:
            args_for(tmp_path, toy_data, *extra)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
