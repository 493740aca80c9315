"""The adapter format, its readers and writers, and the key conversion to ComfyUI/ADE layouts.

References that are not this project's code: peft's own merge (``merge_and_unload``), diffusers'
LDM → diffusers checkpoint converter, and full-size diffusers models built on the meta device.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcm.weights import (
    OFFICIAL_TARGET_MODULES,
    SD15_LAYOUT,
    Adapter,
    AdapterError,
    AdapterMeta,
    LoraWeights,
    PickleRefusedError,
    UNetLayout,
    ade_motion_layers,
    ade_to_motion,
    comfy_spatial_layers,
    diffusers_to_ldm,
    export_ade_motion_lora,
    export_comfy_lora,
    export_peft,
    find_adapters,
    is_mcm_file,
    ldm_to_diffusers,
    load_adapter,
    merge_lora,
    merge_motion_module,
    motion_to_ade,
    save_adapter,
    unmerge_lora,
)
from tests.tiny_models import TINY_UNET, official_targets, tiny_motion_unet, with_random_lora
from training import models

ROOT = Path(__file__).resolve().parents[1]
TINY_LAYOUT = UNetLayout.from_diffusers_config(TINY_UNET)


def _peft_merged(peft_model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in peft_model.merge_and_unload().state_dict().items()}


@pytest.fixture
def peft_folder(tmp_path, peft_motion_unet):
    peft_model, base = peft_motion_unet
    folder = tmp_path / "animatediff-webvid"
    peft_model.save_pretrained(folder)
    return folder, peft_model, base


# --- key conversion on full-size key sets ------------------------------------------------------------


def test_full_sd15_unet_keys_agree_with_diffusers_own_ldm_converter():
    """Every SD1.5 UNet tensor, mapped to LDM names by us and back by diffusers, lands where it came from."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # the SD1.5 configuration
    layout = UNetLayout.from_diffusers_config(dict(unet.config))
    assert layout == SD15_LAYOUT
    keys = list(unet.state_dict())
    ldm = {}
    for i, key in enumerate(keys):
        module, leaf = key.rsplit(".", 1)
        mapped = diffusers_to_ldm(module, layout)
        assert ldm_to_diffusers(mapped, layout) == module
        ldm[f"model.diffusion_model.{mapped}.{leaf}"] = torch.tensor([float(i)])
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(keys)
    assert all(int(back[k].item()) == i for i, k in enumerate(keys))


def test_every_official_target_of_a_full_size_animatediff_unet_has_a_comfy_or_ade_name():
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with torch.device("meta"):
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(cross_attention_dim=768), MotionAdapter())
    targets = official_targets(unet)
    spatial = [t for t in targets if ".motion_modules." not in t]
    motion = [t for t in targets if ".motion_modules." in t]
    assert len(motion) == 21 * 12  # 21 motion modules (8 down, 12 up, 1 mid) x 12 linear layers
    ldm = {diffusers_to_ldm(t) for t in spatial}
    ade = {motion_to_ade(t) for t in motion}
    assert len(ldm) == len(spatial) and len(ade) == len(motion)  # 100 %, no collisions
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q" in ldm
    assert "output_blocks.2.1.conv" in ldm and "output_blocks.5.2.conv" in ldm  # the upsamplers
    assert "input_blocks.3.0.op" in ldm and "input_blocks.4.0.skip_connection" in ldm
    assert "middle_block.0.emb_layers.1" in ldm
    assert "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0" in ade
    assert "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff.net.0.proj" in ade
    assert all(ade_to_motion(motion_to_ade(t)) == t for t in motion)


