"""mcm.modelscope's UNet3D against diffusers' UNet3DConditionModel, an independent implementation.

Tiny configs with every parameter random (diffusers zero-initialises conv4 and proj_out, which would hide
the temporal layers); the full ms-1.7b config only on the meta device (keys, shapes, parameter count).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet3DConditionModel

from mcm.modelscope import MS_1_7B, ModelScopeUNet3D, ModelScopeUNetConfig, sdpa_attention, torch_ops
from mcm.modelscope import unet as unet_module

#: Two levels, one layer per level; 4 heads of 8 in the blocks, transformer_in 8 heads of 8 (inner 64 > 32 channels).
TINY = {"block_out_channels": (32, 64), "layers_per_block": 1, "attention_head_dim": 8}
#: Three levels, two layers per level (three per decoder level), 2-4 heads of 16; exercises the mid and up paths.
DEEP = {"block_out_channels": (32, 64, 64), "layers_per_block": 2, "attention_head_dim": 16}
COMMON = {"norm_num_groups": 8, "cross_attention_dim": 16}
CONTEXT_TOKENS = 5


def diffusers_config(shape: dict) -> dict:
    levels = len(shape["block_out_channels"])
    return {
        **COMMON,
        **shape,
        "down_block_types": ("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",),
        "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1),
    }


def build_pair(shape: dict, seed: int = 0) -> tuple[UNet3DConditionModel, ModelScopeUNet3D]:
    torch.manual_seed(seed)
    ref = UNet3DConditionModel(**diffusers_config(shape)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    ours = ModelScopeUNet3D(ModelScopeUNetConfig.from_diffusers_config(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def pairs() -> dict:
    return {"tiny": build_pair(TINY), "deep": build_pair(DEEP, seed=1)}


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """``(b, c, f, h, w) -> (b·f, c, h, w)``, each video's frames contiguous."""
    b, c, f, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def inputs(batch: int, frames: int, size: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, *size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    context = torch.randn(batch, CONTEXT_TOKENS, COMMON["cross_attention_dim"], generator=g)
    return x, t, context


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference over the reference's max magnitude."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_keys_and_shapes_match_diffusers_for_tiny_configs(pairs):
    for ref, ours in pairs.values():
        theirs, mine = ref.state_dict(), ours.state_dict()
        assert set(mine) == set(theirs)
        assert all(mine[k].shape == theirs[k].shape for k in theirs)
    assert pairs["tiny"][1].transformer_in.proj_in.out_features == 8 * TINY["attention_head_dim"]


def test_full_config_on_meta_matches_diffusers_keys_shapes_and_parameter_count():
    ours = ModelScopeUNet3D(MS_1_7B, device="meta")
    with torch.device("meta"):
        ref = UNet3DConditionModel()
    theirs, mine = ref.state_dict(), ours.state_dict()
    assert set(mine) == set(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    assert all(t.is_meta for t in mine.values())  # nothing allocated
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    assert abs(count - 1.41e9) < 0.01 * 1.41e9, count
    assert ours.transformer_in.proj_in.in_features == 320 and ours.transformer_in.proj_in.out_features == 512
    assert ours.down_blocks[0].attentions[0].transformer_blocks[0].attn2.heads == 320 // 64
    assert ours.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.in_features == 1024
    assert ModelScopeUNetConfig.from_diffusers_config(dict(ref.config)) == MS_1_7B


@pytest.mark.parametrize(
    ("name", "batch", "frames", "size"),
    [
        ("tiny", 1, 1, (8, 8)),
        ("tiny", 1, 3, (8, 8)),
        ("tiny", 2, 8, (8, 8)),
        ("deep", 2, 3, (8, 8)),
        ("deep", 1, 8, (8, 8)),
        ("deep", 2, 1, (6, 10)),  # not a multiple of 4: the upsamplers take the skip's size, as in diffusers
    ],
)
def test_float32_output_matches_diffusers(pairs, name, batch, frames, size):
    ref, ours = pairs[name]
    x, t, context = inputs(batch, frames, size, seed=frames)
    with torch.no_grad():
        expected = to_frames(ref(x, t, context).sample)
        got = ours(to_frames(x), t, context, num_frames=frames)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_the_input_dtype_and_matches_diffusers(pairs, dtype):
    """Both run the same operations in the same order (bit-identical on CPU, torch 2.13); a device whose
    kernels pick another reduction order for one of the layouts may round differently, by a few ulps of an
    8-bit (bf16) mantissa, hence 1e-2 against diffusers. Against fp32 each is off by the half-precision
    rounding itself (measured 5.7e-3 for bf16, 6.9e-4 for fp16), hence 2e-2."""
    ref32, ours32 = pairs["deep"]
    x, t, context = inputs(2, 3, (8, 8), seed=5)
    with torch.no_grad():
        exact = to_frames(ref32(x, t, context).sample)
        ref = UNet3DConditionModel(**diffusers_config(DEEP)).eval()
        ref.load_state_dict(ref32.state_dict())
        ref = ref.to(dtype)
        ours = ModelScopeUNet3D(ours32.config, dtype=dtype).eval()
        ours.load_state_dict(ours32.state_dict())
        expected = to_frames(ref(x.to(dtype), t, context.to(dtype)).sample)
        got = ours(to_frames(x).to(dtype), t, context.to(dtype), num_frames=3)
    assert got.dtype == dtype
    assert rel_err(got, expected) <= 1e-2
    assert rel_err(got, exact) <= 2e-2


def test_per_frame_and_per_video_timesteps_and_context_agree(pairs):
    _, ours = pairs["tiny"]
    frames = 3
    x, t, context = inputs(2, frames, (8, 8), seed=7)
    x = to_frames(x)
    with torch.no_grad():
        per_video = ours(x, t, context, num_frames=frames)
        per_frame = ours(x, t.repeat_interleave(frames), context.repeat_interleave(frames, 0), num_frames=frames)
        mixed = ours(x, t.repeat_interleave(frames), context, num_frames=frames)
        scalar = ours(x, int(t[0]), context, num_frames=frames)
        first_t = ours(x, t[:1].expand(2), context, num_frames=frames)
    torch.testing.assert_close(per_frame, per_video, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed, per_video, rtol=0, atol=1e-6)
    torch.testing.assert_close(scalar, first_t, rtol=0, atol=1e-6)


def test_videos_in_the_batch_are_independent(pairs):
    """Two videos (cond and uncond) in one batch give what each gives alone: no hard-coded batch."""
    _, ours = pairs["deep"]
    x, t, context = inputs(2, 3, (8, 8), seed=9)
    with torch.no_grad():
        both = ours(to_frames(x), t, context, num_frames=3)
        second = ours(to_frames(x[1:]), t[1:], context[1:], num_frames=3)
    torch.testing.assert_close(both[3:], second, rtol=0, atol=1e-5)


def test_operations_dtype_and_attention_are_used():
    built = []

    def counting(cls):
        class Counted(cls):
            def __init__(self, *args, **kwargs):
                built.append((cls.__name__, kwargs.get("dtype"), kwargs.get("device")))
                super().__init__(*args, **kwargs)

        return Counted

    class CountingOps:
        Linear = counting(torch_ops.Linear)
        Conv2d = counting(torch_ops.Conv2d)
        Conv3d = counting(torch_ops.Conv3d)
        GroupNorm = counting(torch_ops.GroupNorm)
        LayerNorm = counting(torch_ops.LayerNorm)

    calls = []

    def attention(q, k, v, heads):
        calls.append(heads)
        return sdpa_attention(q, k, v, heads)

    cfg = ModelScopeUNetConfig.from_diffusers_config(diffusers_config(TINY))
    model = ModelScopeUNet3D(cfg, operations=CountingOps, dtype=torch.float64, device="cpu", attention=attention)
    layers = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    assert len(built) == len(layers) and all(type(m).__name__ == "Counted" for m in layers)
    assert all(dtype == torch.float64 and device == "cpu" for _, dtype, device in built)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    x, t, context = inputs(1, 2, (8, 8))
    out = model(to_frames(x).double(), t, context.double(), num_frames=2)
    assert out.dtype == torch.float64
    # transformer_in, 1 spatial + 1 temporal transformer at level 0, the mid block's, 2 in the up level: 2 each
    assert len(calls) == 2 * (1 + 2 + 2 + 4)
    assert calls[:2] == [8, 8]


def test_default_attention_in_chunks_equals_one_call(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(37, 6, 4 * 8, generator=g) for _ in range(3))
    whole = sdpa_attention(q, k, v, 4)
    monkeypatch.setattr(unet_module, "SDPA_BATCH_LIMIT", 20)
    torch.testing.assert_close(sdpa_attention(q, k, v, 4), whole, rtol=0, atol=1e-6)


def test_num_frames_that_does_not_divide_the_batch_is_refused(pairs):
    _, ours = pairs["tiny"]
    x, t, context = inputs(1, 3, (8, 8))
    with pytest.raises(ValueError, match="num_frames=2"):
        ours(to_frames(x), t, context, num_frames=2)
    with pytest.raises(ValueError, match="context has 2 rows"):
        ours(to_frames(x), t, context.expand(2, -1, -1), num_frames=3)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("time_cond_proj_dim", 256, "None"),
        ("flip_sin_to_cos", False, "True"),
        ("act_fn", "gelu", "'silu'"),
        ("down_block_types", ["DownBlock3D"] * 4, "CrossAttnDownBlock3D"),
        ("up_block_types", ["CrossAttnUpBlock3D"] * 4, "UpBlock3D"),
        ("num_attention_heads", 8, "None"),
        ("attention_head_dim", [64, 64, 64, 64], "an int"),
        ("class_embed_type", "timestep", "not one this network implements"),
    ],
)
def test_from_diffusers_config_refuses_what_is_not_implemented(key, value, expected):
    with pytest.raises(ValueError, match=key) as info:
        ModelScopeUNetConfig.from_diffusers_config({key: value})
    assert expected in str(info.value)
