"""Shared fixtures: small deterministic models for the numerics tests (CPU, float64)."""

from __future__ import annotations

import pytest
import torch

from mcm.boundary import append_dims


class ToyEpsModel:
    """A fixed, nonlinear ε-model ``model(x_t, t, cond)``: channel mixing, tanh, a timestep term.

    It treats every batch entry and every position alike, so a video latent ``(b, c, f, h, w)`` and
    its frames-as-batch form ``(b·f, c, h, w)`` give the same per-frame outputs.
    """

    def __init__(self, channels: int = 4, seed: int = 0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, generator=g, dtype=dtype) / channels**0.5
        self.bias = torch.randn(channels, generator=g, dtype=dtype) * 0.1
        self.calls = 0

    def __call__(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        h = torch.einsum("cd,bd...->bc...", self.weight.to(x), x)
        h = h + append_dims(self.bias.to(x), h.ndim - 1)
        return torch.tanh(h + append_dims(torch.sin(t / 150.0), x.ndim))


@pytest.fixture
def toy_eps_model():
    return ToyEpsModel()


@pytest.fixture
def seeded_noise():
    """``make(seed)`` -> a noise sampler drawing float64 normals from its own CPU generator."""

    def make(seed: int):
        g = torch.Generator().manual_seed(seed)
        return lambda like: torch.randn(like.shape, generator=g, dtype=like.dtype)

    return make


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """The trainer tests' tiny toy video set (8 clips of 8 frames at 16 px in 2 shards); the tests only read it."""
    from training.toy.world import write_toy_shards

    return write_toy_shards(tmp_path_factory.mktemp("toy"), num_clips=8, per_shard=4, frames=8, size=16)


@pytest.fixture(scope="session")
def comfy_io():
    """The stand-in for ComfyUI's V3 ``io`` module (tests/comfy_api_stub.py), installed for the session."""
    from tests.comfy_api_stub import install

    return install()


@pytest.fixture(scope="session")
def package():
    """The repository loaded as ComfyUI loads a custom-node folder: its ``__init__.py`` as a package."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    name = "comfyui_mcm_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, root / "__init__.py", submodule_search_locations=[str(root)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def peft_motion_unet():
    """(peft-wrapped tiny UNetMotionModel, base state dict before LoRA)."""
    from tests.tiny_models import tiny_motion_unet, with_random_lora

    model = tiny_motion_unet()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    return with_random_lora(model), base


@pytest.fixture(scope="session")
def mcm_nodes(package, comfy_io):
    """``{node id: V3 node class}``, as the package's ``comfy_entrypoint`` lists them (against the stand-in)."""
    import asyncio

    extension = asyncio.run(package.comfy_entrypoint())
    return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}
