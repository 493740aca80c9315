"""The toy evaluation: teacher and MCM samples of the toy prompts, scored, compared clip by clip and previewed.

:func:`evaluate` samples the teacher (DDIM with classifier-free guidance) and MCM (1, 2 and 4 steps) from the
same noise for every prompt and seed, scores every clip with :mod:`training.toy.metrics`, compares the methods
clip by clip and writes ``preview/`` (an animated GIF and a PNG strip). :func:`evaluate_run` is the trainer's
hook: the evaluation after a toy run, written to the run folder's ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from mcm.schedule import NoiseSchedule
from training.models import noise_settings
from training.sampling import VideoSampler
from training.toy.metrics import (
    PAIRED,
    agreement,
    motion_of,
    paired_difference,
    reference_clips,
    reference_features,
    score_videos,
)
from training.toy.world import toy_prompts


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# --- previews ---------------------------------------------------------------------------------------


def write_previews(
    out_dir: Path, rows: dict[str, list[np.ndarray]], prompts: list[str], scale: int = 3
) -> dict[str, str]:
    """An animated GIF (rows: methods, columns: prompts) and a PNG strip (every frame of the first two
    prompts, one row per method)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(rows)
    frames, size = rows[names[0]][0].shape[:2]
    label_w, pad = 6 * max(len(n) for n in names) + 8, 2
    cell = size * scale
    width = label_w + len(prompts) * (cell + pad)
    height = 12 + len(names) * (cell + pad)
    gif_frames = []
    for f in range(frames):
        canvas = Image.new("RGB", (width, height), (24, 24, 24))
        for r, name in enumerate(names):
            y = 12 + r * (cell + pad)
            _label_at(canvas, name, (2, y + cell // 2 - 5))
            for c, video in enumerate(rows[name][: len(prompts)]):
                tile = Image.fromarray(video[f]).resize((cell, cell), Image.NEAREST)
                canvas.paste(tile, (label_w + c * (cell + pad), y))
        _label_at(canvas, f"frame {f + 1}/{frames}", (label_w, 1))
        gif_frames.append(canvas)
    gif = out_dir / "preview.gif"
    gif_frames[0].save(gif, save_all=True, append_images=gif_frames[1:], duration=200, loop=0)
    strip_prompts = prompts[:2]
    strip = Image.new(
        "RGB",
        (label_w + len(strip_prompts) * frames * (cell + pad) + pad * 4, 12 + len(names) * (cell + pad)),
        (24, 24, 24),
    )
    for r, name in enumerate(names):
        y = 12 + r * (cell + pad)
        _label_at(strip, name, (2, y + cell // 2 - 5))
        for c in range(len(strip_prompts)):
            for f in range(frames):
                x = label_w + (c * frames + f) * (cell + pad) + c * pad * 4
                strip.paste(Image.fromarray(rows[name][c][f]).resize((cell, cell), Image.NEAREST), (x, y))
    for c, prompt in enumerate(strip_prompts):
        _label_at(strip, prompt, (label_w + c * (frames * (cell + pad) + pad * 4), 1))
    png = out_dir / "preview.png"
    strip.save(png)
    (out_dir / "prompts.txt").write_text("\n".join(f"column {i + 1}: {p}" for i, p in enumerate(prompts)) + "\n")
    return {"gif": str(gif), "png": str(png)}


def _label_at(image, text, xy):
    from PIL import ImageDraw

    ImageDraw.Draw(image).text(xy, text, fill=(230, 230, 230))


# --- the whole evaluation ---------------------------------------------------------------------------


def evaluate(
    sampler: VideoSampler,
    out_dir: Path | None,
    prompts: list[str] | None = None,
    seeds: int = 2,
    mcm_steps=(1, 2, 4),
    teacher_steps=(4, 50),
    seed: int = 1000,
    log=print,
) -> dict:
    """Sample teacher and MCM for every prompt × seed, score them, compare them clip by clip
    (``paired``: :func:`paired_difference` of each MCM step count against each teacher one), time them,
    and write previews."""
    prompts = prompts or toy_prompts()
    batch = [p for p in prompts for _ in range(seeds)]
    clean, degraded = reference_features(sampler.frames, sampler.size)
    results, rows, seconds = {}, {}, {}
    methods = [(f"teacher {n}-step cfg {sampler.guidance:g}", "teacher", n) for n in teacher_steps]
    methods += [(f"MCM {n}-step", "mcm", n) for n in mcm_steps if sampler.has_student]
    per_clip = {}
    for name, kind, n in methods:
        latents, secs = timed(getattr(sampler, kind), batch, n, seed)
        videos = sampler.decode(latents)
        seconds[name] = secs
        per_clip[name] = [motion_of(v, c) for v, c in zip(videos, batch)]
        results[name] = score_videos(videos, batch, clean, degraded, motion=per_clip[name])
        rows[name] = videos[::seeds]  # the first seed of each prompt
        log(f"  {name}: {results[name]} ({secs:.1f} s)")
    for name, kind in (("data: degraded videos", True), ("data: clean frames", False)):
        videos, captions = reference_clips(prompts, seeds, sampler.frames, sampler.size, degraded=kind)
        results[name] = score_videos(videos, captions, clean, degraded)
    teacher50 = next((k for k in seconds if k.startswith("teacher 50")), None)
    speed = {k: round(seconds[teacher50] / v, 2) for k, v in seconds.items() if k.startswith("MCM") and teacher50}
    # every method starts each clip from the same noise, so MCM and teacher can be compared clip by clip
    ours, theirs = [k for k in per_clip if k.startswith("MCM")], [k for k in per_clip if k.startswith("teacher")]
    paired = (
        {
            f"{a} vs {b}": {
                key: paired_difference([m[key] for m in per_clip[a]], [m[key] for m in per_clip[b]]) for key in PAIRED
            }
            for a in ours
            for b in theirs
        }
        if len(batch) > 1
        else {}
    )
    # does the student move like its teacher on the same noise (where the teacher moves coherently)? The teacher's
    # own fewer-step samples are the yardstick
    for a in [k for k in per_clip if k != teacher50] if teacher50 and len(batch) > 1 else []:
        like = agreement(per_clip[a], per_clip[teacher50])
        results[a]["moves_like_teacher"] = like["moves_like"]
        paired.setdefault(f"{a} vs {teacher50}", {})["agreement"] = like
        log(
            f"  {a} moves like {teacher50} on {like['moves_like']} of the {like['reference_clips']} clips where the "
            "teacher "
            f"moves coherently; velocity gap {like['velocity_gap']} px/frame"
        )
    for pair, diff in paired.items():
        diff = {k: v for k, v in diff.items() if k in PAIRED}
        if diff:
            log(
                f"  {pair}: "
                + ", ".join(
                    f"{key} {d['difference']:+.3f} ± {d['standard_error']:.3f} (p {d['sign_test_p']:.2g})"
                    for key, d in diff.items()
                )
            )
    report = {
        "prompts": prompts,
        "seeds_per_prompt": seeds,
        "clips": len(batch),
        "guidance": sampler.guidance,
        "metrics": results,
        "paired": paired,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "speedup_vs_teacher_50_step_cfg": speed,
        "per_clip": {k: [{key: m[key] for key in ("velocity", *PAIRED)} for m in v] for k, v in per_clip.items()},
    }
    if out_dir is not None:
        report["previews"] = write_previews(out_dir, rows, prompts)
    return report


def evaluate_run(args, student, frozen, run_dir: Path, log, started: float) -> Path:
    """The trainer's toy evaluation: teacher vs MCM on the toy prompts, ``preview/`` (GIF + PNG strip) and
    ``metrics.json`` in ``run_dir``. The VAE and the text encoder are used through ``frozen``
    (:class:`training.frozen.FrozenParts`), placed for the evaluation; ``started``: the process's start time."""
    teacher = frozen.teacher
    guidance = args.eval_guidance if args.eval_guidance is not None else 1.0 + (args.w_min + args.w_max) / 2
    student.eval()
    noise = noise_settings(teacher, args.prediction_type, args.beta_schedule)
    log(f"toy evaluation ({args.eval_seeds} samples per prompt, teacher cfg {guidance:g}):")
    with frozen.placed() as (vae, _):
        sampler = VideoSampler(
            student,
            vae,
            lambda captions: frozen.encode_text(captions)[0],
            teacher.scaling_factor,
            args.num_frames,
            args.resolution,
            teacher.vae_downsample,
            NoiseSchedule(noise.beta_schedule),
            guidance,
            timestep_scaling=args.timestep_scaling,
            prediction_type=noise.prediction_type,
            num_ddim_timesteps=args.num_ddim_timesteps,
        )
        report = evaluate(
            sampler,
            run_dir / "preview",
            toy_prompts()[: args.eval_prompts],
            seeds=args.eval_seeds,
            teacher_steps=[int(n) for n in str(args.eval_teacher_steps).split(",") if n.strip()],
            log=log,
        )
    report["run"] = {"steps": args.max_train_steps, "seconds_since_start": round(time.time() - started, 1)}
    path = run_dir / "metrics.json"
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    log(f"previews: {report['previews']['gif']} and {report['previews']['png']}; metrics: {path}")
    return path
