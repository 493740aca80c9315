"""The trainer on tiny teachers of the real classes (CPU, seconds): what it updates, what it writes,
how it resumes, and how it reports bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mcm.distill import DistillConfig, distillation_step
from mcm.sampler import sample_consistency
from mcm.schedule import NoiseSchedule, lcm_timesteps
from mcm.weights import load_adapter, merge_lora
from tests.tiny_runs import tiny_run_flags
from training import distill, toy
from training.data import Batches, VideoClips
from training.models import call_unet, tiny_teacher
from training.samples import encode_mp4
from training.setup import new_run_dir
from training.toy.world import toy_clip

ROOT = Path(__file__).resolve().parents[1]


def args_for(tmp_path, data, *extra):
    return distill.parse_args(
        tiny_run_flags(
            tmp_path / "runs",
            data,
            "--max-train-steps",
            "2",
            "--checkpointing-steps",
            "1",
            "--disc-backbone",
            "tiny",
            *extra,
        )
    )


def test_official_defaults_and_toy_defaults():
    official = distill.parse_args(["--teacher", "x/y", "--data", "shards"])
    assert (official.learning_rate, official.lora_rank, official.lora_alpha) == (5e-6, 64, 64.0)
    assert (official.w_min, official.w_max, official.loss_type, official.huber_c) == (5.0, 15.0, "huber", 0.001)
    assert (official.motion_repr, official.lambda_real, official.ema_decay) == ("learn", 0.5, 0.95)
    assert (official.beta_schedule, official.timestep_scaling, official.num_ddim_timesteps) == (
        "auto",
        4.0,
        50,
    )  # auto: the teacher's
    assert (official.max_grad_norm, official.lr_warmup_steps, official.scale_lr) == (10.0, 500, True)
    default = distill.parse_args([])
    assert default.teacher == str(toy.TEACHER) and default.data == "toy" and default.toy_eval
    assert default.disc_real == "images" and default.max_train_steps == toy.PRESET["max_train_steps"]
    assert not official.toy_eval
    assert distill.parse_args(["--max-train-steps", "3"]).max_train_steps == 3
    assert (
        distill.parse_args(["--lora-rank=4"]).lora_rank == 4 and distill.parse_args(["--lora-rank", "4"]).lora_rank == 4
    )
    # a documented default, no longer set inside train()
    assert (default.frame_interval, official.frame_interval) == (1, 8)
    assert official.disc_augment and not default.disc_augment and distill.parse_args(["--disc-augment"]).disc_augment


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("teacher: tiny-modelscope\ndata: toy\nlambda-real: 0.25\nmax_train_steps: 7\n")
    args = distill.parse_args(["--config", str(cfg), "--max-train-steps", "9"])
    assert (args.teacher, args.lambda_real, args.max_train_steps) == ("tiny-modelscope", 0.25, 9)
    cfg.write_text("max_train_steps: 7\n")  # the toy preset (no teacher, no data) sits below the file
    assert distill.parse_args(["--config", str(cfg)]).max_train_steps == 7
    cfg.write_text("colour: red\n")
    with pytest.raises(SystemExit):
        distill.parse_args(["--config", str(cfg)])


def _frozen_state(teacher):
    return {
        "vae": {k: v.clone() for k, v in teacher.vae.state_dict().items()},
        "text": {k: v.clone() for k, v in teacher.text_encoder.state_dict().items()},
        "unet": {k: v.clone() for k, v in teacher.unet.state_dict().items()},
    }


def _base_unet_state(peft_unet):
    """The wrapped UNet's own weights under their original names (LoRA factors left out)."""
    out = {}
    for k, v in peft_unet.state_dict().items():
        if "lora_" in k:
            continue
        out[k.removeprefix("base_model.model.").replace(".base_layer.", ".")] = v
    return out


