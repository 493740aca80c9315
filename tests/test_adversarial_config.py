"""The discriminator in the official configuration (CPU, tiny teacher): one update per optimizer step under
accumulation, a schedule that does not restart, N processes = N x accumulation, loss scaling under reduced
precision, and offloaded VAE / text-encoder calls that always run placed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.test_faults import flags as fault_flags
from tests.test_faults import one_and_two_processes, one_thread  # noqa: F401 - a fixture shared with the fault tests
from training import distill
from training.frozen import is_placed


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one process-wide state: a run with another --mixed-precision needs it reset, before and
    after."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def flags(out: Path, data: Path, *extra) -> list[str]:
    return fault_flags(out, data, "--no-toy-eval", *extra)


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """diffusers' cosine schedule with warm-up, as a multiple of the base lr."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def one_d_update_per_step_on_schedule(run: Path, steps: int, warmup: int, accumulation: int) -> dict:
    """Asserts what an official-like 4-step run (lr and D lr 1e-3, --scale-lr, cosine with ``warmup``, batch 1, 2
    discriminator frames) shows: D updates = optimizer steps = the D schedule's steps, and the lrs that its start,
    middle and end steps (1, 2, 4) used follow both schedules. Returns the run's summary.json."""
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["optimizer_steps"], summary["micro_batches"], summary["discriminator_updates"]) == (
        steps,
        steps * accumulation,
        steps,
    )
    g_lr, d_lr = (
        1e-3 * accumulation / 128,
        1e-3 * accumulation * 2 / 128,
    )  # scaled by total batch (x 2 frames for D) / 128
    for mark, step in (("start", 1), ("middle", 2), ("end", 4)):  # the lrs each step used
        seen = summary["learning_rates"][mark]
        assert seen["generator"] == pytest.approx(g_lr * cosine_factor(step - 1, warmup, steps), abs=1e-12)
        assert seen["discriminator"] == pytest.approx(d_lr * cosine_factor(step - 1, warmup, steps), abs=1e-12)
    state = torch.load(run / f"checkpoint-{steps}" / "optimizer.pt", map_location="cpu", weights_only=True)["adversary"]
    assert state["scheduler"]["last_epoch"] == steps and state["updates"] == steps
    return summary


def test_official_settings_update_the_discriminator_once_per_optimizer_step(tmp_path, toy_data, fresh_accelerate):
    """Accumulation 4, bf16 autocast, --scale-lr, cosine with warm-up: D updates = optimizer steps, and both
    learning rates follow their schedules (before: 4 D updates per step and a D schedule ending at step 1)."""
    steps, warmup, accumulation = 4, 2, 4
    run = distill.train(
        distill.parse_args(
            flags(
                tmp_path,
                toy_data,
                "--max-train-steps",
                steps,
                "--checkpointing-steps",
                10,
                "--gradient-accumulation-steps",
                accumulation,
                "--mixed-precision",
                "bf16",
                "--scale-lr",
                "--lr-scheduler",
                "cosine",
                "--lr-warmup-steps",
                warmup,
                "--train-batch-size",
                1,
                "--disc-lr",
                "1e-3",
                "--run-name",
                "official",
            )
        )
    )
    summary = one_d_update_per_step_on_schedule(run, steps, warmup, accumulation)
    assert [summary["learning_rates"][mark]["step"] for mark in ("start", "middle", "end")] == [1, 2, 4]


def test_an_official_like_run_from_yaml_and_flag_overrides_uses_every_value_it_was_given(
    tmp_path, toy_data, fresh_accelerate
):
    """The official scripts' settings at tiny size through the command line (``distill.main``): a ``--config`` YAML
    (accumulation 4, discriminator on, bf16 autocast, --scale-lr, cosine with warm-up) and ``--flag=value`` overrides of
    some of its values. The run folder's config.yaml holds every value given (the command line's where both set one);
    D updates = optimizer steps; both learning rates follow their schedules at every step; the adapter is the one
    asked for."""
    import yaml

    from mcm.weights import load_adapter

    steps, warmup, accumulation = 4, 2, 4
    from_yaml = {
        "teacher": "tiny-animatediff",
        "data": str(toy_data),
        "output-dir": str(tmp_path),
        "run-name": "official",
        "resolution": 16,
        "num-frames": 4,
        "frame-interval": 1,
        "num-workers": 0,
        "train-batch-size": 1,
        "gradient-accumulation-steps": accumulation,
        "mixed-precision": "bf16",
        "scale-lr": True,
        "learning-rate": 1e-3,
        "lr-scheduler": "cosine",
        "lr-warmup-steps": warmup,
        "max-train-steps": 7,
        "checkpointing-steps": 10,
        "disc": True,
        "disc-backbone": "tiny",
        "disc-lr": 2e-3,
        "lora-rank": 8,
        "lora-alpha": 2.0,
        "beta-schedule": "linear",
        "timestep-scaling": 5.0,
        "toy-eval": False,
    }
    overrides = {"max-train-steps": steps, "lora-rank": 4, "disc-lr": 1e-3, "prediction-type": "v_prediction"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(from_yaml))
    assert distill.main(["--config", str(tmp_path / "run.yaml"), *(f"--{k}={v}" for k, v in overrides.items())]) == 0

    run = tmp_path / "official"
    used = yaml.safe_load((run / "config.yaml").read_text())
    given = {**from_yaml, **overrides}
    assert {k: used[k] for k in given} == given
    one_d_update_per_step_on_schedule(run, steps, warmup, accumulation)
    g_lr = 1e-3 * accumulation / 128  # scaled by total batch / 128
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    for r in rows:  # the lr after each step: the schedule's next value, no restart
        assert float(r["lr"]) == pytest.approx(g_lr * cosine_factor(int(r["step"]), warmup, steps), rel=1e-5, abs=1e-12)
    adapter = load_adapter(run / "adapter.safetensors")
    meta = adapter.meta
    assert (meta.lora_rank, meta.lora_alpha, meta.beta_schedule, meta.prediction_type, meta.timestep_scaling) == (
        4,
        2.0,
        "linear",
        "v_prediction",
        5.0,
    )
    assert adapter.layers and {w.down.shape[0] for w in adapter.layers.values()} == {4}


