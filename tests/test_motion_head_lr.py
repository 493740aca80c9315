"""``--motion-head-lr-mult``: the learnable motion head's learning rate as a multiple of the LoRA's, checked against
Adam's first step written out: with zero moments, bias correction gives m̂ = g and v̂ = g², so a weight moves by
lr · g / (|g| + eps), i.e. by lr for any gradient far above eps. The head's output conv and the LoRA's up
projections both start at zero, so after one step their largest entry is the learning rate each was given."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mcm.weights import load_adapter
from tests.test_faults import flags, one_thread  # noqa: F401 - a fixture shared with the fault tests
from training import distill


def one_step(tmp_path, data, mult: float):
    run = distill.train(
        distill.parse_args(
            flags(
                tmp_path,
                data,
                "--no-toy-eval",
                "--no-disc",
                "--motion-repr",
                "learn",
                "--lr-scheduler",
                "constant",
                "--max-train-steps",
                1,
                "--checkpointing-steps",
                1,
                "--motion-head-lr-mult",
                mult,
                "--run-name",
                f"mult-{mult}",
            )
        )
    )
    heads = load_file(str(run / "checkpoint-1" / "trainable_extra.safetensors"))
    return heads, run


@pytest.mark.parametrize("mult", [1.0, 10.0])
def test_the_motion_head_moves_by_its_own_learning_rate_and_the_lora_by_the_base_one(tmp_path, toy_data, mult):
    heads, run = one_step(tmp_path, toy_data, mult)
    out = [v for k, v in heads.items() if k.startswith("online.") and k.endswith("out.weight")]
    assert len(out) == 1, sorted(heads)
    assert out[0].abs().max().item() == pytest.approx(1e-3 * mult, rel=1e-3)
    # the EMA target head follows the online head: decay 0.95 from zero leaves 5% of the step
    target = [v for k, v in heads.items() if k.startswith("target.") and k.endswith("out.weight")]
    assert torch.allclose(target[0], 0.05 * out[0], rtol=1e-4, atol=1e-9)
    up = torch.cat([w.up.flatten() for w in load_adapter(run / "adapter.safetensors").layers.values()])
    assert up.abs().max().item() == pytest.approx(1e-3, rel=1e-3)


def test_the_multiplier_must_be_positive(tmp_path, toy_data, capsys):
    with pytest.raises(SystemExit):
        distill.parse_args(flags(tmp_path, toy_data, "--motion-head-lr-mult", 0))
    assert "--motion-head-lr-mult" in capsys.readouterr().err