def test_a_run_updates_only_lora_and_head_and_writes_a_node_adapter(tmp_path, toy_data):
    teacher = tiny_teacher("animatediff")
    before = _frozen_state(teacher)
    run = distill.train(args_for(tmp_path, toy_data), teacher=teacher)
    after = _base_unet_state(teacher.unet)
    assert set(after) == set(before["unet"])
    assert all(torch.equal(after[k], before["unet"][k]) for k in after), "teacher weights changed"
    assert all(torch.equal(v, before["vae"][k]) for k, v in teacher.vae.state_dict().items())
    assert all(torch.equal(v, before["text"][k]) for k, v in teacher.text_encoder.state_dict().items())

    adapter = load_adapter(run / "adapter.safetensors")
    assert adapter.metadata_source == "file" and adapter.meta.base == "sd15-animatediff"
    assert adapter.meta.beta_schedule == "scaled_linear" and adapter.meta.timestep_scaling == 4.0
    assert adapter.meta.training["motion_repr"] == "learn" and adapter.meta.training["step"] == 2
    assert len(adapter.layers) == len(teacher.lora_targets())
    assert any(w.up.abs().max() > 0 for w in adapter.layers.values())  # B left its zero init
    assert (run / "final" / "peft" / "adapter_config.json").exists()
    for step in (1, 2):
        ckpt = run / f"checkpoint-{step}"
        assert (ckpt / "adapter.safetensors").exists() and (ckpt / "optimizer.pt").exists()
        extra = load_adapter(ckpt / "adapter.safetensors")
        assert extra.meta.training["step"] == step
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 3

    # the adapter samples through mcm in 1/2/4 steps on a fresh teacher
    fresh = tiny_teacher("animatediff")
    state = merge_lora(fresh.unet.state_dict(), adapter.layers)
    fresh.unet.load_state_dict(state)
    cond = fresh.text_encoder(fresh.tokenizer(["a red square moving left"]))[0]
    schedule = NoiseSchedule(adapter.meta.beta_schedule)
    for steps in (1, 2, 4):
        z = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
        with torch.no_grad():
            x = sample_consistency(
                lambda x, t, c: call_unet(fresh.unet, x, t, c), z, lcm_timesteps(steps), schedule, cond
            )
        assert x.shape == z.shape and torch.isfinite(x).all()


def test_resume_continues_from_the_latest_checkpoint(tmp_path, toy_data):
    run = distill.train(args_for(tmp_path, toy_data), teacher=tiny_teacher("animatediff"))
    args = args_for(tmp_path, toy_data, "--resume", str(run), "--max-train-steps", "3")
    distill.train(args, teacher=tiny_teacher("animatediff"))
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3]
    assert (run / "checkpoint-3").exists() and (run / "final-3" / "adapter.safetensors").exists()
    assert load_adapter(run / "final-3" / "adapter.safetensors").meta.training["step"] == 3


def test_modelscope_teacher_runs_through_the_same_script(tmp_path, toy_data):
    args = args_for(
        tmp_path, toy_data, "--teacher", "tiny-modelscope", "--teacher-kind", "modelscope", "--max-train-steps", "1"
    )
    run = distill.train(args, teacher=tiny_teacher("modelscope"))
    adapter = load_adapter(run / "adapter.safetensors")
    assert adapter.meta.base == "modelscope-t2v" and adapter.temporal_layers()


