"""Data loading: clips per second decoded by the training loader vs clips per second a training step consumes.

usage:
    OMP_NUM_THREADS=1 python bench/bench_data.py [--clips 32] [--reps 3] [--real-clips 4]
        [--teacher training/toy/teacher] [--step-seconds S]

Toy: ``training.data.VideoClips`` over toy shards written by ``write_toy_shards`` (16-frame 32 px mp4 clips,
the toy default's data; 8 frames cut per clip) in one process, as a ``num_workers`` = 0 loader runs it.
Consumed: the toy default's distillation step (``bench/bench_train_step.py``: batch 2, 8 frames, 32 px)
timed on the same machine; ``ratio`` = decoded / consumed clips per second (≥ 1: one loader process keeps
up with the step; each extra worker adds about its decode rate).
Real: a WebVid-like mp4 (596×336, ``--real-video-frames`` frames at 25 fps, H.264 through PyAV) decoded and
cut as the official AnimateDiff run does (16 frames, interval 8, random-resized crop to 512 px). A real
step's time needs a GPU: pass ``--step-seconds`` (seconds per step of batch ``--real-batch``) measured
there to get ``ratio_real``; without it ``ratio_real`` is null.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_train_step import make_step  # noqa: E402
from bench.bench_train_step import parse as parse_step  # noqa: E402
from bench.common import RESULTS, finish, interleaved, medians  # noqa: E402
from training.data import VideoClips  # noqa: E402
from training.samples import encode_mp4  # noqa: E402
from training.toy.world import write_toy_shards  # noqa: E402


def webvid_like_video(frames: int, width: int = 596, height: int = 336, seed: int = 0):
    """``uint8 [frames, h, w, 3]``: a drifting colour gradient with moving blobs and grain (codec work like
    real footage, unlike flat synthetic frames)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    centres = rng.uniform(0, 1, (6, 2)) * (width, height)
    speeds = rng.normal(0, 3, (6, 2))
    for f in range(frames):
        img = np.stack(
            [
                128 + 100 * np.sin((xx + 2 * f) / 60),
                128 + 100 * np.sin((yy - f) / 45),
                128 + 100 * np.cos((xx + yy + 3 * f) / 80),
            ],
            -1,
        )
        for (cx, cy), (vx, vy) in zip(centres, speeds):
            blob = np.exp(-(((xx - cx - vx * f) ** 2 + (yy - cy - vy * f) ** 2) / 900.0))
            img += 120 * blob[..., None]
        img += rng.normal(0, 6, img.shape)
        out[f] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def clips_per_second(dataset, clips: int) -> tuple[float, float, dict]:
    """(CPU, wall) clips per second of iterating ``dataset`` for ``clips`` good clips."""
    wall, cpu = time.perf_counter(), time.process_time()
    it, n = iter(dataset), 0
    while n < clips:
        n += "video" in next(it)
    return clips / (time.process_time() - cpu), clips / (time.perf_counter() - wall), dict(dataset.stats)


def write_video_shard(folder: Path, video, count: int) -> Path:
    import io
    import json
    import tarfile

    data = encode_mp4(video, fps=25)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "real-00000.tar", "w") as tar:
        for i in range(count):
            for suffix, blob in ((".mp4", data), (".json", json.dumps({"caption": "a test clip"}).encode())):
                info = tarfile.TarInfo(f"{i:06d}{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return folder


def main(argv=None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=32, help="toy clips decoded per repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--teacher", default=str(ROOT / "training" / "toy" / "teacher"))
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--real-clips", type=int, default=4, help="real-size clips decoded per repetition (0: skip)")
    p.add_argument("--real-video-frames", type=int, default=128)
    p.add_argument("--real-size", type=int, default=512)
    p.add_argument(
        "--real-interval", type=int, default=8, help="frame interval of the real cut (official AnimateDiff run: 8)"
    )
    p.add_argument("--real-batch", type=int, default=1)
    p.add_argument(
        "--step-seconds", type=float, default=None, help="seconds of one real training step (measured on a GPU)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mcm-bench-data-") as tmp:  # the shards are removed afterwards
        return _measure(args, argv, Path(tmp))


def _measure(args, argv, work: Path) -> dict:

    toy = VideoClips(
        write_toy_shards(work / "toy", num_clips=max(args.clips, 8), frames=16, size=32),
        args.frames,
        1,
        args.resolution,
    )
    toy_rates = [clips_per_second(toy, args.clips) for _ in range(args.reps)]
    step_args = parse_step(
        [
            "--teacher",
            args.teacher,
            "--resolution",
            str(args.resolution),
            "--frames",
            str(args.frames),
            "--batch",
            str(args.batch),
            "--rank",
            str(args.rank),
            "--device",
            args.device,
            "--no-record",
        ]
    )
    step, _ = make_step(step_args)
    wall, cpu = medians(interleaved({"step": step}, args.reps, args.device))
    decoded = statistics.median(c for c, _, _ in toy_rates)
    consumed = args.batch / cpu["step"]
    result = {
        "ratio": decoded / consumed,
        "goal": ">= 1 (one loader process keeps up with the step)",
        "toy_decoded_clips_per_cpu_second": decoded,
        "toy_decoded_clips_per_wall_second": statistics.median(w for _, w, _ in toy_rates),
        "toy_consumed_clips_per_cpu_second": consumed,
        "toy_step": f"{args.teacher}, batch {args.batch}, {args.frames} frames, {args.resolution} px: "
        f"{cpu['step']:.4f} CPU s / {wall['step']:.4f} wall s",
        "toy_loader_stats": toy_rates[-1][2],
        "reps": args.reps,
    }
    if args.real_clips > 0:
        video = webvid_like_video(args.real_video_frames)
        real = VideoClips(
            write_video_shard(work / "real", video, args.real_clips), 16, args.real_interval, args.real_size
        )
        real_rates = [clips_per_second(real, args.real_clips) for _ in range(args.reps)]
        real_decoded = statistics.median(c for c, _, _ in real_rates)
        result.update(
            {
                "real_video": f"596x336 H.264 mp4, {args.real_video_frames} frames; "
                f"cut 16 frames, interval {args.real_interval}, crop to {args.real_size} px",
                "real_decoded_clips_per_cpu_second": real_decoded,
                "real_decoded_clips_per_wall_second": statistics.median(w for _, w, _ in real_rates),
                "ratio_real": real_decoded / (args.real_batch / args.step_seconds) if args.step_seconds else None,
                "real_step_seconds": args.step_seconds,
            }
        )
    return finish(args, __file__, argv, "data loading vs a training step's consumption", result)


if __name__ == "__main__":
    main()
