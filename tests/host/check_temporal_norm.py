"""Training-exact motion-module normalisation in a real ComfyUI + AnimateDiff-Evolved host: our default
text-to-video graph against diffusers (UNetMotionModel with the PEFT adapter merged, diffusers' own
LCMScheduler), on the host's full-size random SD1.5 + AnimateDiff v2 weights.

Called by check_nodes.py in its process (the checkpoint is loaded once); alone for development:
    python check_temporal_norm.py COMFYUI_DIR PACKAGE_DIR CHECKPOINT MOTION_MODEL ADAPTER_DIR
prints one JSON line. CPU-sized: 64 px, 8 frames (16 with context windows of 8), 1 and 4 steps.

What each case compares (errors are max |ours − reference| / max |reference|, on the latents the UNet sees):
  frames_1 / frames_4   the default graph (temporal_norm auto → frames) vs diffusers, zeroed text embedding.
  per_frame_vs_stock    the default graph with per_frame vs stock ADE (Use Evolved Sampling 'lcm >> sqrt_linear',
                        BasicScheduler 'simple', KSamplerSelect 'lcm') on the same LoRA'd weights, 2 steps.
  cfg2                  cfg 2 with a text embedding against a zeroed one, which ComfyUI batches into one UNet
                        call (2 videos in the batch, recorded); reference: diffusers run once per batch element
                        (cond, uncond), combined eps_u + 2 (eps_c − eps_u); 1 step.
  context               16 frames in ADE context windows of 8 (Standard Static, overlap 4, fuse 'flat');
                        reference: diffusers run on each window's 8 frames, the eps of a frame averaged over
                        the windows that hold it (flat fuse), then the LCM update; 1 step.
  hack                  ADE's GroupNorm hack (deprecated loader, apply_v2_properly off: every GroupNorm spans
                        the frames): frames vs per_frame must be equal (one span, never two); 1 step.
  sampler_vs_lcm        MCM Sampler vs stock 'lcm' on one model and seed (cheap stand-in UNet), 4 steps: equal.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from host_util import error_of, run_node, run_parts  # this folder is on sys.path (it is the script's)

SIZE, FRAMES, LONG_FRAMES, CONTEXT, OVERLAP = 64, 8, 16, 8, 4
SEED = 42
ADAPTER = "animatediff-webvid"
AUTO_BETAS = "auto (from the adapter)"


# --------------------------------------------------------------------------------------------------------------
# diffusers reference
# --------------------------------------------------------------------------------------------------------------


def _hide_torchvision_shim() -> None:
    """The host harness's torchvision shim (ADE imports torchvision) lacks what transformers' image utilities
    import when they think torchvision is there; diffusers imports those. Tell transformers it is absent."""
    import torchvision.transforms

    if hasattr(torchvision.transforms, "InterpolationMode"):  # a real torchvision
        return
    import transformers.utils
    import transformers.utils.import_utils

    for module in (transformers.utils, transformers.utils.import_utils):
        module.is_torchvision_available = lambda: False


def diffusers_unet(model, motion_model, peft_folder):
    """UNetMotionModel holding the unpatched weights ComfyUI and ADE compute with, the PEFT adapter merged by peft.

    UNet keys: ComfyUI's own diffusers → LDM map; motion keys: diffusers' AnimateDiff checkpoint converter. The
    positional encodings are ADE's buffers (the file's values; diffusers would recompute them in float32).
    """
    import comfy.utils
    import torch

    _hide_torchvision_shim()
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from diffusers.loaders.single_file_utils import (
        convert_animatediff_checkpoint_to_diffusers,
    )
    from peft import PeftModel

    with torch.device("meta"):
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(cross_attention_dim=768), MotionAdapter())
    ldm = model.model.diffusion_model.state_dict()
    to_ldm = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    ade = motion_model.model.state_dict()
    motion = convert_animatediff_checkpoint_to_diffusers(ade)
    state = {}
    for key in unet.state_dict():
        if key.endswith(".pos_embed.pe"):  # down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe
            module, rest = key.split(".transformer_blocks.", 1)
            src = (
                f"{module}.temporal_transformer.transformer_blocks.{rest.split('.')[0]}"
                ".attention_blocks.%d.pos_encoder.pe"
            )
            assert torch.equal(ade[src % 0], ade[src % 1])
            state[key] = ade[src % 0].float().clone()
        elif ".motion_modules." in key:
            state[key] = motion[key].float().clone()
        else:
            state[key] = ldm[to_ldm[key]].float().clone()
    unet.load_state_dict(state, strict=True, assign=True)
    # (copies above: peft merges into the weights in place, and these are ComfyUI's and ADE's own tensors)
    return PeftModel.from_pretrained(unet, str(peft_folder)).merge_and_unload().eval()


def lcm_reference(eps_fn, noise, steps: int, renoise, beta_schedule: str = "linear"):
    """diffusers' LCMScheduler (``beta_schedule`` betas from 0.00085 to 0.012, timestep scaling 4, 50-step grid): its
    consistency output at each step, re-noised to the next timestep with ComfyUI's noise (``renoise()`` draws it).
    ``noise``/result: (1, c, f, h, w) in the UNet's (VP, scaled-latent) space. Returns every step's output."""
    import torch
    from diffusers import LCMScheduler

    sched = LCMScheduler(beta_schedule=beta_schedule, timestep_scaling=4.0)
    sched.set_timesteps(steps)
    x, outs = noise, []
    for i, t in enumerate(sched.timesteps):
        with torch.no_grad():
            denoised = sched.step(eps_fn(x, t), t, x).denoised
        outs.append(denoised)
        if i + 1 < len(sched.timesteps):
            a = sched.alphas_cumprod[sched.timesteps[i + 1]]
            x = a.sqrt() * denoised + (1 - a).sqrt() * renoise()
    return outs


def to_video(x):  # ComfyUI frames-as-batch (f, c, h, w) -> diffusers (1, c, f, h, w)
    return x.permute(1, 0, 2, 3).unsqueeze(0)


def rel_err(got, ref) -> float:
    return float((got.double() - ref.double()).abs().max() / ref.double().abs().max())


# --------------------------------------------------------------------------------------------------------------
# ComfyUI graphs (the node functions, called as the executor calls them)
# --------------------------------------------------------------------------------------------------------------


def _result(res):
    return res[0] if isinstance(res, tuple) else res.result[0]


class Graphs:
    def __init__(self, M, ckpt_model, clip, motion_name):
        self.M, self.model, self.motion_name = M, ckpt_model, motion_name
        self.selected = run_node(M["MCM_StyleAdapter"], ADAPTER, AUTO_BETAS)[0]
        text = M["CLIPTextEncode"]().encode(clip, "a red panda walking through a forest")[0]
        self.zero = M["ConditioningZeroOut"]().zero_out(text)[0]
        self.text = text

    def motion_model(self):
        return self.M["ADE_LoadAnimateDiffModel"]().load_motion_model(self.motion_name)[0]

    def lora(self, temporal_norm, strength=1.0):
        """Load MCM LoRA (MCM model sampling on) on the checkpoint and a fresh Load AnimateDiff Model."""
        return run_node(
            self.M["MCM_LoraLoader"],
            self.model,
            self.selected,
            strength,
            strength,
            True,
            temporal_norm,
            motion_model=self.motion_model(),
        )

    def evolved(self, lora, context=None, beta="use existing"):
        """→ Apply AnimateDiff Model → Use Evolved Sampling. Graphs built on one Load MCM LoRA output share its
        patched weights (ComfyUI patches them once, not once per graph)."""
        M = self.M
        m, mm = lora
        kwargs = {"m_models": M["ADE_ApplyAnimateDiffModelSimple"]().apply_motion_model(mm)[0]}
        if context is not None:
            kwargs["context_options"] = context
        return M["ADE_UseEvolvedSampling"]().use_evolved_sampling(m, beta, **kwargs)[0]

    def sample(self, model, steps, cfg, positive, negative, frames, sampler=None, sigmas=None):
        """SamplerCustom (MCM Scheduler + MCM Sampler unless given); the latent the UNet space holds."""
        M = self.M
        latent = M["EmptyLatentImage"]().generate(SIZE, SIZE, frames)[0]
        sampler = sampler or run_node(M["MCM_Sampler"])[0]
        sigmas = sigmas if sigmas is not None else run_node(M["MCM_Scheduler"], model, steps, 1.0)[0]
        out = _result(M["SamplerCustom"]().sample(model, True, SEED, cfg, positive, negative, sampler, sigmas, latent))
        return model.model.process_latent_in(out["samples"]).double()

    def noise(self, frames):
        """The initial noise SamplerCustom draws for SEED and the between-step noise sampler's draws."""
        import comfy.k_diffusion.sampling as kds
        import comfy.sample
        import torch

        shape = torch.zeros(frames, 4, SIZE // 8, SIZE // 8)
        ns = kds.default_noise_sampler(shape, seed=SEED)
        return to_video(comfy.sample.prepare_noise(shape, SEED)), lambda: to_video(ns(None, None))


class _Laps:
    def __init__(self, out):
        self.out, self.t = out, time.time()

    def __call__(self, name):
        now = time.time()
        self.out.setdefault("seconds", {})[name] = round(now - self.t, 1)
        self.t = now


def _recording_first_output(model):
    """A clone that also keeps the model's first output (cfg 1: the first step's consistency output, in the
    UNet's latent space); the values are untouched."""
    first = []
    m = model.clone()

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        if not first:
            first.append(out.detach().clone())
        return out

    m.set_model_unet_function_wrapper(wrapper)
    return m, first


def _record_batches(mm_patcher):
    """Forward pre-hook on the first motion module: (batch size, ADE's sub_idxs) of every call."""
    seen = []
    first = mm_patcher.model.down_blocks[0].motion_modules[0]
    handle = first.register_forward_pre_hook(lambda mod, args: seen.append((int(args[0].shape[0]), mod.sub_idxs)))
    return seen, handle


# --------------------------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------------------------


def references(g: Graphs, unet, out):
    """Every diffusers reference, computed before ComfyUI samples (base weights untouched, one big model at a time)."""
    import torch

    zero = g.zero[0][0].float()
    text = g.text[0][0].float()

    def eps(x, t, emb):  # UNetMotionModel takes the text embedding once per frame (its pipeline repeats it)
        return unet(x, t, encoder_hidden_states=emb.repeat_interleave(x.shape[2], dim=0)).sample

    ref = {}
    t0 = time.time()
    noise, renoise = g.noise(FRAMES)
    steps4 = lcm_reference(lambda x, t: eps(x, t, zero), noise, 4, renoise)
    ref["frames_1"], ref["frames_4"] = steps4[0], steps4[-1]
    noise, renoise = g.noise(FRAMES)

    def cfg2(x, t):
        e_c, e_u = eps(x, t, text), eps(x, t, zero)  # one video per UNet call
        return e_u + 2.0 * (e_c - e_u)

    ref["cfg2"] = lcm_reference(cfg2, noise, 1, renoise)[-1]
    noise, renoise = g.noise(LONG_FRAMES)
    windows = [list(range(s, s + CONTEXT)) for s in range(0, LONG_FRAMES - CONTEXT + 1, CONTEXT - OVERLAP)]

    def windowed(x, t):
        total = torch.zeros_like(x)
        count = torch.zeros(1, 1, x.shape[2], 1, 1)
        for w in windows:  # diffusers on the window's frames alone; flat fuse = the mean over windows
            total[:, :, w] += eps(x[:, :, w], t, zero)
            count[:, :, w] += 1
        return total / count

    ref["context"] = lcm_reference(windowed, noise, 1, renoise)[-1]
    out["reference_windows"] = windows
    out["reference_seconds"] = round(time.time() - t0, 1)
    return ref


def check_parity(g: Graphs, ref, out):
    M = g.M
    errs, facts = {}, {}
    t0 = time.time()
    auto = g.lora("auto")
    model = g.evolved(auto)
    lap = _Laps(out)
    errs["frames_1"] = rel_err(to_video(g.sample(model, 1, 1.0, g.zero, g.zero, FRAMES)), ref["frames_1"])
    errs["frames_4"] = rel_err(to_video(g.sample(model, 4, 1.0, g.zero, g.zero, FRAMES)), ref["frames_4"])
    # cfg 2: cond and uncond in one batch (the batch sizes the motion module saw are recorded)
    seen, handle = _record_batches(auto[1])
    try:
        errs["cfg2"] = rel_err(to_video(g.sample(model, 1, 2.0, g.text, g.zero, FRAMES)), ref["cfg2"])
    finally:
        handle.remove()
    facts["cfg2_batches"] = sorted({b for b, _ in seen})
    lap("frames_1_4_cfg2")
    # context windows of 8 on 16 frames
    ctx = _result(M["ADE_StandardStaticContextOptions"]().create_options(CONTEXT, OVERLAP, fuse_method="flat"))
    seen, handle = _record_batches(auto[1])
    try:
        got = g.sample(g.evolved(auto, context=ctx), 1, 1.0, g.zero, g.zero, LONG_FRAMES)
        errs["context"] = rel_err(to_video(got), ref["context"])
    finally:
        handle.remove()
    facts["context_windows"] = [list(s) if s is not None else None for _, s in seen]
    facts["context_batches"] = sorted({b for b, _ in seen})
    lap("context")
    # per_frame: the same graph vs stock ADE ('lcm >> sqrt_linear' model sampling, 'simple' scheduler, 'lcm'),
    # 2 steps (a re-noising included; stock 'lcm' draws it from the same seeded noise sampler)
    per_frame = g.lora("per_frame")
    ours_model, first_step = _recording_first_output(g.evolved(per_frame))
    ours = g.sample(ours_model, 2, 1.0, g.zero, g.zero, FRAMES)
    # the first step's consistency output is the 1-step sample: the difference that frames removes
    facts["per_frame_vs_diffusers_1"] = rel_err(to_video(first_step[0].double()), ref["frames_1"])
    stock = g.evolved(per_frame, beta="lcm >> sqrt_linear")
    sigmas = _result(M["BasicScheduler"]().get_sigmas(stock, "simple", 2, 1.0))
    lcm = _result(M["KSamplerSelect"]().get_sampler("lcm"))
    errs["per_frame_vs_stock"] = rel_err(g.sample(stock, 2, 1.0, g.zero, g.zero, FRAMES, lcm, sigmas), ours)
    facts["stock_model_sampling"] = type(stock.get_model_object("model_sampling")).__name__
    lap("per_frame_and_stock")
    out["temporal_norm_parity"] = errs
    out["temporal_norm_facts"] = facts
    out["comfy_seconds"] = round(time.time() - t0, 1)


def check_hack(g: Graphs, out):
    """ADE's GroupNorm hack on (deprecated Gen1 loader): our frames patch must not add a second span."""
    import torch

    M = g.M
    latent = M["EmptyLatentImage"]().generate(SIZE, SIZE, FRAMES)[0]
    gen1 = M["AnimateDiffLoaderV1"]().load_mm_and_inject_params(
        g.model, latent, g.motion_name, False, "sqrt_linear (AnimateDiff)"
    )[0]
    results, swapped, patched, owner_names = {}, [], {}, {}
    original = torch.nn.GroupNorm.forward
    for mode in ("frames", "per_frame"):  # strength 0: the span is what is compared, no weights to patch
        m, _ = run_node(M["MCM_LoraLoader"], gen1, g.selected, 0.0, 0.0, True, mode)
        mm = m.get_additional_models_with_key("ADE")[0]
        patched[mode] = sum(1 for k in mm.object_patches if k.endswith(".temporal_transformer.norm.forward"))
        owners = owner_names.setdefault(mode, set())

        def probe(mod, args, owners=owners):  # is ADE's hack swapped in; whose forward runs the motion module's norm?
            swapped.append(torch.nn.GroupNorm.forward is not original)
            owners.add(type(mod.temporal_transformer.norm.forward).__name__)

        handle = mm.model.down_blocks[0].motion_modules[0].register_forward_pre_hook(probe)
        try:
            results[mode] = g.sample(m, 1, 1.0, g.zero, g.zero, FRAMES)
        finally:
            handle.remove()
    out["hack"] = {
        "active": bool(swapped) and all(swapped),
        "patched_norms": patched,
        "norm_forward": {k: sorted(v) for k, v in owner_names.items()},
        "frames_vs_per_frame": rel_err(results["frames"], results["per_frame"]),
    }


def check_sampler_vs_lcm(M, patched, pos, neg, out):
    """MCM Sampler and stock 'lcm' on the same model (MCM model sampling, a cheap stand-in UNet), one seed."""
    import torch

    ms = patched.get_model_object("model_sampling")
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) / 2

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"]
        xc = ms.calculate_input(sigma, x)
        eps = torch.tanh(torch.einsum("cd,bdhw->bchw", w, xc) + torch.sin(ms.timestep(sigma) / 150).view(-1, 1, 1, 1))
        return ms.calculate_denoised(sigma, eps, x)

    m = patched.clone()
    m.set_model_unet_function_wrapper(wrapper)
    latent = {"samples": torch.zeros(FRAMES, 4, 8, 8)}
    sigmas = run_node(M["MCM_Scheduler"], m, 4, 1.0)[0]
    got = {}
    for name, sampler in (
        ("mcm", run_node(M["MCM_Sampler"])[0]),
        ("lcm", _result(M["KSamplerSelect"]().get_sampler("lcm"))),
    ):
        got[name] = _result(M["SamplerCustom"]().sample(m, True, SEED, 1.0, pos, neg, sampler, sigmas, latent))[
            "samples"
        ]
    out["sampler_vs_lcm"] = float((got["mcm"] - got["lcm"]).abs().max())


