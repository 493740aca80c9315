"""The shape of a ModelScope text-to-video UNet3D, and how to read it from a diffusers ``unet/config.json``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelScopeUNetConfig:
    """What varies between ModelScope UNet3D checkpoints; the defaults are damo-vilab/text-to-video-ms-1.7b.

    ``attention_head_dim`` keeps diffusers' name and meaning: every attention has heads of this width
    (a block of ``c`` channels has ``c // attention_head_dim`` heads), except ``transformer_in``, which has
    ``temporal_in_heads`` heads of this width over its own inner dimension. The level ``i`` of
    ``block_out_channels`` has spatial and temporal attention unless it is the last (deepest) level.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 1024
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    temporal_in_heads: int = 8

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if len(self.block_out_channels) < 2:
            raise ValueError(f"block_out_channels needs at least 2 levels, got {self.block_out_channels}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}")
            if c < self.attention_head_dim:
                raise ValueError(f"block_out_channels {c} is smaller than attention_head_dim {self.attention_head_dim}")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be at least 1, got {self.layers_per_block}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @classmethod
    def from_diffusers_config(cls, config: dict) -> ModelScopeUNetConfig:
        """The config of a diffusers ``UNet3DConditionModel`` (its ``config.json`` as a dict).

        Raises ValueError naming the key and the value this network needs for anything it does not
        implement (a timestep condition, other block types or activations, a flipped time embedding, ...).
        Keys starting with ``_`` and ``sample_size`` are ignored.
        """
        levels = len(config.get("block_out_channels", cls.block_out_channels))
        fixed = {
            "act_fn": "silu",
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
            "num_attention_heads": None,
            "time_cond_proj_dim": None,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "down_block_types": ["CrossAttnDownBlock3D"] * (levels - 1) + ["DownBlock3D"],
            "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (levels - 1),
        }
        read = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim")
        read += ("attention_head_dim", "norm_num_groups", "norm_eps")
        kwargs = {}
        for key, value in config.items():
            if key.startswith("_") or key == "sample_size":
                continue
            if key in fixed:
                expected = fixed[key]
                if (list(value) if isinstance(value, (list, tuple)) else value) != expected:
                    raise ValueError(f"unet config {key}={value!r} is not implemented: expected {expected!r}")
            elif key in read:
                kwargs[key] = value
            else:
                raise ValueError(f"unet config key {key!r} is not one this network implements")
        for key in ("attention_head_dim", "norm_num_groups"):
            if key in kwargs and not isinstance(kwargs[key], int):
                raise ValueError(f"unet config {key}={kwargs[key]!r} is not implemented: expected an int")
        return cls(**kwargs)


#: damo-vilab/text-to-video-ms-1.7b (and the fine-tunes of it that keep its shape, e.g. zeroscope).
MS_1_7B = ModelScopeUNetConfig()
