"""The toy world of the embedded default: its metrics, its tokenizer, the shipped teacher, the ablation table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mcm.metrics import feature_stats, frechet_distance, frechet_distance_of
from training.toy import evaluation, metrics, world
from training.toy.preset import TEACHER as SHIPPED
from training.toy.toy_models import _learn_merges, build_models, build_tokenizer, save_teacher, toy_words

# --- Fréchet distance ---------------------------------------------------------------------------------


def test_frechet_distance_matches_closed_forms():
    # 1-d: (m1 - m2)² + (s1 - s2)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal: Σ (m1 - m2)² + Σ (√v1 - √v2)²
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = 3.0 + float(((v1.sqrt() - v2.sqrt()) ** 2).sum())
    assert frechet_distance(torch.zeros(3), torch.diag(v1), torch.ones(3), torch.diag(v2)) == pytest.approx(expected)


def test_frechet_distance_of_non_commuting_covariances_uses_the_eigenvalues_of_the_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(4), b @ b.T + 0.1 * torch.eye(4)
    # tr sqrt(S1 S2) = Σ sqrt(eigenvalues of S1 S2) (real and non-negative for SPD S1, S2)
    cross = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()
    expected = float(torch.trace(s1) + torch.trace(s2) - 2 * cross)
    assert frechet_distance(torch.zeros(4), s1, torch.zeros(4), s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_is_small_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4000, 3, generator=g), torch.randn(4000, 3, generator=g)
    assert frechet_distance_of(x, y) < 0.01
    assert frechet_distance_of(x, y + 2.0) == pytest.approx(12.0, rel=0.05)
    with pytest.raises(ValueError, match=r"features must be \[n >= 2, d\]"):
        feature_stats(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))


# --- toy metrics: the data themselves score as a perfect sample should ----------------------------------


@pytest.fixture(scope="module")
def references():
    return metrics.reference_features(8, 32, n=48)


def test_motion_metric_accepts_the_data_and_rejects_wrong_directions_speeds_and_noise(references):
    prompts = world.toy_prompts()
    videos, captions = metrics.reference_clips(prompts, 2, 8, 32, degraded=True)
    right = metrics.score_videos(videos, captions, *references)
    assert right["correct"] >= 0.9 and right["velocity_error"] < 0.5
    # a quick circle's 8-frame window can start or end with the shape outside the frame (not visible: residual 8)
    assert (
        right["coherent"] >= 0.9
        and np.median([metrics.motion_of(v, c)["track_residual"] for v, c in zip(videos, captions)]) < 0.5
    )
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    flipped = [" ".join(opposite.get(w, w) for w in c.split()) for c in captions]
    assert metrics.score_videos(videos, flipped, *references)["direction_correct"] <= 0.1
    other_speed = [
        c.replace("slowly", "QUICK").replace("quickly", "slowly").replace("QUICK", "quickly") for c in captions
    ]
    assert metrics.score_videos(videos, other_speed, *references)["speed_class_correct"] <= 0.1
    static = [np.repeat(v[:1], len(v), axis=0) for v in videos]  # a still frame moves nowhere
    assert metrics.score_videos(static, captions, *references)["correct"] == 0.0
    assert metrics.score_videos(static, captions, *references)["coherent"] == 0.0
    shuffled = [v[np.random.default_rng(i).permutation(len(v))] for i, v in enumerate(videos)]  # the shape jumps about
    assert metrics.score_videos(shuffled, captions, *references)["coherent"] <= 0.2
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, v.shape, dtype=np.uint8) for v in videos]
    assert metrics.score_videos(noise, captions, *references)["correct"] <= 0.2
    assert metrics.score_videos(noise, captions, *references)["coherent"] <= 0.2


def test_toy_clips_carry_their_motion_in_every_frame():
    """The tied world (the default): a white stripe on the side the shape moves towards, squares 1 px/frame
    ("slowly"), circles 2 px/frame ("quickly"), and each colour its own direction; the marked world draws
    the direction apart from the colour; the plain world has neither stripe nor a speed tied to the shape."""
    from training.toy.world import toy_clip

    speeds = {"square": 1, "circle": 2}
    ways = {"red": "right", "green": "left", "blue": "up", "yellow": "down"}
    seen, marked = set(), set()
    for seed in range(24):
        clip, caption = toy_clip(seed, frames=6, size=32, degraded=False)
        _, colour, shape, _, direction, speed_word = caption.split()
        assert direction == ways[colour], caption
        seen.add((shape, direction))
        other, other_caption = toy_clip(seed, frames=6, size=32, degraded=False, world="marked")
        assert other_caption.split()[1:3] == [colour, shape]  # the same draws: colour, shape (and background)
        assert (other[0, 0, 0] == clip[0, 0, 0]).all()
        marked.add((colour, other_caption.split()[4]))
        assert speed_word == {1: "slowly", 2: "quickly"}[speeds[shape]], caption
        step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
        centres = []
        for frame in clip[1:5]:  # the middle frames, where the whole shape is in view
            x = frame.astype(int)
            white = (x > 230).all(axis=-1)
            body = (np.abs(x - x[0, 0]).max(axis=-1) > 20) & ~white  # neither background nor stripe
            ys, xs = np.nonzero(white)
            by, bx = np.nonzero(body)
            assert len(xs) >= 4 and len(bx) >= 20, caption
            lead = np.array([xs.mean() - bx.mean(), ys.mean() - by.mean()])
            assert lead @ np.array(step) > 2 and abs(lead @ np.array(step[::-1])) < 1, (caption, lead)
            centres.append(np.array([np.concatenate([xs, bx]).mean(), np.concatenate([ys, by]).mean()]))
        velocity = np.diff(np.stack(centres), axis=0).mean(axis=0)
        assert np.allclose(velocity, np.array(step) * speeds[shape], atol=0.05), (caption, velocity)
    assert len(seen) == 8  # both shapes in all four directions
    assert len(marked) > 10 and any(ways[c] != d for c, d in marked)  # marked: directions apart from colours
    plain = [toy_clip(seed, frames=2, size=32, degraded=False, world="plain") for seed in range(24)]
    assert not any((clip > 230).all(axis=-1).any() for clip, _ in plain)  # no stripe
    assert {cap.split()[2] + " " + cap.split()[5] for _, cap in plain} >= {"square quickly", "circle slowly"}


def test_cached_toy_shards_are_written_anew_for_another_world(tmp_path):
    """The toy shards are cached between runs (``~/.cache/comfyui-mcm``); a cache of another toy world
    must not be read as this one's."""
    import json
    import tarfile

    from training.toy.world import write_toy_image_shards, write_toy_shards

    ways = {"red": "right", "green": "left", "blue": "up", "yellow": "down"}

    def captions(root, suffix):
        out = []
        for shard in sorted(root.glob("*.tar")):
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(suffix):
                        data = tar.extractfile(m).read().decode()
                        out.append(json.loads(data)["caption"] if suffix == ".json" else data)
        return out

    def tied(caps):
        return all(ways[c.split()[1]] == c.split()[4] for c in caps)

    assert not tied(
        captions(
            write_toy_shards(tmp_path / "v", num_clips=24, per_shard=12, frames=2, size=16, world="marked"), ".json"
        )
    )
    assert tied(captions(write_toy_shards(tmp_path / "v", num_clips=24, per_shard=12, frames=2, size=16), ".json"))
    assert not tied(captions(write_toy_image_shards(tmp_path / "i", num_images=24, size=16, world="marked"), ".txt"))
    assert tied(captions(write_toy_image_shards(tmp_path / "i", num_images=24, size=16), ".txt"))


