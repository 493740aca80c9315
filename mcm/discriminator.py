"""MCM's frame discriminator: frozen DINOv2 features, light trainable heads, text conditioning.

A projected discriminator in the StyleGAN-T manner, as the official MCM code builds it (yhZhai/mcm,
``models/discriminator_handcraft.py``): patch tokens of four intermediate DINOv2 layers (2, 5, 8, 11 of
ViT-S/14) each feed a head of spectral-normalised 1-D convolutions with a local batch-statistics
norm; a text embedding projected to 64 dimensions scores every token. Only the heads train.

The backbone is any module with a ``features(images) -> list[(B, C, N)]`` method, and images are
judged after :func:`diff_augment` and DINO preprocessing; :class:`Dinov2Features` wraps a transformers
``Dinov2Model``. Pure torch: transformers is needed only to build the backbone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

__all__ = [
    "AdaptivePenaltyWeight",
    "BatchNormLocal",
    "DINO_INPUT_SIZE",
    "DiscHead",
    "Dinov2Features",
    "FrameDiscriminator",
    "LOSSES",
    "diff_augment",
    "discriminator_accuracy",
    "discriminator_loss",
    "feature_gradient_penalty",
    "generator_loss",
    "r1_penalty",
    "random_crop",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_INPUT_SIZE = 224  # the official discriminator's input side, whatever DINOv2 size (16 x 16 patches of 14 px)
LOSSES = ("wgan", "hinge", "bce")


# --- differentiable augmentation -------------------------------------------------------------------


def diff_augment(x: torch.Tensor, generator: torch.Generator | None = None, cutout: float = 0.2) -> torch.Tensor:
    """Colour (brightness, saturation, contrast), translation (≤ 1/8, zero fill) and cutout, per image.

    Images are in [-1, 1]; every operation is differentiable in ``x`` and drawn independently per image.
    """
    b, _, h, w = x.shape

    def u(*shape):
        return torch.rand(*shape, generator=generator).to(x)

    x = x + (u(b, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (u(b, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (u(b, 1, 1, 1) + 0.5) + mean
    # translation: integer shifts up to 1/8 of the side, zero padding
    sy = (torch.randint(-(h // 8), h // 8 + 1, (b,), generator=generator)).tolist()
    sx = (torch.randint(-(w // 8), w // 8 + 1, (b,), generator=generator)).tolist()
    pad = (w // 8, w // 8, h // 8, h // 8)
    padded = F.pad(x, pad)
    x = torch.stack(
        [padded[i, :, h // 8 - sy[i] : h // 8 - sy[i] + h, w // 8 - sx[i] : w // 8 - sx[i] + w] for i in range(b)]
    )
    # cutout: one square per image, side = cutout × image side
    ch, cw = max(1, int(h * cutout + 0.5)), max(1, int(w * cutout + 0.5))
    cy = torch.randint(0, h - ch + 1, (b,), generator=generator).tolist()
    cx = torch.randint(0, w - cw + 1, (b,), generator=generator).tolist()
    mask = torch.ones(b, 1, h, w, device=x.device, dtype=x.dtype)
    for i in range(b):
        mask[i, :, cy[i] : cy[i] + ch, cx[i] : cx[i] + cw] = 0
    return x * mask


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """With probability ``p``, one random ``size`` × ``size`` crop for the whole batch, when the images are larger."""
    _, _, h, w = x.shape
    if min(h, w) > size and torch.rand((), generator=generator).item() < p:
        top = int(torch.randint(0, h - size + 1, (), generator=generator))
        left = int(torch.randint(0, w - size + 1, (), generator=generator))
        x = x[:, :, top : top + size, left : left + size]
    return x


def dino_preprocess(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[-1, 1] images → DINO input: [0, 1], a random ``size`` crop half of the time when larger,
    area resize to ``size``², ImageNet normalisation."""
    x = random_crop((x + 1) / 2, size, generator)
    x = F.interpolate(x, size=(size, size), mode="area")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# --- backbone ---------------------------------------------------------------------------------------