def test_the_discriminator_schedule_is_sized_in_updates_and_stays_at_its_end(tmp_path, toy_data):
    from training.adversarial import Adversary
    from training.models import tiny_teacher

    args = distill.parse_args(
        flags(
            tmp_path,
            toy_data,
            "--max-train-steps",
            12,
            "--lr-warmup-steps",
            4,
            "--disc-update-every",
            2,
            "--lr-scheduler",
            "cosine",
        )
    )
    adv = Adversary(
        args, tiny_teacher("animatediff"), torch.device("cpu"), None, 1.0, 12, torch.Generator().manual_seed(0)
    )
    assert [adv.due(s) for s in range(5)] == [True, False, True, False, True]
    lrs = []
    for _ in range(10):  # 6 updates in the run (12 steps / 2), then 4 past its end
        lrs.append(adv.optimizer.param_groups[0]["lr"])
        adv.optimizer.step()
        adv.scheduler.step()
    assert lrs[:6] == pytest.approx([cosine_factor(s, 2, 6) for s in range(6)])
    assert adv.optimizer.param_groups[0]["lr"] == 0.0 and lrs[6:] == [0.0] * 4  # diffusers' cosine alone rises again


def test_two_processes_train_the_discriminator_one_process_with_accumulation_trains(tmp_path, toy_data):
    steps = ["--max-train-steps", "3", "--checkpointing-steps", "10", "--train-batch-size", "1", "--disc-lr", "1e-2"]
    one, two = one_and_two_processes(tmp_path, toy_data, steps, flags_of=flags)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (one, two)]
    assert [s["discriminator_updates"] for s in summaries] == [3, 3] and summaries[1]["num_processes"] == 2

    def heads(run):
        return torch.load(run / "checkpoint-3" / "optimizer.pt", map_location="cpu", weights_only=True)["adversary"][
            "heads"
        ]

    from training.adversarial import Adversary
    from training.models import tiny_teacher

    a, b = heads(two), heads(one)
    start = Adversary(
        distill.parse_args(flags(tmp_path, toy_data)),
        tiny_teacher("animatediff"),
        torch.device("cpu"),
        None,
        1.0,
        3,
        None,
    ).disc.heads.state_dict()
    trained = [k for k in b if k.endswith(("weight_orig", ".weight", ".bias"))]
    assert (
        set(a) == set(b) and min((b[k] - start[k]).abs().max() for k in trained if k.endswith("weight_orig")) > 1e-3
    )  # they trained
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), max(
        (a[k] - b[k]).abs().max().item() for k in a
    )


def test_offloaded_vae_and_text_encoder_run_only_while_placed_in_both_branches(tmp_path, toy_data, monkeypatch):
    """--offload-frozen: every text-encoder and VAE call (generator side: captions, video encode, frame decode;
    discriminator side: the real images' captions) runs inside the placement, and the VAE stays placed until the
    adversarial term's backward pass has gone through it."""
    from training.models import tiny_teacher

    monkeypatch.setenv("MCM_TOY_DATA", str(tmp_path / "cache"))  # the toy image set is written there
    teacher = tiny_teacher("animatediff")
    calls = []

    def record(name, module):
        owner = teacher.text_encoder if name == "text" else teacher.vae
        module.register_forward_pre_hook(
            lambda m, a, kw: calls.append((name, is_placed(owner), _rows(a, kw))), with_kwargs=True
        )

    record("text", teacher.text_encoder)
    record("encode", teacher.vae.encoder)
    record("decode", teacher.vae.decoder)
    teacher.vae.decoder.register_full_backward_hook(
        lambda m, gi, go: calls.append(("decode backward", is_placed(teacher.vae), 0))
    )
    distill.train(
        distill.parse_args(
            flags(
                tmp_path,
                toy_data,
                "--max-train-steps",
                2,
                "--checkpointing-steps",
                10,
                "--offload-frozen",
                "--train-batch-size",
                1,
                "--disc-real",
                "images",
                "--disc-images",
                "toy",
            )
        ),
        teacher=teacher,
    )
    assert all(placed for _, placed, _ in calls), [c for c in calls if not c[1]]
    kinds = [(name, rows) for name, _, rows in calls]
    assert kinds.count(("text", 2)) == 2  # the discriminator's real captions (batch 1 x 2 frames), one call per step
    assert kinds.count(("text", 1)) == 3  # the generator's captions per step and the empty caption once
    assert [n for n, _ in kinds].count("decode backward") == 2 and [n for n, _ in kinds].count("encode") == 2
    assert not is_placed(teacher.vae) and not is_placed(teacher.text_encoder)  # every placement was undone