def test_frame_quality_separates_clean_images_from_degraded_video(references):
    prompts = world.toy_prompts()[:4]
    clean = metrics.score_videos(*metrics.reference_clips(prompts, 2, 8, 32, degraded=False), *references)
    dirty = metrics.score_videos(*metrics.reference_clips(prompts, 2, 8, 32, degraded=True), *references)
    assert clean["watermark"] < 0.05 < 0.2 < dirty["watermark"]
    assert clean["sharpness"] > dirty["sharpness"] + 0.2
    # a shape leaving the frame (a few pixels left) must not make the sharpness or the FD explode
    many = metrics.score_videos(*metrics.reference_clips(world.toy_prompts(), 4, 8, 32, degraded=False), *references)
    assert many["sharpness"] < 1.2 and many["fd_clean"] < 0.2, many
    assert clean["grain"] < dirty["grain"] and clean["background"] < dirty["background"]
    assert clean["fd_clean"] < clean["fd_degraded"] and dirty["fd_degraded"] < dirty["fd_clean"]


def test_paired_difference_counts_discordant_clips_and_gives_the_exact_sign_test():
    one = metrics.paired_difference([1, 1, 1, 0, 0, 1], [0, 0, 1, 0, 0, 1])
    assert one["difference"] == pytest.approx(2 / 6, abs=1e-4) and (one["wins"], one["losses"]) == (2, 0)
    assert one["sign_test_p"] == pytest.approx(0.5)  # 2 of 2 discordant clips one way: 2 * (1/2)^2
    d = np.array([1, 1, 0, 0, 0, 0], dtype=float)
    assert one["standard_error"] == pytest.approx(d.std(ddof=1) / math.sqrt(6), abs=1e-4)
    ten = metrics.paired_difference([1] * 10 + [0] * 10, [0] * 10 + [0] * 10)
    assert ten["sign_test_p"] == pytest.approx(2 / 2**10, abs=1e-4)  # ten wins, no loss: beyond chance
    tied = metrics.paired_difference([1, 0, 1, 0], [0, 1, 0, 1])
    assert tied["difference"] == 0 and tied["sign_test_p"] == 1.0
    assert metrics.paired_difference([1, 1], [1, 1])["sign_test_p"] == 1.0
    with pytest.raises(ValueError, match="two equally long lists"):
        metrics.paired_difference([1, 0, 1], [1, 0])


