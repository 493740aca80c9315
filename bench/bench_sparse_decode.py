"""Benchmark: the adversarial branch decodes only the judged frames. Prints the cost ratio.

    python bench/bench_sparse_decode.py [--vae tiny|sd] [--frames 16] [--judged 2] [--size 256] [--repeats 3]

Times VAE decode + backward (the generator side of the frame adversarial loss) for ``--judged`` frames
of a ``--frames``-frame latent clip against decoding all of them, in one run on this machine, and
prints the ratio (ideal: judged / frames). ``--vae sd`` builds the full-size SD1.5 VAE architecture with
random weights (no download); ``tiny`` is the toy's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.models import tiny_vae  # noqa: E402


def build_vae(kind: str):
    from diffusers import AutoencoderKL

    if kind == "sd":
        return AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
        )

    return tiny_vae(0)


def time_decode(vae, latents: torch.Tensor, index: list[int], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        x = latents.clone().requires_grad_(True)
        start = time.perf_counter()
        picked = x[:, :, index].permute(0, 2, 1, 3, 4).flatten(0, 1)
        vae.decode(picked).sample.float().mean().backward()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", default="tiny", choices=["tiny", "sd"])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--judged", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="decoded frame size in pixels")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = build_vae(args.vae).to(device).requires_grad_(False)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, 4, args.frames, args.size // down, args.size // down, device=device)
    index = list(range(0, args.frames, max(1, args.frames // args.judged)))[: args.judged]
    time_decode(vae, latents, index, 1)  # warm-up
    sparse = time_decode(vae, latents, index, args.repeats)
    full = time_decode(vae, latents, list(range(args.frames)), args.repeats)
    print(f"device {device}, VAE {args.vae}, {args.frames} frames at {args.size}px")
    print(
        f"decode+backward of {args.judged} frames: {sparse * 1000:.1f} ms; of all {args.frames}: {full * 1000:.1f} ms"
    )
    print(f"ratio sparse/full = {sparse / full:.3f} (ideal {args.judged / args.frames:.3f})")


if __name__ == "__main__":
    main()
