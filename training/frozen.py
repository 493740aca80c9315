"""The teacher's frozen VAE and text encoder, and where they live: on the device, or (``--offload-frozen``) on
the CPU, visiting the device for each call. Every call into them goes through :class:`FrozenParts`, which owns
the placement, so the generator and discriminator branches place them alike.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext

import torch


@contextmanager
def visiting(module: torch.nn.Module, device, offload: bool):
    """With ``offload``, ``module`` is moved to ``device`` for the block and back to the CPU after it.

    Inside the block (nested blocks too) the module counts as placed for compute, offload or not:
    :func:`is_placed` says so, on a CPU as well, where no move can be seen."""
    move = offload and torch.device(device).type != "cpu"
    module._mcm_visits = getattr(module, "_mcm_visits", 0) + 1
    if move and module._mcm_visits == 1:
        module.to(device)
    try:
        yield module
    finally:
        module._mcm_visits -= 1
        if move and module._mcm_visits == 0:
            module.to("cpu")


def is_placed(module: torch.nn.Module) -> bool:
    """Whether ``module`` is inside a :func:`visiting` block (placed for compute)."""
    return getattr(module, "_mcm_visits", 0) > 0


class FrozenParts:
    """The teacher's VAE and text encoder, called only through these methods, which own their placement.

    With ``offload`` each module lives on the CPU and visits ``device`` per call. :meth:`decode_frames`
    with gradient keeps the VAE placed until :meth:`release` (call it after the backward pass: the
    graph holds the VAE's weights, which must still be on the device when the gradient flows back)."""

    def __init__(self, teacher, device, offload: bool):
        self.teacher, self.device, self.offload = teacher, torch.device(device), offload
        self._held = ExitStack()

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token embeddings (the UNet's conditioning) and the pooled one (the discriminator's)."""
        with visiting(self.teacher.text_encoder, self.device, self.offload) as text_encoder:
            out = text_encoder(self.teacher.tokenizer(captions).to(self.device))
        return out[0], out.pooler_output.float()

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(b, c, f, h, w)`` pixels in [-1, 1] → scaled latents ``(b, c', f, h', w')`` (sampled, in chunks of 32
        frames)."""
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(self.device, self.teacher.vae.dtype)
        with visiting(self.teacher.vae, self.device, self.offload) as vae:
            latents = torch.cat([vae.encode(chunk).latent_dist.sample(generator) for chunk in frames.split(32)])
        latents = latents * self.teacher.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4).float()

    def decode_frames(self, latents: torch.Tensor, index: list[int]) -> torch.Tensor:
        """Decode only frames ``index`` of ``(b, c, f, h, w)`` latents → ``(b·len(index), 3, H, W)``,
        keeping the graph to the latents (the VAE stays placed until :meth:`release`)."""
        vae = self.teacher.vae
        placement = visiting(vae, self.device, self.offload)
        if torch.is_grad_enabled():  # held until release(), after the backward pass
            self._held.enter_context(placement)
            placement = nullcontext()
        with placement:
            picked = latents[:, :, index].permute(0, 2, 1, 3, 4).flatten(0, 1)
            return vae.decode((picked / self.teacher.scaling_factor).to(vae.dtype)).sample.float()

    @contextmanager
    def placed(self):
        """The VAE and the text encoder, both placed for compute for the block (for code that calls them
        directly)."""
        with (
            visiting(self.teacher.vae, self.device, self.offload) as vae,
            visiting(self.teacher.text_encoder, self.device, self.offload) as text_encoder,
        ):
            yield vae, text_encoder

    def release(self) -> None:
        """Undo the placements :meth:`decode_frames` kept for the backward pass."""
        self._held.close()
        self._held = ExitStack()