def check_errors(g: Graphs, out):
    """frames with no motion model, and a motion-model format the patch does not know."""
    M = g.M
    errors = {}
    loader = M["MCM_LoraLoader"]
    errors["frames_without_motion_model"] = error_of(
        lambda: run_node(loader, g.model, g.selected, 1.0, 0.0, True, "frames")
    )
    errors["auto_without_motion_model_image_only"] = error_of(
        lambda: run_node(loader, g.model, g.selected, 1.0, 0.0, True, "auto")
    )
    mm = g.motion_model()
    info = mm.model.mm_info
    saved = info.mm_format
    info.mm_format = "HotshotXL"  # the format ADE would report for a Hotshot-XL motion model
    try:
        errors["unknown_format"] = error_of(
            lambda: run_node(loader, g.model, g.selected, 1.0, 0.0, True, "frames", motion_model=mm)
        )
        errors["unknown_format_per_frame"] = error_of(
            lambda: run_node(loader, g.model, g.selected, 1.0, 0.0, True, "per_frame", motion_model=mm)
        )
    finally:
        info.mm_format = saved
    _, mm2 = run_node(loader, g.model, g.selected, 1.0, 1.0, True, "frames", motion_model=mm)
    errors["input_untouched"] = not any("norm.forward" in k for k in mm.object_patches)
    errors["patched_norms"] = sum(1 for k in mm2.object_patches if k.endswith(".temporal_transformer.norm.forward"))
    out["temporal_norm_errors"] = errors


