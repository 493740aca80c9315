"""Motion-module normalisation: the frames GroupNorm (against diffusers' own motion module), the metadata
field and its old spellings, and the node glue on a stand-in ADE motion model (no ComfyUI needed).

The real-host parity with diffusers on full-size weights is in test_host.py (tests/host/check_temporal_norm.py).
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
from safetensors import safe_open

from mcm.temporal_norm import (
    FRAMES,
    PER_FRAME,
    TEMPORAL_NORMS,
    canonical_temporal_norm,
    group_norm_over_frames,
)
from mcm.weights import (
    Adapter,
    AdapterError,
    AdapterMeta,
    LoraWeights,
    load_adapter,
    save_adapter,
)


def reference(x, frames, groups, weight=None, bias=None, eps=1e-5):
    """diffusers' form: (b·f, c, …) → (b, c, f, …) → GroupNorm → back."""
    b = x.shape[0] // frames
    video = x.reshape(b, frames, *x.shape[1:]).transpose(1, 2)
    return torch.nn.functional.group_norm(video, groups, weight, bias, eps).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize(
    "shape, frames, groups, dtype, tol",
    [
        ((16, 32, 4, 4), 8, 8, torch.float64, 1e-12),  # two videos
        ((24, 64, 3, 5), 8, 32, torch.float32, 2e-5),  # three videos, odd spatial size
        ((8, 16, 2, 2, 3), 4, 4, torch.float64, 1e-12),  # 3-d spatial
        ((8, 32, 4, 4), 8, 8, torch.bfloat16, 5e-2),
        ((8, 32, 4, 4), 8, 8, torch.float16, 5e-3),
    ],
)
def test_frames_norm_is_group_norm_over_each_video(shape, frames, groups, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    weight = torch.randn(shape[1], generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(shape[1], generator=g, dtype=torch.float64).to(dtype)
    got = group_norm_over_frames(x, frames, groups, weight, bias, eps=1e-6)
    want = reference(x.double(), frames, groups, weight.double(), bias.double(), eps=1e-6)
    assert got.dtype == dtype and got.shape == x.shape
    assert (got.double() - want).abs().max().item() <= tol
    assert torch.allclose(group_norm_over_frames(x.double(), frames, groups), reference(x.double(), frames, groups))


def test_videos_in_one_batch_never_mix():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(8, 16, 4, 4, generator=g), torch.randn(8, 16, 4, 4, generator=g) * 5 - 1
    together = group_norm_over_frames(torch.cat([cond, uncond]), 8, 4)
    assert torch.allclose(together[:8], group_norm_over_frames(cond, 8, 4), atol=1e-6)
    assert torch.allclose(together[8:], group_norm_over_frames(uncond, 8, 4), atol=1e-6)


def test_one_frame_is_the_per_frame_norm_and_more_frames_are_not():
    x = torch.randn(6, 8, 3, 3, generator=torch.Generator().manual_seed(2)) + torch.arange(6.0).view(6, 1, 1, 1)
    per_frame = torch.nn.functional.group_norm(x, 4)
    assert torch.allclose(group_norm_over_frames(x, 1, 4), per_frame, atol=1e-5)
    assert (group_norm_over_frames(x, 6, 4) - per_frame).abs().max() > 0.5


def test_the_input_is_left_alone_and_bad_shapes_are_refused():
    x = torch.randn(8, 8, 2, 2)
    before = x.clone()
    group_norm_over_frames(x, 4, 2)
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="not a whole number of 3-frame videos"):
        group_norm_over_frames(x, 3, 2)
    with pytest.raises(ValueError, match="8 channels do not split into 3 groups"):
        group_norm_over_frames(x, 4, 3)


def test_equals_the_norm_in_diffusers_motion_module():
    """The motion module's input GroupNorm as diffusers' UNetMotionModel runs it (what MCM trains with)."""
    from tests.tiny_models import tiny_motion_unet

    unet = tiny_motion_unet()
    module = unet.down_blocks[0].motion_modules[0]
    with torch.no_grad():
        module.norm.weight.normal_()
        module.norm.bias.normal_()
    seen = {}
    module.norm.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    frames = 6
    sample = torch.randn(2, 4, frames, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = torch.randn(2 * frames, 5, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        unet(sample, torch.tensor(500), encoder_hidden_states=cond)
    x5, y5 = seen["x"], seen["y"]  # (b, c, f, h, w)
    assert x5.shape[:3] == (2, 32, frames)
    as_batch = x5.transpose(1, 2).reshape(-1, *x5.shape[1:2], *x5.shape[3:])  # ComfyUI's (b·f, c, h, w)
    ours = group_norm_over_frames(
        as_batch, frames, module.norm.num_groups, module.norm.weight, module.norm.bias, module.norm.eps
    )
    assert torch.allclose(ours, y5.transpose(1, 2).reshape(as_batch.shape), atol=1e-5)


# --- metadata ----------------------------------------------------------------------------------------


def test_names_and_old_spellings():
    assert TEMPORAL_NORMS == (FRAMES, PER_FRAME) == ("frames", "per_frame")
    assert canonical_temporal_norm("video") == "frames" and canonical_temporal_norm("frame") == "per_frame"
    assert canonical_temporal_norm("frames") == "frames" and canonical_temporal_norm("per-frame") is None
    assert AdapterMeta().temporal_norm == "frames"  # what diffusers computes; the official adapters carry none
    assert AdapterMeta(temporal_norm="frame").temporal_norm == "per_frame"
    assert json_entry(AdapterMeta(temporal_norm="video").to_metadata()) == "frames"
    with pytest.raises(AdapterError, match=r"mcm.temporal_norm = 'both'; expected one of \['frames', 'per_frame'\]"):
        AdapterMeta(temporal_norm="both")


def json_entry(metadata: dict) -> str:
    import json

    return json.loads(metadata["mcm.temporal_norm"])


def _adapter(temporal_norm: str) -> Adapter:
    w = LoraWeights(torch.randn(4, 320), torch.randn(320, 4), 4.0)
    layers = {"down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q": w}
    return Adapter(AdapterMeta(lora_rank=4, lora_alpha=4.0, temporal_norm=temporal_norm), layers, source="t")


@pytest.mark.parametrize(("written", "read"), [("video", "frames"), ("frame", "per_frame"), ("per_frame", "per_frame")])
def test_files_with_old_spellings_read_as_the_new_names(tmp_path, written, read):
    path = save_adapter(_adapter("frames"), tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    metadata["mcm.temporal_norm"] = f'"{written}"'
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    assert load_adapter(tmp_path / "old.safetensors").meta.temporal_norm == read


def test_converters_keep_the_temporal_norm(tmp_path):
    from mcm.weights import export_ade_motion_lora, export_peft

    adapter = _adapter("per_frame")
    assert load_adapter(save_adapter(adapter, tmp_path / "a.safetensors")).meta.temporal_norm == "per_frame"
    assert load_adapter(export_peft(adapter, tmp_path / "peft")).meta.temporal_norm == "per_frame"
    motion = export_ade_motion_lora(adapter, tmp_path / "motion.safetensors")
    with safe_open(str(motion), "pt") as f:
        assert json_entry(dict(f.metadata())) == "per_frame"


def test_the_trainer_writes_frames():
    """The adapters the trainer exports record the form diffusers' UNetMotionModel trains with."""
    from training.config import parse_args
    from training.export import adapter_meta
    from training.models import tiny_teacher

    args = parse_args(
        ["--teacher", "tiny-animatediff", "--data", "toy-folder", "--resolution", "16", "--num-frames", "4"]
    )
    assert adapter_meta(tiny_teacher("animatediff"), args, step=1, seconds=0.0).temporal_norm == FRAMES


# --- node glue on a stand-in ADE motion model ----------------------------------------------------------


class _TemporalTransformer(torch.nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.norm = torch.nn.GroupNorm(4, channels, eps=1e-6)
        with torch.no_grad():
            self.norm.weight.normal_()
            self.norm.bias.normal_()
        self.video_length = 4


class _MotionModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.temporal_transformer = _TemporalTransformer()


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.motion_modules = torch.nn.ModuleList([_MotionModule(), _MotionModule()])


class _AnimateDiffModel(torch.nn.Module):
    def __init__(self, mm_format="AnimateDiff", version="v2"):
        super().__init__()
        self.down_blocks = torch.nn.ModuleList([_Block()])
        self.mid_block = _Block()
        self.mm_info = types.SimpleNamespace(mm_format=mm_format, mm_version=version, mm_name="mm_test.safetensors")


class _Patcher:
    """What set_temporal_norm uses of ComfyUI's ModelPatcher: object patches, applied by dotted path."""

    def __init__(self, model):
        self.model, self.object_patches = model, {}

    def clone(self):
        n = _Patcher(self.model)
        n.object_patches = self.object_patches.copy()
        return n

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def apply(self):  # what ModelPatcher.patch_model does with object patches
        for key, value in self.object_patches.items():
            owner_path, attr = key.rsplit(".", 1)
            setattr(self.model.get_submodule(owner_path), attr, value)


@pytest.fixture
def glue(package, monkeypatch):
    comfy = types.ModuleType("comfy")
    comfy.ops = types.ModuleType("comfy.ops")
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.ops", comfy.ops)
    module = importlib.import_module(f"{package.__name__}.nodes.glue.temporal_norm")
    module.Error = importlib.import_module(f"{package.__name__}.mcm.weights").AdapterError  # the package's own class
    return module


def test_frames_patches_a_clone_and_normalises_over_the_video(glue):
    original = _Patcher(_AnimateDiffModel())
    patcher = original.clone()
    assert glue.set_temporal_norm(patcher, "frames", "Load MCM LoRA") == 4
    assert sorted(patcher.object_patches) == [
        f"{b}.motion_modules.{i}.temporal_transformer.norm.forward"
        for b in ("down_blocks.0", "mid_block")
        for i in (0, 1)
    ]
    assert original.object_patches == {}
    patcher.apply()
    norm = patcher.model.mid_block.motion_modules[1].temporal_transformer.norm
    x = torch.randn(8, 8, 3, 3)  # two 4-frame videos (cond and uncond)
    assert torch.allclose(norm(x), reference(x, 4, 4, norm.weight, norm.bias, 1e-6), atol=1e-5)
    patcher.model.mid_block.motion_modules[1].temporal_transformer.video_length = 8  # context length / video length
    assert torch.allclose(norm(x), reference(x, 8, 4, norm.weight, norm.bias, 1e-6), atol=1e-5)
    with pytest.raises(RuntimeError, match="received 12 frames, which is not a whole number of 8-frame videos"):
        norm(torch.randn(12, 8, 3, 3))


def test_per_frame_removes_the_patch_and_frames_never_doubles_it(glue):
    patcher = _Patcher(_AnimateDiffModel())
    glue.set_temporal_norm(patcher, "frames", "Load MCM LoRA")
    again = patcher.clone()
    assert glue.set_temporal_norm(again, "frames", "Load MCM LoRA") == 4 and len(again.object_patches) == 4
    stock = patcher.clone()
    assert glue.set_temporal_norm(stock, "per_frame", "Load MCM LoRA") == 0
    assert stock.object_patches == {} and len(patcher.object_patches) == 4


def test_a_format_the_patch_does_not_know_is_refused_with_the_node_name(glue):
    for fmt in ("HotshotXL", "FancyVideo", "SomethingNew"):
        with pytest.raises(
            glue.Error,
            match=rf"^Load MCM LoRA: temporal_norm 'frames' knows .* AnimateDiff, AnimateLCM, PIA .* is {fmt}",
        ):
            glue.set_temporal_norm(_Patcher(_AnimateDiffModel(fmt)), "frames", "Load MCM LoRA")
        assert glue.set_temporal_norm(_Patcher(_AnimateDiffModel(fmt)), "per_frame", "Load MCM LoRA") == 0
    with pytest.raises(glue.Error, match="expected an AnimateDiff-Evolved motion model .* got Linear"):
        glue.set_temporal_norm(_Patcher(torch.nn.Linear(2, 2)), "frames", "Load MCM LoRA")
    broken = _AnimateDiffModel()
    broken.down_blocks[0].motion_modules[0].temporal_transformer.norm = torch.nn.LayerNorm(8)
    with pytest.raises(glue.Error, match="input GroupNorm 'norm' and ADE's 'video_length'; found LayerNorm"):
        glue.set_temporal_norm(_Patcher(broken), "frames", "Load MCM LoRA")
    with pytest.raises(glue.Error, match=r"temporal_norm = 'auto'; expected one of \['frames', 'per_frame'\]"):
        glue.set_temporal_norm(_Patcher(_AnimateDiffModel()), "auto", "Load MCM LoRA")


@pytest.mark.parametrize(
    ("fmt", "version", "apply_v2_properly", "expected"),
    [
        ("AnimateDiff", "v1", None, True),
        ("PIA", "v3", None, True),
        ("AnimateDiff", "v2", False, True),
        ("AnimateDiff", "v2", True, False),
        ("AnimateDiff", "v2", None, None),
        ("AnimateDiff", "v3", None, False),
    ],
)
def test_when_ades_groupnorm_hack_spans_every_norm(glue, fmt, version, apply_v2_properly, expected):
    params = None if apply_v2_properly is None else types.SimpleNamespace(apply_v2_properly=apply_v2_properly)
    assert glue.groupnorm_hack(_Patcher(_AnimateDiffModel(fmt, version)), params) is expected


def test_the_loader_offers_the_choice_with_a_tooltip(mcm_nodes):
    (spec,) = [i for i in mcm_nodes["MCM_LoraLoader"].define_schema().inputs if i.id == "temporal_norm"]
    assert spec.options["options"] == ["auto", "frames", "per_frame"] and spec.options["default"] == "auto"
    assert all(word in spec.tooltip for word in ("frames", "per_frame", "diffusers", "context window", "metadata"))
