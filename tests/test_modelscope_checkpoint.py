"""mcm.modelscope.checkpoint: the files users have, read into diffusers' UNet3D names, or refused in one line.

The original-layout files are written here by an independent mapping in the other direction (diffusers →
ModelScope's ``UNetSD``), module by module from the architecture, not key by key with the module's tables.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet3DConditionModel
from safetensors.torch import save_file

from mcm.modelscope import (
    MS_1_7B,
    ModelScopeCheckpointError,
    ModelScopeUNet3D,
    ModelScopeUNetConfig,
    detect_layout,
    load_unet_state_dict,
    original_to_diffusers,
    to_unet_state_dict,
)
from mcm.weights.keys import UNetLayout, diffusers_to_ldm
from tests.modelscope_layout import original_state_dict

#: ModelScope's norm settings (32 groups: the shapes cannot tell, so files without config.json get these).
DEEP = {"block_out_channels": (32, 64, 64), "layers_per_block": 2, "attention_head_dim": 16, "norm_num_groups": 32}
TINY = {"block_out_channels": (32, 64), "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 32}
#: 8 groups: only a config.json says so.
GROUPS8 = {**DEEP, "norm_num_groups": 8}
CROSS = 16


def diffusers_unet(shape: dict, seed: int = 0) -> UNet3DConditionModel:
    levels = len(shape["block_out_channels"])
    torch.manual_seed(seed)
    model = UNet3DConditionModel(
        **shape,
        cross_attention_dim=CROSS,
        down_block_types=("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1),
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def deep() -> UNet3DConditionModel:
    return diffusers_unet(DEEP)


@pytest.fixture(scope="module")
def tiny() -> UNet3DConditionModel:
    return diffusers_unet(TINY, seed=1)


def to_original(model: UNet3DConditionModel, upsampler_slot: int = 3, prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's weights in ModelScope's original names (temporal projections as Conv1d weights)."""
    cfg = model.config
    return original_state_dict(
        model.state_dict(), len(cfg.block_out_channels), cfg.layers_per_block, upsampler_slot, prefix
    )


def assert_same_tensors(got: dict, model: UNet3DConditionModel) -> None:
    expected = model.state_dict()
    assert set(got) == set(expected)
    different = [k for k in expected if got[k].dtype != expected[k].dtype or not torch.equal(got[k], expected[k])]
    assert not different, different[:5]


def config_of(model) -> ModelScopeUNetConfig:
    return ModelScopeUNetConfig.from_diffusers_config(dict(model.config))


def refused(path, match: str, **kwargs) -> str:
    with pytest.raises(ModelScopeCheckpointError, match=match) as info:
        load_unet_state_dict(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


# --- the original layout --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slot", "suffix"),
    [("deep", 3, ".safetensors"), ("deep", 2, ".safetensors"), ("deep", 3, ".pth"), ("tiny", 3, ".safetensors")],
)
def test_original_layout_file_reads_as_exactly_the_diffusers_tensors(request, tmp_path, name, slot, suffix):
    model = request.getfixturevalue(name)
    original = to_original(model, upsampler_slot=slot)
    assert detect_layout(original) == "original"
    path = tmp_path / f"text2video_pytorch_model{suffix}"
    if suffix == ".pth":
        torch.save(original, path)
    else:
        save_file(original, path)
    state_dict, config = load_unet_state_dict(path, allow_pickle=suffix == ".pth")
    assert_same_tensors(state_dict, model)
    assert config == config_of(model)