def test_motion_module_state_dict_names_follow_the_animatediff_layout():
    from diffusers import MotionAdapter

    with torch.device("meta"):
        keys = [k for k in MotionAdapter().state_dict() if not k.endswith(".pe")]
    mapped = {motion_to_ade(k.rsplit(".", 1)[0]) + "." + k.rsplit(".", 1)[1] for k in keys}
    expected_inner = {
        "norm.weight",
        "proj_in.weight",
        "proj_out.bias",
        "transformer_blocks.0.attention_blocks.0.to_q.weight",
        "transformer_blocks.0.attention_blocks.1.to_out.0.bias",
        "transformer_blocks.0.norms.0.weight",
        "transformer_blocks.0.norms.1.bias",
        "transformer_blocks.0.ff_norm.weight",
        "transformer_blocks.0.ff.net.0.proj.weight",
        "transformer_blocks.0.ff.net.2.weight",
    }
    prefix = "down_blocks.0.motion_modules.0.temporal_transformer."
    assert {prefix + e for e in expected_inner} <= mapped
    assert len(mapped) == len(keys)


@pytest.mark.parametrize(
    "bad",
    [
        "down_blocks.3.downsamplers.0.conv",
        "down_blocks.3.attentions.0",
        "mid_block.resnets.2.conv1",
        "down_blocks.0.resnets.0.nonsense",
        "conv_in2",
        "up_blocks.0.attentions.0.proj_in",
    ],
)
def test_paths_without_a_counterpart_are_errors_naming_the_path(bad):
    with pytest.raises(KeyError) as info:
        diffusers_to_ldm(bad)
    assert repr(bad) in str(info.value)


# --- parity with peft's own merge --------------------------------------------------------------------


def test_peft_folder_merge_equals_peft_merge_and_unload(peft_folder):
    folder, peft_model, base = peft_folder
    adapter = load_adapter(folder)
    assert adapter.metadata_source == "defaults" and adapter.meta.base == "sd15-animatediff"
    assert len(adapter.layers) == len(official_targets(tiny_motion_unet()))
    ours = merge_lora(base, adapter.layers)
    reference = _peft_merged(peft_model)
    assert set(ours) == set(reference)
    err = max((ours[k] - reference[k]).abs().max().item() for k in reference)
    assert err <= 1e-6
    changed = sum(not torch.equal(ours[k], base[k]) for k in base)
    assert changed == len(adapter.layers)


def test_lone_peft_weights_file_loads_as_its_folder_when_alpha_equals_r(tmp_path):
    """The workflows' manifest fetches the official adapter as one file, ``adapter_model.safetensors`` saved as
    ``models/mcm/animatediff-webvid.safetensors``, without its adapter_config.json. The official config has
    lora_alpha = r (64, 64): for such a folder the lone file must merge as peft merges the folder, and carry the
    same sampling settings. With lora_alpha != r the config is needed (the lone file's scale is 1)."""
    for alpha, exact in ((4.0, True), (8.0, False)):
        base_model = tiny_motion_unet()
        base = {k: v.clone() for k, v in base_model.state_dict().items()}
        peft_model = with_random_lora(base_model, rank=4, alpha=alpha)
        folder = tmp_path / f"alpha{alpha:g}" / "animatediff-webvid"
        peft_model.save_pretrained(folder)
        lone = tmp_path / f"alpha{alpha:g}" / "mcm" / "animatediff-webvid.safetensors"
        lone.parent.mkdir()
        lone.write_bytes((folder / "adapter_model.safetensors").read_bytes())
        from_file, from_folder = load_adapter(lone), load_adapter(folder)
        reference = _peft_merged(peft_model)
        ours = merge_lora(base, from_file.layers)
        err = max((ours[k] - reference[k]).abs().max().item() for k in reference)
        assert (err <= 1e-6) is exact, (alpha, err)
        if exact:
            fields = ("base", "motion_module", "beta_schedule", "timestep_scaling", "temporal_norm", "style")
            assert {f: getattr(from_file.meta, f) for f in fields} == {f: getattr(from_folder.meta, f) for f in fields}
            assert from_file.meta.style == "webvid" and from_file.meta.temporal_norm == "frames"


