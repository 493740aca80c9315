"""training/evaluate.py: detectors (tiny scripted stand-ins with the real call signatures), CLIPSIM with a
tiny random CLIP, reading videos, the table layout, and the command line end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import evaluate as ev
from training.samples import encode_mp4
from training.toy.world import toy_clip


class TinyI3D(torch.nn.Module):
    """Same call as StyleGAN-V's I3D: ``(x uint8 [b, 3, f, h, w], rescale, resize, return_features)``."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 8)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        x = x.float()
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 8, 8), mode="trilinear", align_corners=False)
        stats = torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)
        out = self.proj(stats)
        return out if return_features else out.softmax(-1)


class TinyInception(torch.nn.Module):
    """Same call as NVlabs' Inception: ``(x uint8 [b, 3, h, w], return_features)``."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 16)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = (x.float() - 128.0) / 128.0
        return self.proj(torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1))


def save_detectors(root):
    """``root/i3d.pt`` and ``root/inception.pt``: the tiny stand-ins as TorchScript files."""
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TinyI3D()), str(root / "i3d.pt"))
    torch.jit.save(torch.jit.script(TinyInception()), str(root / "inception.pt"))
    return root / "i3d.pt", root / "inception.pt"


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    return save_detectors(tmp_path_factory.mktemp("detectors"))


def _videos(n, degraded, frames=8, seed=0):
    return [toy_clip(seed + i, frames, 32, degraded)[0] for i in range(n)]


def test_missing_or_bad_detector_names_the_file_and_its_source(tmp_path):
    with pytest.raises(
        ev.DetectorError,
        match=r"nope\.pt: no such detector file; expected i3d_torchscript\.pt, from https://www\.dropbox",
    ):
        ev.load_detector(tmp_path / "nope.pt", ev.I3D_SOURCE)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ev.DetectorError, match=r"bad\.pt: not a TorchScript module.*inception-2015-12-05\.pt"):
        ev.load_detector(bad, ev.INCEPTION_SOURCE)


@pytest.mark.parametrize(
    "raised", [MemoryError("std::bad_alloc"), IndexError("Argument passed to at() was not in the map."), KeyError("x")]
)
def test_a_damaged_detector_file_is_named_whatever_torchscript_raises(tmp_path, monkeypatch, raised):
    """Found by the fuzz campaign (tests/fuzz/test_fuzz_training.py): one byte flipped in a TorchScript file made
    ``torch.jit.load`` raise MemoryError (std::bad_alloc) or IndexError, which ended the evaluator with a traceback.
    (E.g. TinyInception scripted after ``torch.manual_seed(0)``, byte 814 or 762 xor 17, torch 2.13.)"""
    path = tmp_path / "i3d_torchscript.pt"
    path.write_bytes(b"PK\x03\x04")

    def load(*args, **kwargs):
        raise raised

    monkeypatch.setattr(torch.jit, "load", load)
    with pytest.raises(ev.DetectorError, match=r"i3d_torchscript\.pt: not a TorchScript module \(.+\); expected i3d"):
        ev.load_detector(path, ev.I3D_SOURCE)


def test_fvd_and_fid_features_separate_sets(detectors):
    i3d, inception = (ev.load_detector(p, s) for p, s in zip(detectors, (ev.I3D_SOURCE, ev.INCEPTION_SOURCE)))
    clean, clean2, degraded = _videos(6, False), _videos(6, False, seed=100), _videos(6, True)
    feats = {k: ev.i3d_features(v, i3d, frames=8, batch=4) for k, v in (("a", clean), ("b", clean2), ("d", degraded))}
    assert feats["a"].shape == (6, 8)
    near, far = ev.frechet_distance_of(feats["a"], feats["b"]), ev.frechet_distance_of(feats["a"], feats["d"])
    assert 0 <= near < far
    frames = [f for v in clean for f in v]
    img = ev.inception_features(frames, inception, batch=16)
    assert img.shape == (len(frames), 16) and torch.isfinite(img).all()
    with pytest.raises(ValueError, match="FVD needs 16 frames"):
        ev.i3d_features(clean, i3d, frames=16)


def test_clipsim_with_a_tiny_random_clip():
    from transformers import CLIPConfig, CLIPModel

    from training.models import ByteTokenizer

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)  # both towers
    config = CLIPConfig(
        text_config=dict(
            **tower, vocab_size=259, max_position_embeddings=77, bos_token_id=1, eos_token_id=2, pad_token_id=0
        ),
        vision_config=dict(**tower, image_size=30, patch_size=6),
        projection_dim=16,
    )
    scorer = ev.ClipScorer(CLIPModel(config), ByteTokenizer())
    videos = _videos(2, False, frames=3)
    assert scorer.preprocess(videos[0]).shape == (3, 3, 30, 30)
    wide = np.zeros((2, 20, 50, 3), np.uint8)
    assert scorer.preprocess(wide).shape == (2, 3, 30, 30)  # shorter side to 30, centre crop
    value = scorer(videos, ["a red square moving left slowly", "a blue circle moving up quickly"])
    assert np.isfinite(value) and -100 <= value <= 100
    # the mean over frames of 100 x cosine, by hand for the first video
    torch.set_grad_enabled(False)
    text = F.normalize(ev._as_tensor(scorer.model.get_text_features(input_ids=ByteTokenizer()(["x"]))).float(), dim=-1)[
        0
    ]
    image = F.normalize(
        ev._as_tensor(scorer.model.get_image_features(pixel_values=scorer.preprocess(videos[0]))).float(), dim=-1
    )
    assert scorer(videos[:1], ["x"]) == pytest.approx(100 * float((image @ text).mean()), rel=1e-5)
    torch.set_grad_enabled(True)
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        scorer(videos, ["x"])


def test_read_videos_from_mp4_gif_and_frame_folders(tmp_path):
    from PIL import Image

    clip, caption = toy_clip(3, 8, 32)
    (tmp_path / "a.mp4").write_bytes(encode_mp4(clip))
    (tmp_path / "a.txt").write_text(caption)
    frames = [Image.fromarray(f) for f in clip]
    frames[0].save(tmp_path / "b.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (tmp_path / "c").mkdir()
    for i, f in enumerate(frames):
        f.save(tmp_path / "c" / f"{i:03d}.png")
    (tmp_path / "c.txt").write_text("frames caption")
    videos, captions, skipped = ev.read_videos(tmp_path)
    assert skipped == {}
    assert [v.shape for v in videos] == [(8, 32, 32, 3)] * 3
    assert captions == [caption, None, "frames caption"]
    assert np.array_equal(videos[2], clip)  # PNG frames are lossless
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no videos"):
        ev.read_videos(tmp_path / "empty")


def test_table_has_the_papers_layout():
    rows = [
        {"method": "teacher", "steps": 50, "fvd": 100.0, "clipsim": 30.0},
        {"method": "MCM", "steps": 1, "fvd": 200.0, "clipsim": 29.5},
        {"method": "MCM", "steps": 4, "fvd": 150.0, "clipsim": 30.25},
    ]
    table = ev.markdown_table(rows).splitlines()
    assert table[0] == (
        "| method | FVD ↓ 1-step | FVD ↓ 4-step | FVD ↓ 50-step "
        "| CLIPSIM ↑ 1-step | CLIPSIM ↑ 4-step | CLIPSIM ↑ 50-step |"
    )
    assert table[2] == "| teacher | – | – | 100.00 | – | – | 30.00 |"
    assert table[3] == "| MCM | 200.00 | 150.00 | – | 29.50 | 30.25 | – |"


def test_command_line_scores_folders_and_generated_videos(tmp_path, detectors):
    from PIL import Image

    real, fake, images = tmp_path / "real", tmp_path / "fake", tmp_path / "images"
    for folder, degraded in ((real, False), (fake, True)):
        folder.mkdir()
        for i, v in enumerate(_videos(3, degraded, frames=4, seed=10)):
            (folder / f"{i}.mp4").write_bytes(encode_mp4(v))
    images.mkdir()
    for i, v in enumerate(_videos(4, False, frames=1, seed=50)):
        Image.fromarray(v[0]).save(images / f"{i}.png")
    (tmp_path / "prompts.txt").write_text(
        "a red square moving left slowly\n# comment\na blue circle moving up quickly\n"
    )
    i3d, inception = detectors
    out = tmp_path / "eval"
    report = ev.evaluate(
        [
            "--videos",
            f"degraded:1={fake}",
            "--teacher",
            "tiny-animatediff",
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--methods",
            "teacher:2",
            "--frames",
            "4",
            "--resolution",
            "16",
            "--i3d",
            str(i3d),
            "--real-videos",
            str(real),
            "--fvd-frames",
            "4",
            "--inception",
            str(inception),
            "--real-images",
            str(images),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    rows = report["rows"]
    assert [(r["method"], r["steps"], r["videos"]) for r in rows] == [
        ("degraded", 1, 3),
        ("teacher (DDIM, CFG 7.5)", 2, 2),
    ]
    assert all(np.isfinite(r["fvd"]) and r["fvd"] >= 0 and np.isfinite(r["fid"]) for r in rows)
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (out / "results.md").read_text().startswith("| method | FVD ↓ 1-step | FVD ↓ 2-step | FID ↓ 1-step")
    with pytest.raises(ev.DetectorError, match="missing.pt"):
        ev.evaluate(
            [
                "--videos",
                f"x:1={fake}",
                "--i3d",
                str(tmp_path / "missing.pt"),
                "--real-videos",
                str(real),
                "--out",
                str(out),
            ]
        )
    with pytest.raises(ValueError, match="mcm rows need --adapter"):
        ev.evaluate(
            [
                "--teacher",
                "tiny-animatediff",
                "--prompts",
                str(tmp_path / "prompts.txt"),
                "--methods",
                "mcm:1",
                "--frames",
                "4",
                "--resolution",
                "16",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )


# --- MCM rows from an adapter -------------------------------------------------------------------------

GENERATE = ["--teacher", "tiny-animatediff", "--frames", "4", "--resolution", "16", "--device", "cpu"]


def _trainer_adapter(folder, *flags, lora_scale=0.5):
    """An adapter written by the trainer's ``export_adapter`` for a LoRA student of the tiny teacher, its
    LoRA up-factors set to ``lora_scale`` × noise (0: a no-op adapter). Returns its path and the student."""
    from training import distill
    from training.models import load_teacher, make_student

    args = distill.parse_args(
        ["--teacher", "tiny-animatediff", "--data", "toy", "--lora-rank", "4", "--lora-alpha", "4", *flags]
    )
    teacher = load_teacher("tiny-animatediff")
    student = make_student(teacher, args.lora_rank, args.lora_alpha)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(lora_scale * torch.randn(p.shape, generator=g))
    distill.export_adapter(student, teacher, args, 2, folder, 0.0)
    return folder / "adapter.safetensors", student


def _spy_generate(monkeypatch):
    """Videos per (kind, steps) that evaluate generates, and the keywords its sampler passes to
    ``sample_consistency``."""
    from training import sampling

    videos, calls = {}, []
    generate, sample = ev.generate, sampling.sample_consistency

    def spy_generate(sampler, prompts, kind, steps, seed, batch):
        videos[(kind, steps)] = generate(sampler, prompts, kind, steps, seed, batch)
        return videos[(kind, steps)]

    def spy_sample(*args, **kwargs):
        calls.append(
            {k: v for k, v in kwargs.items() if k in ("timestep_scaling", "prediction_type")}
            | {"schedule": args[3].beta_schedule}
        )
        return sample(*args, **kwargs)

    monkeypatch.setattr(ev, "generate", spy_generate)
    monkeypatch.setattr(sampling, "sample_consistency", spy_sample)
    return videos, calls


def test_mcm_rows_apply_the_adapter_with_its_metadata(tmp_path, detectors, monkeypatch):
    from training.sampling import VideoSampler

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left slowly\na blue circle moving up quickly\n")
    torch.manual_seed(0)
    real = tmp_path / "real"
    real.mkdir()
    for i, v in enumerate(_videos(3, False, frames=4, seed=10)):
        (real / f"{i}.mp4").write_bytes(encode_mp4(v))
    path, student = _trainer_adapter(tmp_path / "trained", "--timestep-scaling", "10", "--beta-schedule", "linear")
    videos, calls = _spy_generate(monkeypatch)
    report = ev.evaluate(
        [
            *GENERATE,
            "--adapter",
            str(path),
            "--prompts",
            str(prompts),
            "--methods",
            "teacher:4,mcm:1,mcm:2",
            "--i3d",
            str(detectors[0]),
            "--real-videos",
            str(real),
            "--fvd-frames",
            "4",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    rows = {(r["method"], r["steps"]): r for r in report["rows"]}
    assert list(rows) == [("teacher (DDIM, CFG 7.5)", 4), ("MCM", 1), ("MCM", 2)]
    assert all(rows[("MCM", n)]["fvd"] != rows[("teacher (DDIM, CFG 7.5)", 4)]["fvd"] for n in (1, 2))
    assert not any(np.array_equal(videos[("mcm", n)][i], videos[("teacher", 4)][i]) for n in (1, 2) for i in range(2))
    # the metadata's settings reach the sampler (VideoSampler's defaults are 4 and scaled_linear) and the report
    assert calls == [{"timestep_scaling": 10.0, "prediction_type": "epsilon", "schedule": "linear"}] * 2
    assert report["sampling"] == {
        "beta_schedule": "linear",
        "timestep_scaling": 10.0,
        "prediction_type": "epsilon",
        "num_ddim_timesteps": 50,
    }
    # the adapter is applied exactly: the same samples as the in-memory student with those settings
    sampler = ev.load_generator(ev.build_parser().parse_args([*GENERATE, "--adapter", str(path)]))
    own = VideoSampler(
        student,
        sampler.vae,
        sampler.encode_text,
        sampler.scaling_factor,
        4,
        16,
        sampler.down,
        sampler.schedule,
        timestep_scaling=10.0,
    )
    expected = own.decode(own.mcm(ev.read_prompts(prompts), 2, 0))
    assert len(expected) == 2 and all(np.array_equal(a, b) for a, b in zip(videos[("mcm", 2)], expected))


def test_a_zero_adapter_samples_as_the_plain_teacher(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left slowly\na blue circle moving up quickly\n")
    path, _ = _trainer_adapter(tmp_path / "zero", lora_scale=0.0)
    videos, calls = _spy_generate(monkeypatch)
    ev.evaluate(
        [
            *GENERATE,
            "--adapter",
            str(path),
            "--prompts",
            str(prompts),
            "--methods",
            "mcm:2",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert calls[0]["timestep_scaling"] == 4.0
    plain = ev.load_generator(ev.build_parser().parse_args(GENERATE))  # no adapter: the teacher's UNet alone
    assert not hasattr(plain.unet, "disable_adapter")
    expected = plain.decode(plain.mcm(ev.read_prompts(prompts), 2, 0))
    assert len(expected) == 2 and all(np.array_equal(a, b) for a, b in zip(videos[("mcm", 2)], expected))


def test_adapter_sampling_settings_missing_or_invalid_name_the_file_and_entry(tmp_path):
    from safetensors.torch import load_file, save_file

    from mcm.weights import AdapterError, read_safetensors_metadata

    path, _ = _trainer_adapter(tmp_path / "a")
    _, settings = ev.adapter_sampling(path)
    assert settings == {
        "timestep_scaling": 4.0,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "num_ddim_timesteps": 50,
    }
    tensors, metadata = load_file(str(path)), read_safetensors_metadata(path)
    save_file(
        tensors,
        str(tmp_path / "no_scaling.safetensors"),
        {k: v for k, v in metadata.items() if k != "mcm.timestep_scaling"},
    )
    with pytest.raises(
        AdapterError, match=r"no_scaling\.safetensors: metadata entries \['mcm\.timestep_scaling'\] missing"
    ):
        ev.adapter_sampling(tmp_path / "no_scaling.safetensors")
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata | {"mcm.timestep_scaling": "-1"})
    with pytest.raises(AdapterError, match=r"bad\.safetensors: mcm\.timestep_scaling = -1; expected a positive number"):
        ev.adapter_sampling(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "ade.safetensors"), metadata | {"mcm.temporal_norm": '"per_frame"'})
    with pytest.raises(AdapterError, match=r"ade\.safetensors: mcm\.temporal_norm = 'per_frame'"):
        ev.adapter_sampling(tmp_path / "ade.safetensors")
    # a PEFT folder without MCM metadata (as the official releases): the official settings, and the log says so
    peft = tmp_path / "a" / "peft" / "adapter_model.safetensors"
    save_file(load_file(str(peft)), str(peft))
    lines = []
    _, settings = ev.adapter_sampling(peft.parent, log=lines.append)
    assert (
        settings["timestep_scaling"] == 4.0
        and len(lines) == 1
        and "no MCM metadata; sampling with the official settings" in lines[0]
    )