def test_the_full_size_original_names_convert_on_meta():
    """text-to-video-ms-1.7b's own numbering (12 input blocks, downsamplers at input_blocks.{3,6,9}.op, upsamplers
    at output_blocks.2.1 and .{5,8}.3), without allocating: keys and shapes only."""
    with torch.device("meta"):
        model = UNet3DConditionModel()
    original = to_original(model)
    assert {k.split(".")[1] for k in original if k.startswith("input_blocks.")} == {str(i) for i in range(12)}
    for key in ("input_blocks.9.op.weight", "output_blocks.2.1.conv.weight", "output_blocks.8.3.conv.bias"):
        assert key in original
    assert original["input_blocks.1.2.proj_in.weight"].shape == (320, 320, 1)
    assert (
        "input_blocks.10.0.temopral_conv.conv4.3.weight" in original and "input_blocks.10.1.norm.weight" not in original
    )
    state_dict, config = to_unet_state_dict(original, source="text2video_pytorch_model.pth")
    assert config == MS_1_7B
    assert {k: v.shape for k, v in state_dict.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_full_checkpoint_with_prefix_and_state_dict_wrapper(tmp_path, deep):
    original = to_original(deep, prefix="model.diffusion_model.")
    original["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)  # other models' parts are left out
    path = tmp_path / "zeroscope.ckpt"
    torch.save({"state_dict": original}, path)
    state_dict, _ = load_unet_state_dict(path, allow_pickle=True)
    assert_same_tensors(state_dict, deep)
    assert_same_tensors(original_to_diffusers({"state_dict": original}), deep)


def test_converted_original_runs_exactly_like_diffusers(tmp_path, deep):
    path = tmp_path / "ms.safetensors"
    save_file(to_original(deep), path)
    state_dict, config = load_unet_state_dict(path)
    ours = ModelScopeUNet3D(config).eval()
    ours.load_state_dict(state_dict, strict=True)
    g = torch.Generator().manual_seed(0)
    frames = 3
    x = torch.randn(1, 4, frames, 8, 8, generator=g)
    context = torch.randn(1, 5, CROSS, generator=g)
    with torch.no_grad():
        expected = deep(x, torch.tensor([500]), context).sample
        got = ours(x.permute(0, 2, 1, 3, 4).reshape(frames, 4, 8, 8), torch.tensor([500]), context, frames)
    expected = expected.permute(0, 2, 1, 3, 4).reshape(frames, 4, 8, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


# --- diffusers folders and files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def groups8() -> UNet3DConditionModel:
    return diffusers_unet(GROUPS8, seed=2)


def test_diffusers_folder_root_or_unet_folder(tmp_path, groups8):
    groups8.save_pretrained(tmp_path / "repo" / "unet")
    for path in (tmp_path / "repo", tmp_path / "repo" / "unet"):
        state_dict, config = load_unet_state_dict(path)
        assert_same_tensors(state_dict, groups8)
        assert config == config_of(groups8) and config.norm_num_groups == 8  # from config.json
    state_dict, config = load_unet_state_dict(tmp_path / "repo" / "unet" / "diffusion_pytorch_model.safetensors")
    assert config.norm_num_groups == 8  # the config.json beside diffusers' weights file


def test_fp16_variant_only_when_fp32_is_missing(tmp_path, groups8):
    half = diffusers_unet(GROUPS8, seed=2).half()
    half.save_pretrained(tmp_path / "fp16" / "unet", variant="fp16")
    state_dict, _ = load_unet_state_dict(tmp_path / "fp16")
    assert_same_tensors(state_dict, half)
    groups8.save_pretrained(tmp_path / "both" / "unet")
    half.save_pretrained(tmp_path / "both" / "unet", variant="fp16")
    state_dict, _ = load_unet_state_dict(tmp_path / "both")
    assert_same_tensors(state_dict, groups8)


def test_diffusers_names_in_a_single_file_infer_the_config(tmp_path, deep):
    path = tmp_path / "unet.safetensors"
    save_file(deep.state_dict(), path)
    assert detect_layout(deep.state_dict()) == "diffusers"
    state_dict, config = load_unet_state_dict(path)
    assert_same_tensors(state_dict, deep)
    assert config == config_of(deep)


# --- refusals ------------------------------------------------------------------------------------------


def test_a_pickle_is_refused_without_allow_pickle(tmp_path, tiny):
    path = tmp_path / "text2video_pytorch_model.pth"
    torch.save(to_original(tiny), path)
    message = refused(path, "pickle-based file")
    assert "allow_pickle=True" in message and "mcm.weights to-safetensors" in message


def test_temporal_keys_removed_is_refused(tmp_path, tiny):
    temporal = re.compile(r"transformer_in\.|\.temp_convs\.|\.temp_attentions\.")
    path = tmp_path / "flat.safetensors"
    save_file({k: v for k, v in tiny.state_dict().items() if not temporal.search(k)}, path)
    refused(path, r"has no ModelScope temporal layers \(temp_convs / temp_attentions / transformer_in\)")


def test_a_stable_diffusion_checkpoint_is_named_as_such(tmp_path):
    torch.manual_seed(0)
    config = {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    }
    sd = UNet2DConditionModel(**config)
    layout = UNetLayout.from_diffusers_config(config)
    ldm = {f"model.diffusion_model.{diffusers_to_ldm(k, layout)}": v for k, v in sd.state_dict().items()}
    ldm["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)
    path = tmp_path / "v1-5-pruned-emaonly.safetensors"
    save_file(ldm, path)
    refused(path, "no ModelScope temporal layers .*: it looks like a Stable Diffusion 1.5 checkpoint; a ModelScope")
    path = tmp_path / "unet2d.safetensors"
    save_file(sd.state_dict(), path)
    refused(path, r"it looks like a diffusers 2-D UNet \(UNet2DConditionModel, Stable Diffusion 1.5\)")


def test_a_motion_module_is_named_as_such(tmp_path):
    block = "down_blocks.0.motion_modules.0.temporal_transformer"
    path = tmp_path / "mm_sd_v15_v2.safetensors"
    save_file({f"{block}.proj_in.weight": torch.zeros(8, 8), f"{block}.norm.weight": torch.ones(8)}, path)
    refused(path, "no ModelScope temporal layers .*it looks like an AnimateDiff motion module")


def test_unrelated_tensors_are_refused(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(2, 2)}, path)
    refused(path, "has neither diffusers UNet3D keys .* nor original ModelScope keys")


def test_a_truncated_safetensors_file_is_refused(tmp_path, tiny):
    path = tmp_path / "cut.safetensors"
    save_file(tiny.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(path, "cannot be read as a safetensors file")


def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path, tiny):
    state_dict = dict(tiny.state_dict())
    key = "down_blocks.0.temp_convs.0.conv2.3.weight"
    state_dict[key] = torch.zeros(32, 32, 1, 1, 1)
    path = tmp_path / "reshaped.safetensors"
    save_file(state_dict, path)
    message = refused(path, r"1 tensors of the wrong shape \(down_blocks\.0\.temp_convs\.0\.conv2\.3\.weight is")
    assert "is 32x32x1x1x1 (expected 32x32x3x1x1)" in message


def test_missing_keys_are_counted_and_a_few_named(tmp_path, tiny):
    original = to_original(tiny)
    gone = [k for k in original if k.startswith("input_blocks.1.2.")]  # one temporal attention
    path = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in original.items() if k not in gone}, path)
    message = refused(path, rf"{len(gone)} keys missing \(down_blocks\.0\.temp_attentions\.0\.")
    assert message.count("down_blocks.0.temp_attentions.0.") == 3 and f"({len(gone) - 3} more)" in message


def test_missing_paths_folders_and_bad_configs_are_refused(tmp_path, tiny):
    refused(tmp_path / "nothing.safetensors", "no such file or folder")
    (tmp_path / "empty" / "unet").mkdir(parents=True)
    refused(tmp_path / "empty", r"holds none of diffusion_pytorch_model\.safetensors")
    tiny.save_pretrained(tmp_path / "repo" / "unet")
    config = tmp_path / "repo" / "unet" / "config.json"
    config.write_text('{"_class_name": "UNet2DConditionModel"}')
    refused(tmp_path / "repo", "describes a UNet2DConditionModel, not a UNet3DConditionModel")
    config.write_text('{"act_fn": "gelu"}')
    refused(tmp_path / "repo", r"unet config act_fn='gelu' is not implemented")
    config.write_text("{")
    refused(tmp_path / "repo", "cannot be read as JSON")


def test_a_config_that_disagrees_with_the_tensors_is_refused(tmp_path, tiny, deep):
    deep.save_pretrained(tmp_path / "repo" / "unet")
    save_file(tiny.state_dict(), tmp_path / "repo" / "unet" / "diffusion_pytorch_model.safetensors")
    message = refused(tmp_path / "repo", "does not match the ModelScope UNet3D .*config.json gives")
    assert "612 keys missing" in message and "transformer_in.proj_in.weight is 64x32 (expected 128x32)" in message
