"""The toy teacher's parts: its tokenizer (whole-word tokens for the toy vocabulary), its models (the tiny
teachers' configurations, :mod:`training.models`), the diffusers folder it is saved as, and the toy batches and
encodings its training and probes share."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import torch

from training.data import select_clip
from training.models import TINY_BLOCKS, TINY_MOTION, TINY_TEXT, TINY_UNET, TINY_VAE
from training.toy.world import COLOURS, DIRECTIONS, SHAPES, toy_clip

UNET_CONFIG = {**TINY_UNET, **TINY_BLOCKS["animatediff"]}
CLIP_FRAMES = 16  # toy clips are generated this long; training windows are cut from them like the trainer does


# --- tokenizer -------------------------------------------------------------------------------------


def toy_words() -> list[str]:
    return sorted({"a", "moving", "slowly", "quickly", *COLOURS, *DIRECTIONS, *SHAPES})


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode alphabet: printable bytes as themselves, the rest shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges, learned the usual way (most frequent adjacent pair first) until every word is
    one token; encoding a word replays them in this order and so ends at the whole word."""
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges = []
    while any(len(p) > 1 for p in pieces.values()):
        pairs = Counter((p[i], p[i + 1]) for p in pieces.values() for i in range(len(p) - 1))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for w, p in pieces.items():
            out, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    out.append(p[i] + p[i + 1])
                    i += 2
                else:
                    out.append(p[i])
                    i += 1
            pieces[w] = out
    return merges


def build_tokenizer():
    """A ``CLIPTokenizer`` over CLIP's byte alphabet with whole-word tokens for the toy vocabulary (any
    other text falls back to characters)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    merges = _learn_merges(toy_words())
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=77)


# --- models ----------------------------------------------------------------------------------------


def build_models(tokenizer, seed: int = 0):
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**UNET_CONFIG), MotionAdapter(**TINY_MOTION))
    vae = AutoencoderKL(**TINY_VAE)
    text = CLIPTextModel(
        CLIPTextConfig(
            **TINY_TEXT,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return unet, vae, text


def load_models(path: Path, tokenizer):
    """The models of a saved toy teacher folder (to continue training it)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel

    path = Path(path)
    unet = UNetMotionModel.from_unet2d(
        UNet2DConditionModel.from_pretrained(path / "unet"), MotionAdapter.from_pretrained(path / "motion_adapter")
    )
    history = json.loads((path / "toy_teacher.json").read_text())
    return (
        unet,
        AutoencoderKL.from_pretrained(path / "vae"),
        CLIPTextModel.from_pretrained(path / "text_encoder"),
        history,
    )


def save_teacher(out: Path, unet, vae, text, tokenizer, settings: dict) -> None:
    """Write the diffusers folder atomically (a temporary folder, then a rename; an existing folder is
    moved aside only once the new one is complete)."""
    from diffusers import MotionAdapter, UNet2DConditionModel

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state = unet.state_dict()
    unet2d = UNet2DConditionModel(**UNET_CONFIG)
    unet2d.load_state_dict({k: v for k, v in state.items() if "motion_modules" not in k}, strict=True)
    adapter = MotionAdapter(**TINY_MOTION)
    adapter_state = {k: v for k, v in state.items() if "motion_modules" in k}
    missing, unexpected = adapter.load_state_dict(adapter_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"motion module keys do not line up: missing {missing[:3]}, unexpected {unexpected[:3]}")
    unet2d.save_pretrained(tmp / "unet")
    adapter.save_pretrained(tmp / "motion_adapter")
    vae.save_pretrained(tmp / "vae")
    text.save_pretrained(tmp / "text_encoder")
    tokenizer.save_pretrained(tmp / "tokenizer")
    (tmp / "toy_teacher.json").write_text(json.dumps(settings, indent=2) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


# --- data and encodings ----------------------------------------------------------------------------


def toy_batch(
    rng: random.Random, batch: int, frames: int, size: int, degraded: bool = True, world: str = "tied"
) -> tuple[torch.Tensor, list[str]]:
    """``batch`` clips ``[b, 3, frames, size, size]`` in [-1, 1] cut from fresh 16-frame toy clips the way
    the trainer cuts them (random window, random-resized crop); ``world``: the toy world (see
    :func:`training.toy.world.toy_clip`)."""
    clips, captions = [], []
    for _ in range(batch):
        clip, caption = toy_clip(rng.randrange(1 << 30), CLIP_FRAMES, size, degraded, world)
        clips.append(select_clip(clip, frames, 1, size, "random", rng))
        captions.append(caption)
    return torch.stack(clips), captions


def encode_captions(text, tokenizer, captions: list[str]) -> torch.Tensor:
    """Per-token CLIP embeddings ``[b, 77, d]`` of ``captions`` (the UNet's conditioning)."""
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return text(ids).last_hidden_state


def encode_video(vae, video: torch.Tensor) -> torch.Tensor:
    """``[b, 3, f, h, w]`` pixels → ``[b, 4, f, h/2, w/2]`` scaled latents (posterior mean)."""
    b, _, f = video.shape[:3]
    frames = video.transpose(1, 2).flatten(0, 1)
    z = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
    return z.unflatten(0, (b, f)).transpose(1, 2)