def test_distillation_lowers_the_consistency_error_on_held_out_noise(tmp_path, toy_data):
    teacher = tiny_teacher("animatediff")
    schedule = NoiseSchedule("scaled_linear")
    batch = next(Batches(VideoClips(toy_data, 4, 1, 16, "center", seed=99), 2))
    with torch.no_grad():
        frames = batch["video"].permute(0, 2, 1, 3, 4).reshape(-1, 3, 16, 16)
        x0 = teacher.vae.encode(frames).latent_dist.mean * teacher.scaling_factor
        x0 = x0.reshape(2, 4, 4, 8, 8).permute(0, 2, 1, 3, 4)
        cond = teacher.text_encoder(teacher.tokenizer(batch["caption"]))[0]
        uncond = teacher.text_encoder(teacher.tokenizer(["", ""]))[0]
    g = torch.Generator().manual_seed(1234)
    held_out = [(torch.randint(0, 50, (2,), generator=g), torch.randn(x0.shape, generator=g)) for _ in range(4)]

    def error(unet):
        def model(x, t, c):
            return call_unet(unet, x, t, c)

        with torch.no_grad():
            return sum(
                distillation_step(
                    model,
                    lambda x, t, c: call_unet(teacher_unet, x, t, c),
                    x0,
                    cond,
                    uncond,
                    schedule,
                    DistillConfig(loss_type="l2"),
                    index=i,
                    w=torch.full((2,), 7.0, dtype=torch.float64),
                    noise=n,
                )["loss"].item()
                for i, n in held_out
            )

    teacher_unet = tiny_teacher("animatediff").unet
    before = error(teacher_unet)  # the untrained student is the teacher
    run = distill.train(
        args_for(
            tmp_path,
            toy_data,
            "--max-train-steps",
            "25",
            "--checkpointing-steps",
            "100",
            "--motion-repr",
            "raw",
            "--w-min",
            "7",
            "--w-max",
            "7",
            "--lambda-real",
            "1",
            "--no-disc",
        ),
        teacher=teacher,
    )
    trained = tiny_teacher("animatediff").unet
    trained.load_state_dict(merge_lora(trained.state_dict(), load_adapter(run / "adapter.safetensors").layers))
    after = error(trained)
    assert after < 0.8 * before, (before, after)


# --- data --------------------------------------------------------------------------------------------


def test_corrupt_and_short_samples_are_skipped_and_counted(tmp_path):
    shard = tmp_path / "bad.tar"
    clip, caption = toy_clip(0, frames=8, size=16)
    items = [
        ("a.mp4", encode_mp4(clip)),
        ("a.json", json.dumps({"caption": caption}).encode()),
        ("b.mp4", b"not a video"),
        ("b.json", b'{"caption": "broken"}'),
        ("c.mp4", encode_mp4(clip[:2])),
        ("c.json", b'{"caption": "too short"}'),
    ]
    with tarfile.open(shard, "w") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = VideoClips(tmp_path, num_frames=4, interval=1, size=16, crop="center")
    it = iter(ds)
    got = [next(it) for _ in range(6)]
    good = [g for g in got if "video" in g]
    assert len(good) == 2 and good[0]["caption"] == caption and good[0]["video"].shape == (3, 4, 16, 16)
    assert ds.stats["skipped"] == 4 and ds.stats["ok"] == 2
    assert sum("skipped" in g for g in got[:3]) == 2


def test_a_folder_of_videos_with_captions(tmp_path):
    clip, caption = toy_clip(3, frames=8, size=16)
    (tmp_path / "v1.mp4").write_bytes(encode_mp4(clip))
    (tmp_path / "v2.mp4").write_bytes(encode_mp4(clip))
    (tmp_path / "v2.txt").write_text("from a sidecar")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "v1.mp4", "caption": caption}) + "\n")
    ds = VideoClips(tmp_path, num_frames=4, interval=2, size=16, crop="random")
    captions = {next(iter(ds))["caption"] for _ in range(1)} | {s["caption"] for s, _ in zip(iter(ds), range(4))}
    assert captions == {caption, "from a sidecar"}


# --- bad input ---------------------------------------------------------------------------------------