class Dinov2Features(nn.Module):
    """Patch tokens of chosen layers of a transformers ``Dinov2Model``, layer-normed, CLS/registers
    dropped: a list of ``(B, C, N)``. Frozen (gradients still flow to the input).

    ``input_size`` is the side of the images the backbone sees: 224 by default for any DINOv2 (the
    official discriminator's; 256 patch tokens per layer at 14-px patches), not the config's
    ``image_size`` (518 for the hub's models, the side of their last pretraining stage, 1,369 tokens);
    the position embeddings are interpolated to the input."""

    def __init__(self, model, layers: tuple[int, ...] = (2, 5, 8, 11), input_size: int = DINO_INPUT_SIZE):
        super().__init__()
        n = model.config.num_hidden_layers
        if any(not 0 <= i < n for i in layers):
            raise ValueError(f"feature layers {layers} outside the backbone's {n} layers")
        self.model = model.eval().requires_grad_(False)
        self.layers = tuple(layers)
        if input_size % model.config.patch_size:
            raise ValueError(
                f"DINOv2 input side {input_size} is not a multiple of its {model.config.patch_size}-px patches"
            )
        self.image_size = int(input_size)
        self.channels = int(model.config.hidden_size)
        self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "facebook/dinov2-small", layers=(2, 5, 8, 11), input_size: int = DINO_INPUT_SIZE
    ) -> Dinov2Features:
        from transformers import Dinov2Model

        return cls(Dinov2Model.from_pretrained(name_or_path), layers, input_size)

    def train(self, mode: bool = True):  # the backbone always stays in eval mode
        super().train(mode)
        self.model.eval()
        return self

    def features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        norm = self.model.layernorm
        return [norm(out.hidden_states[i + 1])[:, self.skip :].transpose(1, 2) for i in self.layers]


# --- heads ------------------------------------------------------------------------------------------


class BatchNormLocal(nn.Module):
    """Batch-statistics norm over groups of ``virtual_bs`` samples and all tokens; affine; no running stats."""

    def __init__(self, channels: int, virtual_bs: int = 8, eps: float = 1e-5):
        super().__init__()
        self.virtual_bs, self.eps = virtual_bs, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        groups = math.ceil(b / self.virtual_bs)
        if b % groups:
            raise ValueError(f"batch {b} does not split into {groups} equal groups of at most {self.virtual_bs}")
        g = x.view(groups, -1, c, n)
        mean = g.mean(dim=(1, 3), keepdim=True)
        var = g.var(dim=(1, 3), keepdim=True, unbiased=False)
        g = (g - mean) / torch.sqrt(var + self.eps)
        return g.view(b, c, n) * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)