def test_comfy_layout_merge_equals_peft_merge_through_diffusers_converter(peft_folder):
    """Spatial: base → LDM names (ours), merge in LDM names, back through diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    folder, peft_model, base = peft_folder
    adapter = load_adapter(folder)
    reference = _peft_merged(peft_model)
    spatial_base = {k: v for k, v in base.items() if ".motion_modules." not in k}
    ldm = {}
    for key, value in spatial_base.items():
        module, leaf = key.rsplit(".", 1)
        ldm[f"{diffusers_to_ldm(module, TINY_LAYOUT)}.{leaf}"] = value
    merged_ldm = merge_lora(ldm, comfy_spatial_layers(adapter, TINY_LAYOUT))
    config = dict(TINY_UNET, in_channels=4, out_channels=4)
    back = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in merged_ldm.items()}, config)
    assert set(back) == set(spatial_base)
    assert max((back[k] - reference[k]).abs().max().item() for k in back) <= 1e-6

    motion_base = {}
    for key, value in base.items():
        if ".motion_modules." in key and not key.endswith(".pe"):
            module, leaf = key.rsplit(".", 1)
            motion_base[f"{motion_to_ade(module)}.{leaf}"] = value
    merged_ade = merge_lora(motion_base, ade_motion_layers(adapter))
    for key, value in merged_ade.items():
        module, leaf = key.rsplit(".", 1)
        assert (value - reference[f"{ade_to_motion(module)}.{leaf}"]).abs().max().item() <= 1e-6


def test_merge_then_unmerge_restores_the_weights(peft_folder):
    folder, _, base = peft_folder
    adapter = load_adapter(folder)
    merged = merge_lora(base, adapter.layers, strength=0.7)
    restored = unmerge_lora(merged, adapter.layers, strength=0.7)
    assert max((restored[k] - base[k]).abs().max().item() for k in base) <= 1e-6


# --- round trips -------------------------------------------------------------------------------------


def _assert_same_layers(a: Adapter, b: Adapter):
    assert set(a.layers) == set(b.layers)
    for p in a.layers:
        assert torch.equal(a.layers[p].down, b.layers[p].down) and torch.equal(a.layers[p].up, b.layers[p].up), p
        assert a.layers[p].alpha == b.layers[p].alpha


def test_mcm_peft_mcm_round_trip_is_exact(tmp_path, peft_folder):
    folder, _, _ = peft_folder
    official = load_adapter(folder)
    meta = official.meta.replace(style="webvid", beta_schedule="scaled_linear", training={"steps": 10})
    mcm_file = save_adapter(Adapter(meta, official.layers), tmp_path / "a.safetensors")
    first = load_adapter(mcm_file)
    assert first.metadata_source == "file" and first.meta == meta
    peft_dir = export_peft(first, tmp_path / "peft")
    second = load_adapter(peft_dir)
    assert second.meta == meta and second.metadata_source == "file"
    _assert_same_layers(first, second)
    third = load_adapter(save_adapter(second, tmp_path / "b.safetensors"))
    _assert_same_layers(first, third)
    assert load_file(mcm_file).keys() == load_file(tmp_path / "b.safetensors").keys()


def test_per_layer_alpha_and_rank_survive_every_format(tmp_path, peft_folder):
    folder, _, _ = peft_folder
    adapter = load_adapter(folder)
    path = next(iter(adapter.layers))
    w = adapter.layers[path]
    adapter.layers[path] = LoraWeights(w.down[:2], w.up[:, :2], alpha=3.0)
    again = load_adapter(export_peft(load_adapter(save_adapter(adapter, tmp_path / "x.safetensors")), tmp_path / "p"))
    assert again.layers[path].rank == 2 and again.layers[path].alpha == 3.0
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {path: 2} and config["alpha_pattern"] == {path: 3.0}


def test_comfy_and_ade_exports_read_back_to_the_same_updates(tmp_path, peft_folder):
    folder, _, _ = peft_folder
    adapter = load_adapter(folder)
    spatial = load_adapter(
        export_comfy_lora(adapter, tmp_path / "spatial.safetensors", layout=TINY_LAYOUT), layout=TINY_LAYOUT
    )
    keys = load_file(tmp_path / "spatial.safetensors").keys()
    assert all(k.startswith("diffusion_model.") for k in keys)
    motion = load_adapter(export_ade_motion_lora(adapter, tmp_path / "motion.safetensors"))
    assert all(".temporal_transformer." in k for k in load_file(tmp_path / "motion.safetensors"))
    spatial_layers = spatial.layers
    assert set(spatial_layers) | set(motion.layers) == set(adapter.layers)
    for p, w in adapter.layers.items():
        other = motion.layers.get(p) or spatial_layers[p]
        assert torch.allclose(other.delta(), w.delta(), atol=1e-7, rtol=0), p


def test_exported_peft_folder_loads_with_peft_like_the_official_demo(tmp_path, peft_folder):
    from peft import PeftModel

    folder, peft_model, _ = peft_folder
    adapter = load_adapter(folder)
    out = export_peft(adapter, tmp_path / "exported")
    reloaded = PeftModel.from_pretrained(tiny_motion_unet(), out, adapter_name="pretrained_lora").merge_and_unload()
    reference = _peft_merged(peft_model)
    got = reloaded.state_dict()
    assert max((got[k] - reference[k]).abs().max().item() for k in reference) <= 1e-6


def test_motion_module_merge_in_both_layouts(tmp_path, peft_folder):
    folder, peft_model, base = peft_folder
    adapter = load_adapter(folder)
    reference = _peft_merged(peft_model)
    diffusers_mm = {k: v for k, v in base.items() if ".motion_modules." in k}
    save_file(diffusers_mm, tmp_path / "mm_diffusers.safetensors")
    ade_mm = {}
    for key, value in diffusers_mm.items():
        if not key.endswith(".pe"):
            module, leaf = key.rsplit(".", 1)
            ade_mm[f"{motion_to_ade(module)}.{leaf}"] = value
    save_file(ade_mm, tmp_path / "mm_ade.safetensors")
    out = load_file(merge_motion_module(adapter, tmp_path / "mm_diffusers.safetensors", tmp_path / "m1.safetensors"))
    assert max((out[k] - reference[k]).abs().max().item() for k in out) <= 1e-6
    out = load_file(merge_motion_module(adapter, tmp_path / "mm_ade.safetensors", tmp_path / "m2.safetensors"))
    assert set(out) == set(ade_mm)
    key = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight"
    assert torch.allclose(out[key], reference[ade_to_motion(key.rsplit(".", 1)[0]) + ".weight"], atol=1e-6)


def test_modelscope_adapter_is_recognised_and_kept_out_of_comfyui(tmp_path):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**models.TINY_UNET, **models.TINY_BLOCKS["modelscope"])
    peft_model = with_random_lora(unet, targets=official_targets(unet, drop_temporal_convs=True))
    peft_model.save_pretrained(tmp_path / "modelscopet2v-anime")
    adapter = load_adapter(tmp_path / "modelscopet2v-anime")
    assert adapter.meta.base == "modelscope-t2v" and adapter.meta.style == "anime"
    assert adapter.temporal_layers() and adapter.meta.motion_module is None
    with pytest.raises(AdapterError, match="ModelScope"):
        comfy_spatial_layers(adapter)
    with pytest.raises(AdapterError, match="cannot be applied to a Stable Diffusion 1.5"):
        adapter.require_base("sd15-animatediff")
    again = load_adapter(export_peft(adapter, tmp_path / "out"))
    _assert_same_layers(adapter, again)


# --- readers: folders, variants, third-party files ----------------------------------------------------


def test_parent_folder_with_style_subfolders(tmp_path, peft_motion_unet):
    peft_model, _ = peft_motion_unet
    for name in ("animatediff-webvid", "animatediff-laion"):
        peft_model.save_pretrained(tmp_path / "mcm" / name)
    found = find_adapters(tmp_path / "mcm")
    assert sorted(found) == ["animatediff-laion", "animatediff-webvid"]
    with pytest.raises(AdapterError, match="several adapters.*animatediff-laion"):
        load_adapter(tmp_path / "mcm")
    laion = load_adapter(tmp_path / "mcm", "animatediff-laion")
    assert laion.meta.style == "laion" and laion.meta.beta_schedule == "linear"  # the official demo's betas
    with pytest.raises(AdapterError, match="no adapter 'anime'"):
        load_adapter(tmp_path / "mcm", "anime")


def test_single_file_diffusers_and_peft_loras_are_read(tmp_path, peft_folder):
    folder, _, _ = peft_folder
    tensors = load_file(folder / "adapter_model.safetensors")
    diffusers_style = {"unet." + k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    save_file(diffusers_style, tmp_path / "mcm_laion.safetensors")
    adapter = load_adapter(tmp_path / "mcm_laion.safetensors")
    reference = load_adapter(folder)
    assert adapter.meta.style == "laion"
    # the PEFT config said alpha 8 (scale 2); a bare file has no alpha, so scale 1 is assumed
    assert all(w.alpha == w.rank for w in adapter.layers.values())
    assert set(adapter.layers) == set(reference.layers)


# --- bad input ---------------------------------------------------------------------------------------


@pytest.fixture
def mcm_file(tmp_path, peft_folder):
    return save_adapter(load_adapter(peft_folder[0]), tmp_path / "good.safetensors")


def test_truncated_and_corrupt_files_name_the_file(tmp_path, mcm_file):
    data = mcm_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match=r"cut\.safetensors.*truncated"):
        load_adapter(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterError, match=r"junk\.safetensors"):
        load_adapter(tmp_path / "junk.safetensors")


def test_foreign_base_families_are_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    sdxl = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.randn(
            4, 2048, generator=g
        ),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": torch.randn(
            640, 4, generator=g
        ),
    }
    save_file(sdxl, tmp_path / "sdxl.safetensors")
    with pytest.raises(AdapterError, match=r"sdxl\.safetensors.*Stable Diffusion XL"):
        load_adapter(tmp_path / "sdxl.safetensors")


def test_metadata_that_contradicts_the_tensors_is_refused(tmp_path, mcm_file):
    tensors = load_file(mcm_file)
    meta = AdapterMeta(base="modelscope-t2v", motion_module=None).to_metadata()
    save_file(tensors, tmp_path / "liar.safetensors", metadata=meta)
    with pytest.raises(AdapterError, match="metadata says base 'modelscope-t2v'"):
        load_adapter(tmp_path / "liar.safetensors")


def test_shape_mismatch_against_the_model_lists_the_layers(peft_folder):
    adapter = load_adapter(peft_folder[0])
    shapes = {p: w.weight_shape for p, w in adapter.layers.items()}
    path = sorted(shapes)[0]
    shapes[path] = (shapes[path][0] * 2, *shapes[path][1:])
    del shapes[sorted(shapes)[-1]]
    with pytest.raises(AdapterError, match=rf"1 layers not in the model.*1 layers with another shape.*{path}"):
        adapter.check_shapes(shapes)


def test_missing_config_and_pickles(tmp_path, peft_folder):
    folder, _, _ = peft_folder
    (folder / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        load_adapter(folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    torch.save(tensors, tmp_path / "lora.bin")
    with pytest.raises(PickleRefusedError, match=r"lora\.bin.*pickle.*--allow-pickle"):
        load_adapter(tmp_path / "lora.bin")
    assert len(load_adapter(tmp_path / "lora.bin", allow_pickle=True).layers) == len(tensors) // 2


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("format_version", "2", "newer comfyui-mcm"),
        ("beta_schedule", '"sqrt_linear"', "diffusers name.*ComfyUI names differ"),
        ("base", '"sdxl"', "mcm.base = 'sdxl'"),
        ("timestep_scaling", "-1", "timestep_scaling"),
        ("colour", '"red"', r"unknown metadata entries \['mcm.colour'\]"),
        ("lora_rank", "{", "not valid JSON"),
    ],
)
def test_bad_metadata_names_the_entry(tmp_path, mcm_file, entry, value, message):
    from safetensors import safe_open

    with safe_open(str(mcm_file), "pt") as f:
        metadata = dict(f.metadata())
    metadata[f"mcm.{entry}"] = value
    save_file(load_file(mcm_file), tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(AdapterError, match=rf"bad\.safetensors.*{message}"):
        load_adapter(tmp_path / "bad.safetensors")


def test_writes_are_atomic_and_never_replace_silently(tmp_path, mcm_file):
    adapter = load_adapter(mcm_file)
    with pytest.raises(FileExistsError, match="already exists"):
        save_adapter(adapter, mcm_file)
    before = mcm_file.read_bytes()

    bad = Adapter(adapter.meta, dict(adapter.layers))
    bad.layers["x"] = LoraWeights(torch.zeros(1, 1), torch.zeros(1, 1), 1.0)
    bad.layers["x"].down = object()  # fails inside the writer
    with pytest.raises(AttributeError):
        save_adapter(bad, mcm_file, overwrite=True)
    assert mcm_file.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert is_mcm_file(mcm_file)


def test_a_replaced_folder_is_never_missing_and_survives_a_failed_rename(tmp_path, monkeypatch):
    import os

    from mcm.weights import atomic

    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"), atomic.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "old"

    real_replace = os.replace

    def replace(src, dst):  # the new folder's rename into place fails; the old one's rename aside works
        if Path(dst) == final and Path(src).suffix == ".tmp":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"), atomic.atomic_dir(final, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "old"  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    monkeypatch.setattr(atomic.os, "replace", real_replace)

    def replaced_while_checking(src, dst):  # at the moment the new folder moves in, the old one is still whole
        if Path(dst) == final:
            old = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
            assert len(old) == 1 and (old[0] / "a.txt").read_text() == "old"
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replaced_while_checking)
    with atomic.atomic_dir(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_official_target_list_matches_the_notes():
    notes = (  # the official MCM LoRA targets, written out independently of mcm.weights
        "to_q to_k to_v to_out.0 proj_in proj_out ff.net.0.proj ff.net.2 "
        "conv1 conv2 conv_shortcut downsamplers.0.conv upsamplers.0.conv time_emb_proj"
    )
    assert set(OFFICIAL_TARGET_MODULES) == set(notes.split())


# --- command line ------------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mcm.weights", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_cli_inspect_reports_the_demos_defaults_per_base(tmp_path, peft_motion_unet):
    """An official release folder carries no metadata, so inspect reports the official demo's sampling settings,
    which differ per base: AnimateDiff overrides the scheduler to diffusers "linear"; ModelScope loads the ms-1.7b
    scheduler (scaled_linear, beta 0.00085 -> 0.012) and overrides only timestep_scaling=4. The reference is the
    demo's scheduler config as diffusers reads it (written out here, not taken from the code under test)."""
    from diffusers import LCMScheduler, UNet3DConditionModel

    ms_scheduler = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}  # ms-1.7b
    demo = {
        "modelscope-t2v": LCMScheduler(**ms_scheduler, timestep_scaling=4.0),
        "sd15-animatediff": LCMScheduler(**{**ms_scheduler, "beta_schedule": "linear"}, timestep_scaling=4.0),
    }
    peft_model, _ = peft_motion_unet
    peft_model.save_pretrained(tmp_path / "mcm" / "animatediff-webvid")
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**models.TINY_UNET, **models.TINY_BLOCKS["modelscope"])
    with_random_lora(unet, targets=official_targets(unet, drop_temporal_convs=True)).save_pretrained(
        tmp_path / "mcm" / "modelscopet2v-anime"
    )
    proc = _cli("inspect", "--json", tmp_path / "mcm")
    assert proc.returncode == 0, proc.stderr
    found = {d["base"]: d["meta"] for d in json.loads(proc.stdout)}
    assert sorted(found) == sorted(demo)
    for base, meta in found.items():
        scheduler = demo[base].config
        assert meta["beta_schedule"] == scheduler.beta_schedule, base
        assert meta["timestep_scaling"] == scheduler.timestep_scaling, base
        assert (meta["default_steps"], meta["recommended_cfg"]) == (4, 1.0), base
        assert meta["temporal_norm"] == "frames", base  # diffusers' temporal layers normalise over the frames


