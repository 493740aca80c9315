"""Write random full-size ModelScope T2V files for the real-host tests (the ms-1.7b shapes, random weights).

usage: python make_modelscope.py OUT_DIR [--seed 0] [--rank 4] [--no-original]

OUT_DIR/text2video/ms-rand/unet/config.json + diffusion_pytorch_model.safetensors
                                    diffusers' UNet3DConditionModel() (= text-to-video-ms-1.7b), fp32, random
OUT_DIR/text2video/ms-rand-original.pth
                                    the same tensors in the original release's names (UNetSD, as
                                    text2video_pytorch_model.pth), a bare state dict written with torch.save
OUT_DIR/mcm/modelscopet2v-anime/    an official-layout PEFT adapter (no MCM metadata) on every official target
                                    (the temporal convolutions excepted, which PEFT cannot wrap)
OUT_DIR/mcm/animatediff-webvid/, mcm-test-laion.safetensors   AnimateDiff adapters (make_adapters.py)
OUT_DIR/text_encoders/rand_clip_h.safetensors   SD 2.x's text encoder shape (CLIP-H, 23 layers), fp16, random
OUT_DIR/vae/rand_sd_vae.safetensors             the SD KL-f8 VAE, diffusers layout, fp16, random
Runs in the project's environment. ~1.5 GB peak beyond the 5.6 GB UNet; ~12 GB written; 1-3 min on 2 cores.
Writing is atomic per run: OUT_DIR appears complete or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import make_adapters  # noqa: E402  (this folder is on sys.path: it is the script's)

from mcm.weights import OFFICIAL_TARGET_MODULES  # noqa: E402
from tests.modelscope_layout import original_state_dict  # noqa: E402

UNET_FOLDER = "ms-rand"
ORIGINAL = "ms-rand-original.pth"
ADAPTER = "modelscopet2v-anime"
CLIP = "rand_clip_h.safetensors"
VAE = "rand_sd_vae.safetensors"


def random_unet(seed: int):
    """diffusers' default UNet3DConditionModel (the ms-1.7b config) with its own random initialisation; the temporal
    convolutions' last layers, which diffusers zero-initialises, get small random weights so that they act."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".conv4." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return unet


def lora_targets(unet) -> dict[str, tuple[int, ...]]:
    """The official MCM targets on ModelScope (what its training wraps): every module with an official suffix,
    except the temporal convolutions."""
    return {
        name: tuple(module.weight.shape)
        for name, module in unet.named_modules()
        if any(name == s or name.endswith("." + s) for s in OFFICIAL_TARGET_MODULES)
        and not ("temp" in name and "conv" in name)
    }


def write_adapter(unet, folder: Path, rank: int, seed: int) -> None:
    """A PEFT folder as the official release has it: adapter_config.json + adapter_model.safetensors (no metadata)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed + 2)
    tensors = {}
    targets = lora_targets(unet)
    for name, shape in targets.items():
        down = torch.randn((rank, *shape[1:]), generator=g) * 0.02
        up_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
        up = torch.randn(up_shape, generator=g) * 0.02
        tensors[f"base_model.model.{name}.lora_A.weight"] = down
        tensors[f"base_model.model.{name}.lora_B.weight"] = up
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": rank * 2,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def write_text_encoder(path: Path, seed: int) -> None:
    """SD 2.x's text encoder (OpenCLIP ViT-H/14 text tower as transformers' CLIPTextModel: 23 layers of 1024)."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 3)
    config = CLIPTextConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=23,
        projection_dim=1024,
        hidden_act="gelu",
        pad_token_id=1,
        max_position_embeddings=77,
        vocab_size=49408,
    )
    model = CLIPTextModel(config)
    # the names the released text_encoder/model.safetensors files have (newer transformers drop "text_model.")
    named = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in model.state_dict().items()}
    save_file({k: v.half().contiguous() for k, v in named.items()}, str(path))


def write_vae(path: Path, seed: int) -> None:
    """The SD KL-f8 VAE (128/256/512/512, 4 latent channels) in diffusers' names, which ComfyUI's Load VAE converts."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed + 4)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(path))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--no-original", action="store_true", help="skip the original-layout .pth (5.6 GB)")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    out = Path(args.out_dir)
    if out.exists():
        raise SystemExit(f"{out}: already exists")
    tmp = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    unet_dir = tmp / "text2video" / UNET_FOLDER / "unet"
    unet_dir.mkdir(parents=True)
    unet = random_unet(args.seed)
    unet.save_config(str(unet_dir))
    state = {k: v.contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(unet_dir / "diffusion_pytorch_model.safetensors"))
    if not args.no_original:
        levels, per = len(unet.config.block_out_channels), unet.config.layers_per_block
        torch.save(original_state_dict(state, levels, per, clone=False), tmp / "text2video" / ORIGINAL)
    write_adapter(unet, tmp / "mcm" / ADAPTER, args.rank, args.seed)
    del unet, state
    make_adapters.main([str(tmp / "mcm"), "--rank", str(args.rank)])  # AnimateDiff ones, for the refusals
    for sub, name, write in (("text_encoders", CLIP, write_text_encoder), ("vae", VAE, write_vae)):
        (tmp / sub).mkdir()
        write(tmp / sub / name, args.seed)
    os.replace(tmp, out)
    print(out)


if __name__ == "__main__":
    main()