def test_captions_that_are_not_toy_captions_are_refused():
    with pytest.raises(ValueError, match="not a toy caption"):
        metrics.parse_caption("a cat playing piano")
    direction, speed = metrics.parse_caption("a blue circle moving up quickly")
    assert direction.tolist() == [0.0, -1.0] and speed == 2.0


def test_previews_are_an_animated_gif_and_a_png_strip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = {
        name: [rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
        for name in ("teacher", "MCM 4-step")
    }
    paths = evaluation.write_previews(tmp_path, rows, ["p1", "p2", "p3"])
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == 8
    with Image.open(paths["png"]) as png:
        assert png.width > 2 * 8 * 32 and png.height > 2 * 32


# --- the tokenizer and the teacher folder -----------------------------------------------------------


def test_toy_tokenizer_gives_every_toy_word_one_token_and_falls_back_to_characters(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    for word in toy_words():
        assert loaded.tokenize(word) == [word + "</w>"]
    assert len(loaded.tokenize("zebra")) > 1  # unknown words are spelled out, never dropped
    ids = loaded(["a red square moving left quickly"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and ids[0] == loaded.bos_token_id and ids[7] == loaded.eos_token_id


def test_learned_merges_rebuild_each_word_in_order():
    merges = _learn_merges(["red", "right", "green"])
    assert len(merges) == len(set(merges))
    assert ("gree", "n</w>") in merges or any(a + b == "green</w>" for a, b in merges)


def test_a_saved_teacher_folder_loads_through_the_real_teacher_loader(tmp_path):
    from training.models import call_unet, load_teacher

    tokenizer = build_tokenizer()
    unet, vae, text = build_models(tokenizer, seed=3)
    save_teacher(tmp_path / "teacher", unet, vae, text, tokenizer, {"note": "test"})
    save_teacher(tmp_path / "teacher", unet, vae, text, tokenizer, {"note": "again"})  # replaced only when complete
    assert json.loads((tmp_path / "teacher" / "toy_teacher.json").read_text()) == {"note": "again"}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    teacher = load_teacher(str(tmp_path / "teacher"))
    assert type(teacher.unet).__name__ == "UNetMotionModel" and type(teacher.vae).__name__ == "AutoencoderKL"
    x, t = torch.randn(1, 4, 4, 16, 16), torch.tensor([500])
    cond = text(teacher.tokenizer(["a red square moving left slowly"])).last_hidden_state
    with torch.no_grad():
        assert torch.allclose(call_unet(teacher.unet, x, t, cond), call_unet(unet, x, t, cond), atol=1e-6)


@pytest.mark.skipif(not (SHIPPED / "toy_teacher.json").exists(), reason="the toy teacher is not in this checkout")
def test_the_shipped_toy_teacher_is_small_documented_and_loads():
    from training.models import load_teacher

    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MB"
    settings = json.loads((SHIPPED / "toy_teacher.json").read_text())
    assert [stage["step"] for stage in settings["stages"]] == [
        3500,
        900,
        1000,
        1000,
        1500,
        1000,
        2500,
        1000,
        1500,
        1500,
        1500,
    ]  # the commands in training/toy/RESULTS.md
    teacher = load_teacher(str(SHIPPED))
    assert teacher.max_frames == 32 and math.isfinite(teacher.scaling_factor) and teacher.vae_downsample == 2
    assert Path(teacher.source) == SHIPPED


def test_mean_track_and_spread_of_the_data_follow_the_caption_and_the_teacher_probes_run():
    from transformers import CLIPTokenizer

    from training.toy.probes import (
        data_circles,
        data_mean_track,
        noise_track,
        probe_caption,
        text_feature_change,
        tint_spread,
    )
    from training.toy.toy_models import load_models

    assert [probe_caption(d) for d in ("left", "down")] == [
        "a green circle moving left quickly",
        "a yellow circle moving down quickly",
    ]
    for direction, (dx, dy) in {"left": (-1, 0), "down": (0, 1)}.items():
        track = data_mean_track(direction, clips=16)
        moved = (track[-1][0] - track[0][0], track[-1][1] - track[0][1])
        # a circle moves 2 px/frame: 14 px over 8 frames, changed a little by the trainer's zooming crop and the
        # frame's edge
        assert 8 < dx * moved[0] + dy * moved[1] < 18 and abs(dy * moved[0] + dx * moved[1]) < 2, (direction, track)
        along, across = tint_spread(data_circles(direction, clips=16), probe_caption(direction).split()[1])[
            :: 1 if dx else -1
        ]
        assert along > 1.5 * across, (direction, along, across)  # a band along the motion
    if (SHIPPED / "toy_teacher.json").exists():
        tokenizer = CLIPTokenizer.from_pretrained(SHIPPED / "tokenizer")
        unet, vae, text, _ = load_models(SHIPPED, tokenizer)
        track = noise_track(unet.eval(), text.eval(), vae.eval(), tokenizer, "left", noises=2)
        assert len(track) == 8 and all(math.isfinite(x) and math.isfinite(y) for x, y in track)
        change = text_feature_change(text.eval(), tokenizer)
        assert set(change) == {"direction", "speed", "colour", "shape"} and all(v > 0 for v in change.values()), change


def test_ablation_table_has_a_column_per_step_and_leaves_missing_cells_empty():
    from training.toy.ablate import mcm_rows, table

    metrics = {
        f"MCM {n}-step": {
            "correct": n / 4,
            "coherent": 0.75,
            "velocity_error": 0.5,
            "watermark": 0.1,
            "sharpness": 0.8,
            "grain": 0.0,
            "fd_clean": 0.2,
        }
        for n in (1, 2, 4)
    }
    report = {"metrics": metrics, "d_accuracy": 0.625}
    text = table("ladder", [("full", mcm_rows(report, [1, 2, 4])), ("teacher", {4: metrics["MCM 4-step"]})], [1, 2, 4])
    lines = text.splitlines()
    assert lines[0] == "### ladder" and "motion correct ↑ (1-step)" in lines[2]
    assert lines[4].startswith(
        "| full | 0.25 | 0.5 | 1 | 0.75 | 0.75 | 0.75 |  |  |  | 0.5 |"
    )  # no teacher clips: no "moves like"
    assert lines[4].endswith("| 0.625 |")  # the discriminator's accuracy, last column
    assert lines[5].startswith("| teacher |  |  | 1 |  |  | 0.75 |  |  |  |") and lines[5].endswith("|  |")


def test_agreement_counts_clips_that_move_like_the_teacher_where_the_teacher_moves():
    prompts = world.toy_prompts()
    videos, captions = metrics.reference_clips(prompts, 2, 8, 32, degraded=True)
    teacher = [metrics.motion_of(v, c) for v, c in zip(videos, captions)]
    assert sum(t["coherent"] for t in teacher) >= 14
    same = metrics.agreement(teacher, teacher)
    assert (
        same["moves_like"] == 1.0
        and same["velocity_gap"] == 0.0
        and same["reference_clips"] == sum(t["coherent"] for t in teacher)
    )
    backwards = [metrics.motion_of(v[::-1], c) for v, c in zip(videos, captions)]  # the same shapes, played in reverse
    reverse = metrics.agreement(backwards, teacher)
    assert (
        reverse["moves_like"] == 0.0 and reverse["velocity_gap"] > 1.5
    )  # |v - (-v)| = 2|v| ≥ 2 px/frame at 1 px/frame
    still = [metrics.motion_of(np.repeat(v[:1], 8, axis=0), c) for v, c in zip(videos, captions)]
    assert metrics.agreement(still, teacher)["moves_like"] == 0.0
    assert (
        metrics.agreement(teacher, still)["reference_clips"] == 0
    )  # a teacher that does not move sets nothing to copy
    with pytest.raises(ValueError, match="the same clips"):
        metrics.agreement(teacher[:3], teacher)


def test_ablation_rows_are_compared_clip_by_clip_and_against_the_teachers_motion():
    from training.toy.ablate import mcm_rows, paired_rows

    def clips(correct, velocities):
        return [
            {"correct": float(c), "coherent": float(c), "visible": 1.0, "velocity": v}
            for c, v in zip(correct, velocities)
        ]

    right, left = (2.0, 0.0), (-2.0, 0.0)
    teacher = clips([1, 1, 1, 0], [right, right, left, None])  # the last clip: the teacher does not move
    row = {
        "metrics": {"MCM 4-step": {"correct": 0.75}},
        "per_clip": {"MCM 4-step": clips([1, 1, 1, 0], [right, right, left, right])},
    }
    base = {
        "metrics": {"MCM 4-step": {"correct": 0.25}},
        "per_clip": {"MCM 4-step": clips([1, 0, 0, 0], [right, left, right, right])},
    }
    assert mcm_rows(row, [4], teacher)[4]["moves_like_teacher"] == 1.0  # 3 of the 3 clips where the teacher moves
    assert mcm_rows(base, [4], teacher)[4]["moves_like_teacher"] == pytest.approx(1 / 3, abs=1e-4)
    lines = paired_rows("ladder", [("row", row, "base", base)], 4, teacher).splitlines()
    assert lines[2] == "| row | against | correct (4-step) | coherent (4-step) | moves_like_teacher (4-step) |"
    # correct: clips 2 and 3 only in row → +2/4; standard error of [0, 1, 1, 0]: 0.2887; sign test 2:0 → p = 0.5
    assert lines[4].startswith(
        "| row | base | +0.500 ± 0.289 (2:0, p 0.5) | +0.500 ± 0.289 (2:0, p 0.5) | +0.667 ± 0.333 (2:0, p 0.5) |"
    )


def test_ablate_writes_both_tables_and_pairs_each_row_with_its_baseline(tmp_path, monkeypatch):
    from training.toy import ablate

    right = (2.0, 0.0)

    def report(score, with_teacher):  # a run's metrics.json: every clip correct (1) or not (0)
        clips = [
            {"correct": float(s), "coherent": float(s), "visible": 1.0, "velocity": right if s else None} for s in score
        ]
        metrics = {f"MCM {n}-step": {"correct": float(np.mean(score))} for n in (1, 2, 4)}
        per_clip = {f"MCM {n}-step": clips for n in (1, 2, 4)}
        if with_teacher:
            metrics["teacher 50-step cfg 5"] = {"correct": 1.0}
            per_clip["teacher 50-step cfg 5"] = [
                {"correct": 1.0, "coherent": 1.0, "visible": 1.0, "velocity": right}
            ] * len(score)
        return {"metrics": metrics, "per_clip": per_clip, "run": {"steps": 7}, "d_accuracy": 0.6}

    scores = {  # per row: 4 clips; the ladder improves one clip a row, λ_real 0 equals the mix
        "00": [0, 0, 0, 0],
        "01": [1, 0, 0, 0],
        "02": [1, 1, 0, 0],
        "03": [1, 1, 1, 0],
        "04": [1, 1, 1, 0],
        "05": [1, 0, 1, 0],
        "07": [0, 1, 0, 0],
    }
    calls = []

    def fake_run_row(args, name, flags, index, with_teacher):
        calls.append((index, tuple(flags), with_teacher))
        return report(scores[f"{index:02d}"], with_teacher)

    monkeypatch.setattr(ablate, "run_row", fake_run_row)
    assert ablate.main(["--output-dir", str(tmp_path)]) == 0
    # 9 rows, 7 runs: λ_real 0.5 is the full method and λ_real 1 the "+ motion loss" row
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4, 5, 7] and [c[2] for c in calls] == [True] + [False] * 6
    text = (tmp_path / "ablations.md").read_text()
    ladder = text.split("### Table 4, each row against the one before")[1].split("###")[0]
    assert (
        "| + frame discriminator (clean images) | CD only (raw latents, real trajectories, no discriminator) "
        "| +0.250 ± 0.250 (1:0, p 1) |"
    ) in ladder
    assert ladder.count("+0.250 ± 0.250 (1:0, p 1)") == 3 * 3  # each step adds one clip, in all three columns
    sweep = text.split("### Table 6, each λ_real against the mix λ_real 0.5")[1].split("###")[0]
    assert "| λ_real 0 | λ_real 0.5 | +0.000 ± 0.000 (0:0, p 1) |" in sweep  # equal clips: no discordant pair
    assert "| λ_real 0.25 | λ_real 0.5 | -0.250 ± 0.250 (0:1, p 1) |" in sweep  # [1, 0, 1, 0] against [1, 1, 1, 0]
    # [0, 1, 0, 0] against [1, 1, 1, 0]: differences [-1, 0, -1, 0], standard error 0.577 / 2; 0 wins, 2 losses:
    # p = 2 / 2²
    assert "| λ_real 0.75 | λ_real 0.5 | -0.500 ± 0.289 (0:2, p 0.5) |" in sweep
    assert "| λ_real 1 | λ_real 0.5 | -0.250 ± 0.250 (0:1, p 1) |" in sweep  # the "+ motion loss" run, [1, 1, 0, 0]
    assert "moves like the teacher ↑ (4-step)" in text and (tmp_path / "ablations.json").exists()
    # the full method ([1, 1, 1, 0], visible everywhere) against the first run's teacher (every clip right):
    # correct and coherent [0, 0, 0, -1] (0 wins, 1 loss, p 1; standard error 0.5 / 2), visible all equal
    against = text.split("### The full method (the toy default) against its teacher (4-step, paired)")[1].split("###")[
        0
    ]
    row = (
        "| MCM, 4-step | teacher 50-step cfg 5 | " + "-0.250 ± 0.250 (0:1, p 1) | " * 2 + "+0.000 ± 0.000 (0:0, p 1) |"
    )
    assert row in against, against


def test_evaluate_passes_eval_seeds_on_and_refuses_none_and_fresh_text_needs_init(monkeypatch, capsys):
    from training.toy import train_teacher as toy_teacher

    seen = []
    monkeypatch.setattr(
        toy_teacher, "evaluate_teacher", lambda folder, guidance, steps, seed, seeds: seen.append((steps, seeds))
    )
    toy_teacher.main(["--evaluate", "somewhere", "--eval-steps", "4,50", "--eval-seeds", "3"])
    toy_teacher.main(["--evaluate", "somewhere"])
    assert seen == [([4, 50], 3), ([50], 6)]  # 6 by default: 48 clips
    with pytest.raises(SystemExit) as exit_:
        toy_teacher.main(["--evaluate", "somewhere", "--eval-seeds", "0"])
    assert exit_.value.code == 2 and "--eval-seeds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # --fresh-text would be ignored without a teacher to continue
        toy_teacher.main(["--fresh-text", "--out", "nowhere"])
    assert exit_.value.code == 2 and "--fresh-text needs --init" in capsys.readouterr().err


def test_a_continued_stage_can_restart_or_freeze_the_text_encoder_train_parts_and_records_itself(tmp_path):
    """``--init`` continues a saved teacher; ``--fresh-text`` swaps in a text encoder built afresh from
    ``--seed`` and ``--freeze-text`` keeps it as built, while the UNet trains; the stage is appended to
    the folder's history with its world."""
    from transformers import CLIPTextModel

    from training.toy import train_teacher as toy_teacher

    tokenizer = build_tokenizer()
    unet, vae, text = build_models(tokenizer, seed=3)
    vae.register_to_config(scaling_factor=1.0)
    save_teacher(tmp_path / "start", unet, vae, text, tokenizer, {"step": 5, "stages": [{"step": 5, "world": "plain"}]})
    common = ["--steps", "2", "--batch", "1", "--frames", "2", "--warmup", "1", "--save-every", "0", "--log-every", "1"]
    toy_teacher.main(
        [
            "--init",
            str(tmp_path / "start"),
            "--out",
            str(tmp_path / "frozen"),
            "--fresh-text",
            "--freeze-text",
            "--seed",
            "9",
            *common,
        ]
    )
    toy_teacher.main(
        [
            "--init",
            str(tmp_path / "start"),
            "--out",
            str(tmp_path / "trained"),
            "--world",
            "plain",
            "--seed",
            "9",
            *common,
        ]
    )
    fresh = build_models(tokenizer, seed=9)[2].state_dict()
    frozen = CLIPTextModel.from_pretrained(tmp_path / "frozen" / "text_encoder").state_dict()
    trained = CLIPTextModel.from_pretrained(tmp_path / "trained" / "text_encoder").state_dict()
    assert all(torch.equal(frozen[k], fresh[k]) for k in fresh)  # exactly as built from seed 9
    assert not torch.equal(
        frozen["embeddings.token_embedding.weight"], text.state_dict()["embeddings.token_embedding.weight"]
    )
    assert any(not torch.equal(trained[k], text.state_dict()[k]) for k in trained)  # without the flags it trains
    before = unet.state_dict()
    after = toy_teacher.load_models(tmp_path / "frozen", tokenizer)[0].state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before if "motion_modules" in k)
    assert any(not torch.equal(after[k], before[k]) for k in before if "motion_modules" not in k)
    for part in (
        "spatial",
        "motion",
    ):  # an image stage trains the spatial layers only, a motion stage the motion modules
        toy_teacher.main(["--init", str(tmp_path / "start"), "--out", str(tmp_path / part), "--train", part, *common])
        after = toy_teacher.load_models(tmp_path / part, tokenizer)[0].state_dict()
        changed = {"motion_modules" in k for k in before if not torch.equal(after[k], before[k])}
        assert changed == {part == "motion"}, (part, changed)
    stages = json.loads((tmp_path / "frozen" / "toy_teacher.json").read_text())["stages"]
    assert [(s["step"], s.get("world"), s.get("freeze_text")) for s in stages] == [
        (5, "plain", None),
        (2, "tied", True),
    ]
    stages = json.loads((tmp_path / "trained" / "toy_teacher.json").read_text())["stages"]
    assert [(s["step"], s.get("world"), s.get("freeze_text")) for s in stages] == [
        (5, "plain", None),
        (2, "plain", False),
    ]