def run_all(M, model, clip, motion_name, adapter_dir, pos, neg, patched, out):
    """Every check; failures are reported per part and the others go on."""
    import comfy.model_management as mmgmt

    steps = []
    g = Graphs(M, model, clip, motion_name)

    def reference_part():
        mmgmt.unload_all_models()  # ComfyUI's weights back to the checkpoint's before copying them
        t0 = time.time()
        unet = diffusers_unet(model, g.motion_model(), os.path.join(adapter_dir, ADAPTER))
        out["reference_build_seconds"] = round(time.time() - t0, 1)
        steps.append(references(g, unet, out))
        del unet

    run_parts(
        [
            ("tn_reference", reference_part),
            ("tn_parity", lambda: check_parity(g, steps[0], out)),
            ("tn_hack", lambda: check_hack(g, out)),
            ("tn_sampler", lambda: check_sampler_vs_lcm(M, patched, pos, neg, out)),
            ("tn_errors", lambda: check_errors(g, out)),
        ],
        out,
    )


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import check_nodes

    comfy_dir, package_dir, ckpt, motion, adapters = sys.argv[1:6]
    M, model, clip, pos, neg = check_nodes.start_host(comfy_dir, package_dir, ckpt, adapters)
    result = {}
    patched = check_nodes.check_sampling(M, model, clip, result)[0]
    run_all(M, model, clip, motion, adapters, pos, neg, patched, result)
    print(json.dumps(result, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