def _rows(args, kwargs) -> int:
    first = args[0] if args else next(iter(kwargs.values()))
    return int(first.shape[0])


def cpu_adversary(args, mixed_precision: str):
    """The run's discriminator side for the tiny teacher on the CPU, in one process at ``mixed_precision``
    (lr 1.0, a run of 10 optimizer steps, seeded)."""
    from training.adversarial import Adversary
    from training.models import tiny_teacher

    return Adversary(
        args,
        tiny_teacher("animatediff"),
        torch.device("cpu"),
        SimpleNamespace(num_processes=1, mixed_precision=mixed_precision),
        1.0,
        10,
        torch.Generator().manual_seed(0),
    )


def disc_inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded discriminator inputs: ``rows`` real and ``rows`` fake 16 px frames in [-1, 1], and text embeddings."""
    g = torch.Generator().manual_seed(1)
    return (
        torch.rand(rows, 3, 16, 16, generator=g) * 2 - 1,
        torch.rand(rows, 3, 16, 16, generator=g) * 2 - 1,
        torch.randn(rows, 32, generator=g),
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_penalty_gradient_survives_reduced_precision(tmp_path, toy_data, monkeypatch, precision):
    """The 1e-5-weighted feature penalty alone (the D loss zeroed), under CPU autocast: the heads' gradient is finite,
    non-zero, and as dense as in fp32 (fp16 through D's loss scaler; in a probe, unscaled fp16 left 5.4% of the
    entries at 0, fp32 0.3%)."""
    import training.adversarial

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError:
        pytest.skip(f"this CPU's autocast has no {precision}")
    monkeypatch.setattr(
        training.adversarial, "discriminator_loss", lambda real, fake, kind: 0 * (real.sum() + fake.sum())
    )
    args = distill.parse_args(flags(tmp_path, toy_data, "--no-disc-augment", "--disc-gp", "1e-5"))

    def heads_gradient(mixed):
        adv = cpu_adversary(args, mixed)
        real, fake, c = disc_inputs(4)
        for _ in range(
            30
        ):  # a scaler starts high (2^16) and halves on each overflow, as in training (those D updates are skipped)
            adv.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=dtype, enabled=mixed != "no"):
                adv.accumulate(real, c, fake, c, share=1.0)
            adv.scaler.unscale_(adv.optimizer)
            grad = torch.cat([p.grad.flatten() for p in adv.params if p.grad is not None])
            adv.scaler.update()
            if torch.isfinite(grad).all():
                break
        return grad, adv.scaler.get_scale() if adv.scaler.is_enabled() else None

    reference, _ = heads_gradient("no")
    grad, scale = heads_gradient(precision)
    assert (scale is not None) == (precision == "fp16") and (
        scale is None or scale >= 2**6
    )  # bf16 has fp32's range: no scaler
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    assert (grad == 0).float().mean() <= (reference == 0).float().mean() + 0.01
    assert torch.nn.functional.cosine_similarity(grad, reference, dim=0) > 0.5


def test_a_non_finite_fp16_discriminator_update_is_skipped_and_the_next_one_applies(tmp_path, toy_data):
    """fp16's loss scaler: a window whose unscaled gradient is not finite changes neither the heads nor the
    learning-rate schedule, counts as skipped and halves the scale; the next finite window is applied."""
    adv = cpu_adversary(distill.parse_args(flags(tmp_path, toy_data, "--no-disc-augment")), "fp16")
    real, fake, c = disc_inputs(2)
    heads = lambda: [p.detach().clone() for p in adv.params]  # noqa: E731
    before, scale, lr_before = heads(), adv.scaler.get_scale(), adv.scheduler.get_last_lr()
    adv.accumulate(real, c, fake, c, share=1.0)
    next(p for p in adv.params if p.grad is not None).grad.view(-1)[0] = float("inf")  # an fp16 overflow
    assert adv.update(step=0) is False
    assert adv.skipped == 1 and adv.updates == 0 and adv.scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, heads())) and adv.scheduler.get_last_lr() == lr_before
    assert all(p.grad is None for p in adv.params)  # the bad gradient does not leak into the next window
    adv.accumulate(real, c, fake, c, share=1.0)
    assert adv.update(step=1) is True
    assert adv.skipped == 1 and adv.updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, heads()))
