"""Motion representations and the consistency-distillation step, against definitions written out here."""

from __future__ import annotations

import pytest
import torch

from mcm.distill import (
    DistillConfig,
    consistency_distance,
    distillation_step,
    generated_x0,
    noisy_latents,
    use_generated_trajectories,
)
from mcm.motion import (
    MOTION_REPRESENTATIONS,
    MotionHead,
    ema_update,
    frequency_split,
    global_correlation,
    latent_difference,
    local_correlation,
    make_motion_representation,
)
from mcm.schedule import NoiseSchedule


def video(seed=0, shape=(2, 4, 5, 6, 6), dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", ["learn", "hlearn"])
def test_motion_head_is_the_identity_at_initialisation(name):
    head = MotionHead.preset(name)
    x = video(dtype=torch.float32)
    assert torch.equal(head(x), x)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == (2 if name == "learn" else 5)
    assert {c.kernel_size for c in convs[:-1]} == ({(1, 1)} if name == "learn" else {(3, 3)})
    assert convs[0].in_channels == 4 and convs[0].out_channels == 64 and convs[-1].out_channels == 4


def test_motion_head_works_per_frame():
    head = MotionHead.preset("learn")
    torch.nn.init.normal_(head.out.weight)
    x = video(dtype=torch.float32)
    y = head(x)
    # frame 2 of the output depends on frame 2 of the input only
    x2 = x.clone()
    x2[:, :, 3] += 1.0
    assert torch.equal(head(x2)[:, :, 2], y[:, :, 2]) and not torch.equal(head(x2)[:, :, 3], y[:, :, 3])


def test_ema_follows_the_rule():
    online, target = make_motion_representation("learn")
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    ema_update(target, online, 0.95)
    for b, t, o in zip(before, target.parameters(), online.parameters(), strict=True):
        assert torch.allclose(t, 0.95 * b + 0.05 * o, atol=1e-6)
    assert not any(p.requires_grad for p in target.parameters())


def test_handcrafted_representations_follow_their_definitions():
    x = video()
    d = latent_difference(x)
    assert d.shape == (2, 4, 4, 6, 6) and torch.allclose(d[:, :, 1], x[:, :, 2] - x[:, :, 1])
    low, high = frequency_split(x)
    assert torch.allclose(low + high, x)
    const = torch.full((1, 4, 4, 8, 8), 3.0, dtype=torch.float64)
    low_c, high_c = frequency_split(const)
    assert torch.allclose(low_c, const) and high_c.abs().max() < 1e-12  # DC passes the low-pass untouched
    checker = (-1.0) ** torch.arange(8).view(1, 1, 1, 1, 8).expand(1, 4, 4, 8, 8).double()
    assert frequency_split(checker)[0].abs().max() < 0.01  # the highest spatial frequency is removed
    c = local_correlation(x, radius=1)
    assert c.shape == (2, 9, 4, 6, 6)
    centre = (x[:, :, :-1] * x[:, :, 1:]).sum(1) / 4
    assert torch.allclose(c[:, 4], centre)  # offset (0, 0) is the 5th of 3×3
    assert torch.allclose(c[:, 0, :, 1:, 1:], (x[:, :, :-1, 1:, 1:] * x[:, :, 1:, :-1, :-1]).sum(1) / 4)
    g = global_correlation(x)
    assert g.shape == (2, 4, 36, 36)
    assert torch.allclose(
        g[0, 1, 7, 11], (x[0, :, 1].reshape(4, -1)[:, 7] * x[0, :, 2].reshape(4, -1)[:, 11]).sum() / 2
    )
    with pytest.raises(ValueError, match="unknown motion representation 'optical'"):
        make_motion_representation("optical")
    assert set(MOTION_REPRESENTATIONS) == {"learn", "hlearn", "raw", "diff", "freql", "freqh", "lcor", "gcor"}


def test_huber_and_l2():
    p, q = torch.tensor([0.0, 3.0]), torch.tensor([0.0, -1.0])
    assert consistency_distance(p, q, "l2").item() == pytest.approx(8.0)
    assert consistency_distance(p, q, "huber", 0.001).item() == pytest.approx(((16 + 1e-6) ** 0.5 - 1e-3) / 2)


@pytest.mark.parametrize(("lam", "expected"), [(0.0, True), (1.0, False)])
def test_mixed_trajectory_extremes(lam, expected):
    g = torch.Generator().manual_seed(0)
    assert all(use_generated_trajectories(lam, g) is expected for _ in range(200))


def test_mixed_trajectory_decision_is_the_seeded_coin():
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    decisions = [use_generated_trajectories(0.5, g) for _ in range(64)]
    coins = [torch.rand((), generator=ref, dtype=torch.float64).item() >= 0.5 for _ in range(64)]
    assert decisions == coins and 0 < sum(decisions) < 64


class Linear:
    """eps = a·x + b·cond (per video), enough to write the whole step out by hand."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __call__(self, x, t, cond):
        return self.a * x + self.b * cond.view(-1, 1, 1, 1, 1)


def test_distillation_step_equals_the_hand_computed_reference():
    sched = NoiseSchedule("scaled_linear")
    abar = sched.alphas_cumprod
    x0, noise = video(1), video(2)
    cond, uncond = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    student, teacher = Linear(0.3, 0.2), Linear(0.5, 0.7)
    index, w = torch.tensor([10, 0]), torch.tensor([5.0, 12.0], dtype=torch.float64)
    out = distillation_step(
        student, teacher, x0, cond, uncond, sched, DistillConfig(loss_type="l2"), index=index, w=w, noise=noise
    )

    def cskip_cout(t):
        s = 4.0 * t
        return 0.25 / (s * s + 0.25), s / (s * s + 0.25) ** 0.5

    ref_pred, ref_target = [], []
    for i, (_n, t_s, t_e) in enumerate([(10, 219, 199), (0, 19, 0)]):
        a_s, s_s = abar[t_s].sqrt(), (1 - abar[t_s]).sqrt()
        a_e, s_e = abar[t_e].sqrt(), (1 - abar[t_e]).sqrt()
        xt = a_s * x0[i] + s_s * noise[i]
        e_st = 0.3 * xt + 0.2 * cond[i]
        cs, co = cskip_cout(t_s)
        ref_pred.append(cs * xt + co * (xt - s_s * e_st) / a_s)
        e_c, e_u = 0.5 * xt + 0.7 * cond[i], 0.5 * xt
        e_g = e_c + w[i] * (e_c - e_u)
        x0_g = (xt - s_s * e_c) / a_s + w[i] * ((xt - s_s * e_c) / a_s - (xt - s_s * e_u) / a_s)
        x_prev = a_e * x0_g + s_e * e_g
        e_tg = 0.3 * x_prev + 0.2 * cond[i]
        cs, co = cskip_cout(t_e)
        ref_target.append(cs * x_prev + co * (x_prev - s_e * e_tg) / a_e)
    assert out["t_start"].tolist() == [219, 19] and out["t_end"].tolist() == [199, 0]
    assert torch.allclose(out["model_pred"], torch.stack(ref_pred), atol=1e-10)
    assert torch.allclose(out["target"], torch.stack(ref_target), atol=1e-10)
    assert torch.allclose(out["target"][1], out["x_prev"][1])  # t_end = 0: c_skip = 1
    assert out["loss"].item() == pytest.approx(((torch.stack(ref_pred) - torch.stack(ref_target)) ** 2).mean().item())


def test_hard_swap_at_t_999():
    sched = NoiseSchedule("scaled_linear")
    x0, noise = video(1), video(2)
    x_t = noisy_latents(x0, noise, torch.tensor([999, 979]), sched)
    assert torch.equal(x_t[0], noise[0]) and not torch.equal(x_t[1], noise[1])


def test_only_the_student_and_the_online_head_receive_gradients():
    sched = NoiseSchedule("scaled_linear")
    conv_s, conv_t = torch.nn.Conv3d(4, 4, 1), torch.nn.Conv3d(4, 4, 1)

    def student(x, t, c):
        return conv_s(x.float())

    def teacher(x, t, c):
        return conv_t(x.float())

    head, target_head = make_motion_representation("learn")
    torch.nn.init.normal_(head.out.weight, std=0.1)
    x0 = video(dtype=torch.float32)
    out = distillation_step(
        student,
        teacher,
        x0,
        None,
        None,
        sched,
        index=torch.tensor([5, 49]),
        w=torch.tensor([6.0, 9.0]),
        noise=video(4, dtype=torch.float32),
        motion=head,
        target_motion=target_head,
    )
    out["loss"].backward()
    assert conv_s.weight.grad is not None and conv_s.weight.grad.abs().sum() > 0
    assert head.out.weight.grad is not None and head.out.weight.grad.abs().sum() > 0
    assert conv_t.weight.grad is None and all(p.grad is None for p in target_head.parameters())


def test_generated_x0_is_the_one_step_sample_at_999():
    sched = NoiseSchedule("scaled_linear")
    z = video(5)
    x0 = generated_x0(Linear(0.3, 0.0), z, torch.zeros(2, dtype=torch.float64), sched)
    a, s = sched.alphas_cumprod[999].sqrt(), (1 - sched.alphas_cumprod[999]).sqrt()
    assert torch.allclose(x0, (z - s * 0.3 * z) / a)