def test_cli_inspect_and_convert(tmp_path, peft_motion_unet):
    peft_model, _ = peft_motion_unet
    for name in ("animatediff-webvid", "animatediff-laion"):
        peft_model.save_pretrained(tmp_path / "mcm" / name)
    proc = _cli("inspect", tmp_path / "mcm")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("sd15-animatediff v2") == 2 and "official defaults used" in proc.stdout
    assert "79 spatial, 84 motion-module" in proc.stdout

    out = tmp_path / "webvid.safetensors"
    proc = _cli(
        "convert",
        tmp_path / "mcm",
        out,
        "--to",
        "mcm",
        "--variant",
        "animatediff-webvid",
        "--set",
        "beta_schedule=scaled_linear",
        "--set",
        "recommended_steps=[2,4]",
    )
    assert proc.returncode == 0, proc.stderr
    meta = load_adapter(out).meta
    assert meta.beta_schedule == "scaled_linear" and meta.recommended_steps == (2, 4) and meta.style == "webvid"
    proc = _cli("convert", tmp_path / "mcm" / "animatediff-webvid", out, "--to", "mcm")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = _cli("convert", out, tmp_path / "c.safetensors", "--to", "comfy-lora")
    assert proc.returncode == 0 and "84 motion-module layers are not in a ComfyUI LoRA" in proc.stderr
    assert all(k.startswith("diffusion_model.") for k in load_file(tmp_path / "c.safetensors"))
    proc = _cli("convert", out, tmp_path / "m.safetensors", "--to", "ade")
    assert proc.returncode == 0 and "spatial layers are not in this file" in proc.stderr
    proc = _cli("inspect", tmp_path / "m.safetensors", "--json")
    assert proc.returncode == 0
    info = json.loads(proc.stdout)
    assert info["layers"] == {"spatial": 0, "motion": 84, "temporal": 0}
    proc = _cli("inspect", tmp_path / "nothing")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_peft_patterns_match_the_module_names_peft_matched(tmp_path):
    """PEFT applies ``rank_pattern``/``alpha_pattern`` to the wrapped model's own module names; a UNet held
    as ``.unet`` is named ``unet.down_blocks...`` there, which the loader maps to ``down_blocks...``.
    The per-layer scale must still be the one peft used (its own delta weight is the reference)."""
    from peft import LoraConfig, get_peft_model

    class Holder(torch.nn.Module):  # as a pipeline-like wrapper holds its UNet
        def __init__(self):
            super().__init__()
            self.unet = tiny_motion_unet()

    one = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # a full name: matches one layer only
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["to_q", "to_v"],
        lora_dropout=0.0,
        rank_pattern={one: 2},
        alpha_pattern={one: 6, r"up_blocks\.1\..*to_v": 3},
    )
    model = get_peft_model(Holder(), config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(tmp_path / "holder")
    adapter = load_adapter(tmp_path / "holder")
    peft_layers = {
        n.removeprefix("base_model.model.unet."): m for n, m in model.named_modules() if hasattr(m, "get_delta_weight")
    }
    assert set(adapter.layers) == set(peft_layers) and len(peft_layers) > 4
    ranks = {}
    for path, module in peft_layers.items():
        w = adapter.layers[path]
        ours = (w.alpha / w.rank) * (w.up.float() @ w.down.float())
        torch.testing.assert_close(ours, module.get_delta_weight("default"), rtol=1e-5, atol=1e-7)
        ranks[path] = (w.rank, module.scaling["default"])
    assert ranks[one.removeprefix("unet.")] == (2, 3.0)  # rank 2, alpha 6
    assert all(r == 4 for p, (r, _) in ranks.items() if p != one.removeprefix("unet."))
    assert {s for p, (_, s) in ranks.items() if p.startswith("up_blocks.1.") and p.endswith("to_v")} == {0.75}


def test_a_modelscope_adapter_converts_to_a_comfyui_lora_for_the_modelscope_model(tmp_path):
    """--to comfy-lora on a ModelScope adapter writes every layer (spatial and temporal) under the module names of
    the ComfyUI ModelScope model, which keeps diffusers' names: ``diffusion_model.<diffusers path>``, the keys
    ComfyUI's LoraLoader maps for any model (``diffusion_model.<module>.weight``). The file reads back to the same
    layers; converting it to an ADE motion LoRA says there is no motion module."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**models.TINY_UNET, **models.TINY_BLOCKS["modelscope"])
    peft = with_random_lora(unet, targets=official_targets(unet, drop_temporal_convs=True))
    peft.save_pretrained(tmp_path / "modelscopet2v-anime")
    adapter = load_adapter(tmp_path / "modelscopet2v-anime")
    out = tmp_path / "ms.safetensors"
    proc = _cli("convert", tmp_path / "modelscopet2v-anime", out, "--to", "comfy-lora")
    assert proc.returncode == 0, proc.stderr
    tensors = load_file(out)
    modules = dict(unet.named_modules())
    for path, w in adapter.layers.items():
        assert path in modules  # the adapter's path is the module's name in the model
        assert torch.equal(tensors[f"diffusion_model.{path}.lora_down.weight"], w.down)
        assert torch.equal(tensors[f"diffusion_model.{path}.lora_up.weight"], w.up)
        assert float(tensors[f"diffusion_model.{path}.alpha"]) == w.alpha
    assert len(tensors) == 3 * len(adapter.layers) and adapter.temporal_layers()
    back = load_adapter(out)
    assert back.meta.base == "modelscope-t2v" and set(back.layers) == set(adapter.layers)
    assert all(torch.equal(back.layers[p].up, w.up) for p, w in adapter.layers.items())
    proc = _cli("convert", tmp_path / "modelscopet2v-anime", tmp_path / "m.safetensors", "--to", "ade")
    assert proc.returncode == 2 and "has no motion-module layers" in proc.stderr


def test_to_safetensors_takes_the_vae_out_of_an_ldm_checkpoint(tmp_path):
    """ModelScope's original VQGAN_autoencoder.pth is a whole LDM checkpoint ({'state_dict': ...}) whose VAE keys carry
    'first_stage_model.'; --prefix keeps those tensors, without the prefix (ComfyUI's Load VAE reads LDM VAE names)."""
    vae = {"encoder.conv_in.weight": torch.randn(128, 3, 3, 3), "decoder.conv_out.bias": torch.randn(3)}
    state = {f"first_stage_model.{k}": v for k, v in vae.items()}
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(4, 4)
    ckpt = tmp_path / "VQGAN_autoencoder.pth"
    torch.save({"state_dict": state, "global_step": 7}, ckpt)
    out = tmp_path / "vae.safetensors"
    proc = _cli("to-safetensors", ckpt, out, "--prefix", "first_stage_model.")
    assert proc.returncode == 0, proc.stderr
    got = load_file(out)
    assert sorted(got) == sorted(vae) and all(torch.equal(got[k], v) for k, v in vae.items())
    proc = _cli("to-safetensors", ckpt, tmp_path / "none.safetensors", "--prefix", "cond_stage_model.")
    assert proc.returncode == 2 and "no tensor name starts with --prefix 'cond_stage_model.'" in proc.stderr
    assert not (tmp_path / "none.safetensors").exists()