def _block(channels: int, kernel: int) -> nn.Sequential:
    conv = spectral_norm(nn.Conv1d(channels, channels, kernel, padding=kernel // 2, padding_mode="circular"))
    return nn.Sequential(conv, BatchNormLocal(channels), nn.LeakyReLU(0.2))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return (self.fn(x) + x) / math.sqrt(2)


class DiscHead(nn.Module):
    """block(k=1) → residual block(k=9) → per-token projection onto the projected text embedding."""

    def __init__(self, channels: int, c_dim: int, cmap_dim: int = 64):
        super().__init__()
        self.main = nn.Sequential(_block(channels, 1), _Residual(_block(channels, 9)))
        self.cls = spectral_norm(nn.Conv1d(channels, cmap_dim, 1))
        self.cmap = nn.Linear(c_dim, cmap_dim)
        self.cmap_dim = cmap_dim

    def forward(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.cls(self.main(tokens))
        return (h * self.cmap(c).unsqueeze(-1)).sum(dim=1) / math.sqrt(self.cmap_dim)


class FrameDiscriminator(nn.Module):
    """Heads over a frozen backbone. ``forward(images, text)`` → logits ``(B, Σ tokens)``."""

    def __init__(self, backbone: nn.Module, c_dim: int, cmap_dim: int = 64):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList([DiscHead(backbone.channels, c_dim, cmap_dim) for _ in backbone.layers])

    def trainable_parameters(self):
        return self.heads.parameters()

    def preprocess(self, images: torch.Tensor, generator=None, augment: bool = True) -> torch.Tensor:
        if augment:
            images = diff_augment(images, generator)
        return dino_preprocess(images, self.backbone.image_size, generator)

    def head_logits(self, features: list[torch.Tensor], c: torch.Tensor) -> list[torch.Tensor]:
        return [head(f, c) for head, f in zip(self.heads, features, strict=True)]

    def forward(
        self, images: torch.Tensor, c: torch.Tensor, generator=None, augment: bool = True, with_grad_to_input=True
    ):
        pixels = self.preprocess(images, generator, augment)
        if with_grad_to_input:
            features = self.backbone.features(pixels)
        else:
            with torch.no_grad():
                features = self.backbone.features(pixels)
        return torch.cat(self.head_logits(features, c), dim=1)


# --- losses and penalties -----------------------------------------------------------------------------


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "wgan") -> torch.Tensor:
    """wgan (official scripts, clipped at −1 per logit), hinge (the paper's) or bce."""
    if kind == "wgan":
        return torch.clamp(-real, min=-1).mean() + torch.clamp(fake, min=-1).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    raise ValueError(f"unknown adversarial loss {kind!r}; expected one of {LOSSES}")


def discriminator_accuracy(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Share of images the discriminator gets right at threshold 0 (each image's logit is the mean over
    its tokens), real and fake weighted equally: 0.5 is chance. Every loss of :data:`LOSSES` pushes real
    logits above 0 and fake logits below."""
    right_real = (real.flatten(1).mean(1) > 0).float().mean()
    right_fake = (fake.flatten(1).mean(1) < 0).float().mean()
    return float((right_real + right_fake) / 2)


def generator_loss(fake: torch.Tensor, kind: str = "wgan") -> torch.Tensor:
    if kind == "wgan":
        return -fake.mean()
    if kind == "hinge":
        return 1 - fake.mean()
    if kind == "bce":
        return F.softplus(-fake).mean()
    raise ValueError(f"unknown adversarial loss {kind!r}; expected one of {LOSSES}")


def feature_gradient_penalty(
    disc: FrameDiscriminator, real_pixels: torch.Tensor, fake_pixels: torch.Tensor, c: torch.Tensor, generator=None
) -> torch.Tensor:
    """The official "r1": a WGAN-GP penalty on interpolates, taken in DINO-*feature* space.

    ``real_pixels``/``fake_pixels`` are preprocessed DINO inputs; α ~ U(0, 1) per image; the gradient
    of the summed logits w.r.t. the interpolate's features (all layers, flattened per image) gives
    ``mean((‖g‖₂ − 1)²)``.
    """
    a = torch.rand(real_pixels.shape[0], 1, 1, 1, generator=generator).to(real_pixels)
    with torch.no_grad():
        feats = disc.backbone.features(a * real_pixels + (1 - a) * fake_pixels)
    feats = [f.detach().requires_grad_(True) for f in feats]
    logits = disc.head_logits(feats, c)
    grads = torch.autograd.grad(sum(logit.sum() for logit in logits), feats, create_graph=True)
    g = torch.cat([gr.flatten(1) for gr in grads], dim=1)
    return ((g.norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(disc: FrameDiscriminator, real_pixels: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """True R1: ``mean ‖∇ₓ D(x)‖²`` on real (preprocessed) images, through the frozen backbone.

    It differentiates twice through the backbone's attention: build DINOv2 with
    ``attn_implementation="eager"`` (fused attention kernels have no second derivative on every device).
    """
    x = real_pixels.detach().requires_grad_(True)
    logits = torch.cat(disc.head_logits(disc.backbone.features(x), c), dim=1)
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return g.pow(2).flatten(1).sum(1).mean()


class AdaptivePenaltyWeight:
    """The official rule: if more than ``patience`` steps passed since the last increase and the
    penalty is ≥ ``threshold``, multiply the weight by ``factor`` (persisting)."""

    def __init__(self, weight: float = 1e-5, factor: float = 5.0, threshold: float = 100.0, patience: int = 500):
        self.weight, self.factor, self.threshold, self.patience = weight, factor, threshold, patience
        self.last_increase = 0

    def update(self, penalty: float, step: int) -> float:
        if step - self.last_increase > self.patience and penalty >= self.threshold:
            self.weight *= self.factor
            self.last_increase = step
        return self.weight

    def state_dict(self) -> dict:
        return {"weight": self.weight, "last_increase": self.last_increase}

    def load_state_dict(self, state: dict) -> None:
        self.weight, self.last_increase = float(state["weight"]), int(state["last_increase"])


def sparse_frame_indices(num_frames: int, k: int = 2, generator=None) -> list[int]:
    """``k`` distinct frame indices (the same for the whole batch), as the official random.sample."""
    if not 1 <= k <= num_frames:
        raise ValueError(f"cannot judge {k} frames of a {num_frames}-frame clip")
    return sorted(torch.randperm(num_frames, generator=generator)[:k].tolist())
