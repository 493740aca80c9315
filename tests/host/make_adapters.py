"""Write random MCM adapters with full-size SD1.5 + AnimateDiff shapes, for the real-host tests.

usage: python make_adapters.py OUT_DIR [--rank 4]

OUT_DIR/animatediff-webvid/   an official-style PEFT folder (no MCM metadata), every official target
OUT_DIR/mcm-test-laion.safetensors   the same layers in our format, with metadata (scaled_linear betas)
Runs in the project's environment (diffusers builds the module list on the meta device).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mcm.weights import OFFICIAL_TARGET_MODULES, Adapter, AdapterMeta, LoraWeights, export_peft, save_adapter  # noqa: E402


def full_size_targets() -> dict[str, tuple[int, ...]]:
    """Official LoRA targets of SD1.5 + AnimateDiff v2 (diffusers names) → weight shapes."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with torch.device("meta"):
        # SD1.5: diffusers' default UNet config with 768-wide cross-attention (CLIP ViT-L/14)
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(cross_attention_dim=768), MotionAdapter())
    return {
        name: tuple(module.weight.shape)
        for name, module in unet.named_modules()
        if any(name == s or name.endswith("." + s) for s in OFFICIAL_TARGET_MODULES)
    }


def random_adapter(rank: int = 4, seed: int = 0, scale: float = 0.02) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, shape in full_size_targets().items():
        out_features, in_shape = shape[0], shape[1:]
        up_shape = (out_features, rank, 1, 1) if len(shape) == 4 else (out_features, rank)
        down = torch.randn((rank, *in_shape), generator=g) * scale
        up = torch.randn(up_shape, generator=g) * scale
        layers[name] = LoraWeights(down=down, up=up, alpha=float(rank))
    meta = AdapterMeta(lora_rank=rank, lora_alpha=float(rank), style="webvid", name="random test adapter")
    return Adapter(meta=meta, layers=layers, source="random")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = random_adapter(args.rank)
    # official-style: PEFT folder whose safetensors has no MCM metadata
    folder = export_peft(adapter, out / "animatediff-webvid", overwrite=True)
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    save_file(load_file(weights), str(weights), metadata={"format": "pt"})
    laion = Adapter(
        meta=adapter.meta.replace(
            style="laion",
            name="mcm test laion",
            beta_schedule="scaled_linear",
            training={"note": "random weights for host tests"},
        ),
        layers=adapter.layers,
    )
    save_adapter(laion, out / "mcm-test-laion.safetensors", overwrite=True)
    print(out)


if __name__ == "__main__":
    main()