def _run(*args):
    return subprocess.run(
        [sys.executable, "training/distill.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    proc = _run(
        "--teacher", "tiny-animatediff", "--data", tmp_path / "nowhere", "--output-dir", tmp_path
    )  # the real CLI, once
    assert proc.returncode == 2 and "no such video dataset" in proc.stderr

    def run(*args):  # the same entry point in this process (a subprocess costs seconds of imports per case)
        try:
            code = distill.main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        return code, capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    code, err = run("--teacher", "tiny-animatediff", "--data", tmp_path / "empty", "--output-dir", tmp_path)
    assert code == 2 and "empty video dataset" in err
    code, err = run("--teacher", tmp_path / "no-teacher", "--data", "toy", "--output-dir", tmp_path)
    assert code == 2 and "no such folder" in err
    code, err = run("--motion-repr", "optical-flow")
    assert code == 2 and "invalid choice: 'optical-flow'" in err
    code, err = run("--resolution", "20", "--output-dir", tmp_path, "--max-train-steps", "1")
    assert code == 2 and "--resolution 20: must be a multiple of 8" in err
    code, err = run("--num-frames", "40", "--output-dir", tmp_path)
    assert code == 2 and "--num-frames 40: this teacher's motion module takes at most 32 frames" in err
    code, err = run("--teacher", "tiny-animatediff")
    assert code == 2 and "--teacher and --data go together" in err
    code, err = run("--checkpointing-steps", "0")
    assert code == 2 and "--checkpointing-steps 0: must be at least 1" in err and "Traceback" not in err


def test_an_earlier_run_is_never_reused(tmp_path):
    first = new_run_dir(str(tmp_path), "same")
    (first / "adapter.safetensors").write_bytes(b"earlier")
    second = new_run_dir(str(tmp_path), "same")
    assert second != first and second.name == "same-2" and (first / "adapter.safetensors").read_bytes() == b"earlier"


def test_two_processes_average_their_lora_gradients(tmp_path, toy_data):
    """Two CPU processes (torchrun; accelerate picks them up) on different data: the LoRA stays identical."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "training/distill.py",
        *tiny_run_flags(
            tmp_path / "runs",
            toy_data,
            "--max-train-steps",
            "2",
            "--checkpointing-steps",
            "10",
            "--disc-backbone",
            "tiny",
            run_name="ddp",
            accumulation=2,
        ),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["processes_in_sync"] is True


def test_dry_run_reports_time_per_part_and_peak_memory(tmp_path, toy_data):
    run = distill.train(
        args_for(tmp_path, toy_data, "--dry-run", "--lambda-real", "0"), teacher=tiny_teacher("animatediff")
    )
    report = json.loads((run / "dry_run.json").read_text())
    parts = set(report["seconds"])
    assert {
        "data",
        "encode",
        "student one-step sample",
        "distillation step (student, teacher x2, target)",
        "backward",
        "optimizer",
        "adversarial: decode frames, discriminator (generator side)",
        "discriminator step",
    } <= parts
    assert report["peak_memory_gib"] > 0 and not (run / "checkpoint-1").exists()


@pytest.mark.parametrize("augment", [True, False])
def test_disc_augment_switches_the_augmentation_of_both_sides(tmp_path, toy_data, monkeypatch, augment):
    import mcm.discriminator
    from training.adversarial import Adversary

    calls = []
    original = mcm.discriminator.diff_augment
    monkeypatch.setattr(mcm.discriminator, "diff_augment", lambda x, g=None: calls.append(len(x)) or original(x, g))
    args = args_for(tmp_path, toy_data, "--disc-augment" if augment else "--no-disc-augment")
    adv = Adversary(
        args,
        tiny_teacher("animatediff"),
        torch.device("cpu"),
        SimpleNamespace(num_processes=1),
        1e-3,
        10,
        torch.Generator().manual_seed(0),
    )
    c = adv.text(["a red square", "a blue circle"], "cpu")
    _, fake, c_fake = adv.generator_term(torch.randn(2, 4, 4, 8, 8), c)
    adv.discriminator_step(torch.rand(4, 3, 16, 16) * 2 - 1, c_fake, fake, c_fake, 0)
    assert calls == ([4, 4, 4] if augment else [])  # generator side, then real and fake in the discriminator step


def test_adversarial_gradient_reaches_only_the_decoded_frames_and_the_backbone_stays_frozen(tmp_path, toy_data):
    from training.adversarial import Adversary

    teacher = tiny_teacher("animatediff")
    args = args_for(tmp_path, toy_data)
    adv = Adversary(args, teacher, torch.device("cpu"), None, 1e-3, 10, torch.Generator().manual_seed(0))
    backbone = {k: v.clone() for k, v in adv.disc.backbone.state_dict().items()}
    model_pred = torch.randn(2, 4, 4, 8, 8, requires_grad=True)
    term, fake, c = adv.generator_term(model_pred, adv.text(["a red square", "a blue circle"], "cpu"))
    term.backward()
    judged = [f for f in range(4) if model_pred.grad[:, :, f].abs().sum() > 0]
    assert len(judged) == 2 and fake.shape == (4, 3, 16, 16)
    assert all(p.grad is None for p in adv.disc.trainable_parameters())  # the generator term does not train D
    real = adv.real_from_video(torch.rand(2, 3, 4, 16, 16) * 2 - 1)
    adv.accelerator = type("OneProcess", (), {"num_processes": 1})()
    adv.discriminator_step(real, c, fake, c, step=1)
    assert set(adv.last) >= {"g_loss", "d_loss", "real_logit", "fake_logit", "d_accuracy", "gp", "gp_weight"}
    assert all(torch.equal(v, backbone[k]) for k, v in adv.disc.backbone.state_dict().items())


def test_image_set_errors_and_skips(tmp_path):
    from PIL import Image

    from training.data import DataError, ImageCaptions

    with pytest.raises(DataError, match="no such image dataset"):
        ImageCaptions(tmp_path / "missing", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty image dataset"):
        ImageCaptions(tmp_path / "empty", 16)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "ok.png")
    (folder / "ok.txt").write_text("a red square")
    Image.new("RGB", (8, 8)).save(folder / "small.png")
    (folder / "small.txt").write_text("too small")
    Image.new("RGB", (32, 32)).save(folder / "nocaption.png")
    ds = ImageCaptions(folder, 16)
    items = [x for x, _ in zip(iter(ds), range(6))]
    good = [x for x in items if "image" in x]
    assert good and all(x["caption"] == "a red square" and x["image"].shape == (3, 16, 16) for x in good)
    assert ds.stats["skipped:image too small"] >= 1 and ds.stats["skipped:no caption"] >= 1
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    Image.new("RGB", (8, 8)).save(only_bad / "small.png")
    (only_bad / "small.txt").write_text("x")
    with pytest.raises(DataError, match="no usable image"):
        list(zip(iter(ImageCaptions(only_bad, 16)), range(5)))


def test_sparse_decode_benchmark_runs_and_decoding_fewer_frames_costs_less(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sparse_decode", ROOT / "bench" / "bench_sparse_decode.py")
    bench_sparse_decode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_sparse_decode)

    bench_sparse_decode.main(["--vae", "tiny", "--size", "64", "--frames", "16", "--judged", "2", "--repeats", "3"])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ratio")][0]
    assert float(line.split("=")[1].split()[0]) < 0.6, line


def test_a_single_file_unet_in_ldm_or_diffusers_layout_loads_into_the_teacher(tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from mcm.weights import UNetLayout, diffusers_to_ldm
    from training.models import TINY_BLOCKS, TINY_UNET, load_unet_checkpoint

    blocks = TINY_BLOCKS["animatediff"]
    torch.manual_seed(1)
    source = UNet2DConditionModel(**TINY_UNET, **blocks)
    layout = UNetLayout.from_diffusers_config(dict(source.config))
    whole = {
        f"model.diffusion_model.{diffusers_to_ldm(k.rsplit('.', 1)[0], layout)}.{k.rsplit('.', 1)[1]}": v
        for k, v in source.state_dict().items()
    }
    whole["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # a whole-checkpoint's VAE, ignored
    save_file(whole, tmp_path / "sd_single_file.safetensors")
    save_file(source.state_dict(), tmp_path / "diffusers_unet.safetensors")
    for name in ("sd_single_file.safetensors", "diffusers_unet.safetensors"):
        torch.manual_seed(2)
        target = UNet2DConditionModel(**TINY_UNET, **blocks)
        load_unet_checkpoint(target, tmp_path / name)
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items()), name
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3)}, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="does not fit the teacher's UNet"):
        load_unet_checkpoint(UNet2DConditionModel(**TINY_UNET, **blocks), tmp_path / "partial.safetensors")
    torch.save({"x": torch.zeros(1)}, tmp_path / "unet.ckpt")
    with pytest.raises(FileNotFoundError, match="pickle"):
        load_unet_checkpoint(UNet2DConditionModel(**TINY_UNET, **blocks), tmp_path / "unet.ckpt")
