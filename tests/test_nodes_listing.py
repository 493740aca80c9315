"""MCM Style Adapter's list survives any file in models/mcm and models/loras: a file that cannot be
listed is skipped with one warning naming it, and picking it anyway is a clear error."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcm.weights import Adapter, AdapterMeta, LoraWeights, save_adapter

PATH = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"


def _adapter() -> Adapter:
    g = torch.Generator().manual_seed(0)
    layers = {PATH: LoraWeights(torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 2.0)}
    return Adapter(AdapterMeta(lora_rank=2, lora_alpha=2.0, style="test"), layers)


@pytest.fixture
def models(tmp_path, monkeypatch, package, comfy_io):
    """A models/ tree behind a stub ``folder_paths`` (what ComfyUI's lists of model files give)."""
    root = tmp_path / "models"
    for name in ("mcm", "loras"):
        (root / name).mkdir(parents=True)
    stub = types.ModuleType("folder_paths")
    stub.get_filename_list = lambda folder: sorted(
        p.relative_to(root / folder).as_posix() for p in (root / folder).rglob("*") if p.is_file()
    )
    stub.get_full_path = lambda folder, rel: str(root / folder / rel) if (root / folder / rel).exists() else None
    monkeypatch.setitem(sys.modules, "folder_paths", stub)
    nodes = importlib.import_module(f"{package.__name__}.nodes.adapters")
    return root, nodes


def _choices(nodes) -> list[str]:
    """The adapter dropdown as the node declares it now (ComfyUI asks for the schema on every listing)."""
    (adapter,) = [i for i in nodes.MCMStyleAdapter.define_schema().inputs if i.id == "adapter"]
    return adapter.options["options"]


def _bad_files(root: Path) -> dict[str, str]:
    """label → what the warning and the error must say."""
    good = save_adapter(_adapter(), root / "loras" / "mcm_good.safetensors")
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        metadata = dict(f.metadata())
    save_file(
        load_file(good), root / "loras" / "not_json.safetensors", metadata={**metadata, "mcm.format": "mcm-adapter"}
    )
    save_file(
        load_file(good), root / "loras" / "other_format.safetensors", metadata={**metadata, "mcm.format": '"lycoris"'}
    )
    (root / "loras" / "truncated.safetensors").write_bytes(good.read_bytes()[:50])
    save_file({"x": torch.zeros(1)}, root / "loras" / "plain_lora.safetensors")  # not MCM: left out silently
    return {
        "loras/not_json.safetensors": "mcm.format = 'mcm-adapter' is not valid JSON",
        "loras/other_format.safetensors": "mcm.format = '\"lycoris\"'",
        "loras/truncated.safetensors": "cannot be read as a safetensors file",
    }


def test_one_bad_file_never_breaks_the_list_and_is_warned_about_once(models, caplog):
    root, nodes = models
    bad = _bad_files(root)
    save_adapter(_adapter(), root / "mcm" / "mine.safetensors")
    with caplog.at_level(logging.WARNING, logger="comfyui-mcm"):
        for _ in range(3):
            names = _choices(nodes)
            assert names == ["loras/mcm_good.safetensors", "mine.safetensors"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(bad)  # once per file, not on every listing
    for label, reason in bad.items():
        assert sum(label in w and reason in w for w in warnings) == 1, (label, warnings)
    error = importlib.import_module(nodes.__name__.rsplit(".", 2)[0] + ".mcm.weights").AdapterError
    for label, reason in bad.items():
        with pytest.raises(error, match=f"{label!r} cannot be used: .*{reason[:20]}"):
            nodes.MCMStyleAdapter.execute(label, "auto (from the adapter)")
    steps = nodes.MCMStyleAdapter.execute("loras/mcm_good.safetensors", "auto (from the adapter)").args[1]
    assert steps == 4


def test_a_bad_peft_config_picked_in_the_node_names_the_file_and_field(models):
    root, nodes = models
    folder = root / "mcm" / "animatediff-webvid"
    folder.mkdir()
    save_file(
        {
            f"base_model.model.{PATH}.lora_A.weight": torch.randn(2, 8),
            f"base_model.model.{PATH}.lora_B.weight": torch.randn(8, 2),
        },
        folder / "adapter_model.safetensors",
    )
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": "sixteen"}))
    assert _choices(nodes) == ["animatediff-webvid"]
    error = importlib.import_module(nodes.__name__.rsplit(".", 2)[0] + ".mcm.weights").AdapterError
    with pytest.raises(error, match=r"adapter_config\.json: lora_alpha = 'sixteen'; expected a finite positive"):
        nodes.MCMStyleAdapter.execute("animatediff-webvid", "auto (from the adapter)")


def test_the_official_weights_file_alone_is_listed_and_selected_like_its_folder(models):
    """What the workflows' manifest fetches: the official folder's adapter_model.safetensors (PEFT keys, metadata
    {"format": "pt"}) saved alone as models/mcm/animatediff-webvid.safetensors, next to the folder form."""
    root, nodes = models
    tensors = {
        f"base_model.model.{PATH}.lora_A.weight": torch.randn(2, 8),
        f"base_model.model.{PATH}.lora_B.weight": torch.randn(8, 2),
    }
    folder = root / "mcm" / "animatediff-webvid"
    folder.mkdir()
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    save_file(tensors, root / "mcm" / "animatediff-webvid.safetensors", metadata={"format": "pt"})
    assert _choices(nodes) == ["animatediff-webvid", "animatediff-webvid.safetensors"]
    from_folder = nodes.MCMStyleAdapter.execute("animatediff-webvid", "auto (from the adapter)").args
    from_file = nodes.MCMStyleAdapter.execute("animatediff-webvid.safetensors", "auto (from the adapter)").args
    assert from_file[1:3] == from_folder[1:3] == (4, 1.0)  # steps, cfg
    assert "webvid" in from_file[3] and from_file[3].replace(".safetensors", "") == from_folder[3]
