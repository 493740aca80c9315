"""Run inside a real ComfyUI (+ AnimateDiff-Evolved) install: load comfyui-mcm as a custom node and
check its nodes in process. Prints one JSON line; the pytest wrapper is tests/test_host.py.

usage: python check_nodes.py COMFYUI_DIR PACKAGE_DIR CHECKPOINT MOTION_MODEL ADAPTER_DIR
ADAPTER_DIR holds the adapters written by make_adapters.py (registered as the `mcm` model folder).
Runs on the CPU. ComfyUI's root goes first on sys.path (its `nodes` module must win).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import tempfile
import traceback

from host_util import combo_options, run_node  # this folder is on sys.path (it is the script's)
from host_util import error_of as _error_of


class ToyEps:
    """A deterministic stand-in for the UNet: eps = tanh(W·x + b + sin(t/150)), per pixel."""

    def __init__(self, channels=4, seed=0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(channels, channels, generator=g, dtype=torch.float64) / channels**0.5
        self.b = torch.randn(channels, generator=g, dtype=torch.float64) * 0.1

    def __call__(self, x, t, cond=None):
        import torch

        h = torch.einsum("cd,bd...->bc...", self.w.to(x), x) + self.b.to(x).view(1, -1, 1, 1)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        return torch.tanh(h + torch.sin(t / 150.0).view(-1, 1, 1, 1))


def check_sampling(M, model, clip, out):
    import torch

    label = next(
        c
        for c in combo_options(M["MCM_ModelSampling"].INPUT_TYPES()["required"]["beta_schedule"])
        if c.startswith("sqrt_linear")
    )
    (patched,) = run_node(M["MCM_ModelSampling"], model, label, 4.0)
    ms = patched.get_model_object("model_sampling")
    out["model_sampling"] = type(ms).__name__
    out["input_model_sampling"] = type(model.get_model_object("model_sampling")).__name__
    sigmas = {n: run_node(M["MCM_Scheduler"], patched, n, 1.0)[0] for n in (1, 2, 4, 8)}
    out["unet_timesteps"] = {n: ms.timestep(s[:-1]).tolist() for n, s in sigmas.items()}
    out["v2v_timesteps"] = ms.timestep(run_node(M["MCM_Scheduler"], patched, 4, 0.5)[0][:-1]).tolist()
    # plain KSampler users: the stock "simple" scheduler on MCM model sampling
    simple = {n: M["BasicScheduler"]().get_sigmas(patched, "simple", n, 1.0) for n in (1, 2, 4, 8)}
    simple = {n: (s[0] if isinstance(s, tuple) else s.result[0]) for n, s in simple.items()}
    out["simple_scheduler_timesteps"] = {n: ms.timestep(s[:-1]).tolist() for n, s in simple.items()}
    out["simple_equals_mcm_scheduler"] = all(torch.allclose(simple[n], sigmas[n]) for n in simple)
    return patched, sigmas


def check_parity(M, patched, pos, neg, out):
    """SamplerCustom + MCM sampler/scheduler in ComfyUI vs mcm.sample_consistency, same eps model and noise."""
    import comfy.k_diffusion.sampling as kds
    import comfy.sample
    import torch

    from mcm.sampler import sample_consistency
    from mcm.schedule import NoiseSchedule, lcm_timesteps

    toy = ToyEps()
    ms = patched.get_model_object("model_sampling")

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"]
        eps = toy(ms.calculate_input(sigma, x).double(), ms.timestep(sigma).double()).float()
        return ms.calculate_denoised(sigma, eps, x)

    m = patched.clone()
    m.set_model_unet_function_wrapper(wrapper)
    latent = {"samples": torch.zeros(4, 4, 8, 8)}
    sampler = run_node(M["MCM_Sampler"])[0]
    seed, results = 123, {}
    for steps, denoise in ((1, 1.0), (4, 1.0), (8, 1.0), (4, 0.6)):
        init = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(7)) * 0.5 if denoise < 1 else None
        lat = {"samples": init} if init is not None else latent
        sigmas = run_node(M["MCM_Scheduler"], m, steps, denoise)[0]
        res = M["SamplerCustom"]().sample(m, True, seed, 1.0, pos, neg, sampler, sigmas, lat)
        # the LATENT wire holds VAE latents; the model samples them scaled by the latent format (0.18215)
        got = m.model.process_latent_in((res[0] if isinstance(res, tuple) else res.result[0])["samples"]).double()
        # reference: the same noise, in diffusers' VP space
        noise = comfy.sample.prepare_noise(lat["samples"], seed).double()
        ns = kds.default_noise_sampler(torch.zeros(4, 4, 8, 8), seed=seed)
        schedule = NoiseSchedule("linear")
        timesteps = lcm_timesteps(steps, strength=denoise)
        if init is None:
            x = noise
        else:
            alpha, sigma = schedule.alpha_sigma(timesteps[:1])
            x = alpha.item() * m.model.process_latent_in(init).double() + sigma.item() * noise
        ref = sample_consistency(
            toy, x, timesteps, schedule, timestep_scaling=4.0, noise_sampler=lambda like, ns=ns: ns(None, None).double()
        )
        scale = ref.abs().max().item()
        results[f"{steps}@{denoise}"] = (got - ref).abs().max().item() / scale
    out["parity_rel_err"] = results


def _load(patcher):
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])


def _unload():
    import comfy.model_management as mm

    mm.unload_all_models()


def _effective_weight(module):
    """The weight a layer computes with: ComfyUI merges patches in place, or (memory permitting not)
    applies them on the fly through the module's ``weight_function`` list."""
    w = module.weight.detach()
    for fn in getattr(module, "weight_function", []) or []:
        w = fn(w)
    return w.float()


def _selected(M, label, beta="auto (from the adapter)"):
    return run_node(M["MCM_StyleAdapter"], label, beta)


def check_adapters(M, model, motion_name, out):
    import comfy.utils

    from mcm.weights import ade_motion_layers, comfy_spatial_layers

    node = M["MCM_StyleAdapter"]
    out["adapter_choices"] = combo_options(node.INPUT_TYPES()["required"]["adapter"])
    webvid, steps, cfg, info = _selected(M, "animatediff-webvid")
    laion = _selected(M, "mcm-test-laion.safetensors")[0]
    out["selected"] = {
        "webvid_betas": webvid.beta_schedule,
        "laion_betas": laion.beta_schedule,
        "steps": steps,
        "cfg": cfg,
        "info": info,
    }

    # our LDM names == ComfyUI's own diffusers→LDM map
    cmap = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    spatial = comfy_spatial_layers(webvid.adapter)
    ours = {f"{p}.weight" for p in spatial}
    theirs = {cmap[f"{d}.weight"] for d in webvid.adapter.spatial_layers()}
    out["ldm_names_match_comfy"] = ours == theirs
    out["spatial_layers"] = len(spatial)

    # Gen2: loader on MODEL + MOTION_MODEL_ADE
    mm = M["ADE_LoadAnimateDiffModel"]().load_motion_model(motion_name)[0]
    loader = M["MCM_LoraLoader"]
    m, mm2 = run_node(loader, model, webvid, 0.8, 1.0, True, motion_model=mm)
    out["gen2"] = {
        "unet_patches": len(m.patches) - len(model.patches),
        "motion_patches": len(mm2.patches) - len(mm.patches),
        "input_untouched": len(model.patches) == 0 and len(mm.patches) == 0,
        "model_sampling": type(m.get_model_object("model_sampling")).__name__,
        "sampling_betas": m.get_model_object("model_sampling").mcm_schedule.beta_schedule,
    }
    # weights after patching == base + strength * ΔW (a spread of layer kinds)
    probe = [p for i, p in enumerate(sorted(spatial)) if i % 9 == 0]
    _unload()
    base = {p: m.model.diffusion_model.get_submodule(p).weight.detach().float().clone() for p in probe}
    _load(m)  # the way sampling loads it (this unloads whatever used the same weights before)
    try:
        err = max(
            (_effective_weight(m.model.diffusion_model.get_submodule(p)) - base[p] - 0.8 * spatial[p].delta())
            .abs()
            .max()
            .item()
            for p in probe
        )
    finally:
        _unload()
    restored = max(
        (_effective_weight(m.model.diffusion_model.get_submodule(p)) - base[p]).abs().max().item() for p in probe
    )
    motion = ade_motion_layers(webvid.adapter)
    mprobe = [p for i, p in enumerate(sorted(motion)) if i % 7 == 0]
    _unload()
    mbase = {p: mm2.model.get_submodule(p).weight.detach().float().clone() for p in mprobe}
    _load(mm2)
    try:
        merr = max(
            (_effective_weight(mm2.model.get_submodule(p)) - mbase[p] - motion[p].delta()).abs().max().item()
            for p in mprobe
        )
    finally:
        _unload()
    out["gen2"].update(
        {
            "unet_weight_err": err,
            "unet_restored_err": restored,
            "motion_weight_err": merr,
            "probed": [len(probe), len(mprobe)],
        }
    )

    # Gen1: the motion model rides on MODEL; the loader patches it there
    gen1 = M["ADE_AnimateDiffLoaderGen1"]().load_mm_and_inject_params(model, motion_name, "autoselect")[0]
    g, _ = run_node(loader, gen1, laion, 1.0, 1.0, True)
    attached = g.get_additional_models_with_key("ADE")
    before = gen1.get_additional_models_with_key("ADE")
    out["gen1"] = {
        "motion_patches": [len(p.patches) for p in attached],
        "input_motion_patches": [len(p.patches) for p in before],
        "sampling_betas": g.get_model_object("model_sampling").mcm_schedule.beta_schedule,
    }
    return webvid


def start_host(comfy_dir: str, package_dir: str, ckpt: str, adapter_dir: str):
    """ComfyUI with ADE and this package loaded in process; (nodes, model, clip, positive, negative)."""
    os.chdir(comfy_dir)
    sys.path.insert(0, comfy_dir)
    sys.path.append(package_dir)  # for `mcm` (the reference implementation); after ComfyUI's modules
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths

    import nodes

    custom = tempfile.mkdtemp(prefix="mcm-host-")
    os.symlink(os.path.abspath(package_dir), os.path.join(custom, "comfyui-mcm"))
    folder_paths.add_model_folder_path("custom_nodes", custom)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    folder_paths.add_model_folder_path("mcm", os.path.abspath(adapter_dir), is_default=True)
    M = nodes.NODE_CLASS_MAPPINGS
    model, clip = M["CheckpointLoaderSimple"]().load_checkpoint(ckpt)[:2]
    pos = M["CLIPTextEncode"]().encode(clip, "a red square moving left")[0]
    neg = M["CLIPTextEncode"]().encode(clip, "")[0]
    return M, model, clip, pos, neg


def main(comfy_dir: str, package_dir: str, ckpt: str, motion_model: str, adapter_dir: str) -> dict:
    M, model, clip, pos, neg = start_host(comfy_dir, package_dir, ckpt, adapter_dir)
    out = {"registered": sorted(k for k in M if k.startswith("MCM_"))}
    patched, sigmas = check_sampling(M, model, clip, out)
    for name, fn in [
        ("parity", lambda: check_parity(M, patched, pos, neg, out)),
        ("adapters", lambda: check_adapters(M, model, motion_model, out)),
        ("errors", lambda: check_errors_impl(M, model, out)),
        ("ade_sample", lambda: check_ade_sample(M, patched, pos, neg, sigmas, motion_model, out)),
    ]:
        try:
            fn()
        except Exception:  # noqa: BLE001 - report and go on with the other checks
            out.setdefault("failures", {})[name] = traceback.format_exc()[-3000:]
    if os.environ.get("MCM_HOST_SKIP_TEMPORAL_NORM") != "1":
        import check_temporal_norm  # this folder is on sys.path (it is the script's)

        check_temporal_norm.run_all(M, model, clip, motion_model, adapter_dir, pos, neg, patched, out)
    return out


def check_errors_impl(M, model, out):
    import torch

    import nodes
    from mcm.weights import Adapter, AdapterMeta, LoraWeights

    loader = M["MCM_LoraLoader"]
    selected_cls = type(_selected(M, "animatediff-webvid")[0])
    webvid = _selected(M, "animatediff-webvid")[0]
    errors = {}
    errors["missing_adapter"] = _error_of(lambda: _selected(M, "no-such-adapter"))
    errors["escape_folder"] = _error_of(lambda: _selected(M, "../../etc/passwd"))
    w = LoraWeights(torch.zeros(4, 8), torch.zeros(8, 4), 4.0)
    modelscope = Adapter(
        AdapterMeta(base="modelscope-t2v", motion_module=None), {"transformer_in.proj_in": w}, source="ms.safetensors"
    )
    errors["wrong_base"] = _error_of(
        lambda: run_node(loader, model, selected_cls("ms", modelscope, "linear", "x"), 1.0, 1.0, True)
    )
    bad_layers = dict(webvid.adapter.layers)
    bad_layers["down_blocks.0.attentions.0.proj_in"] = LoraWeights(
        torch.zeros(4, 7, 1, 1), torch.zeros(320, 4, 1, 1), 4.0
    )
    wrong = Adapter(webvid.adapter.meta, bad_layers, source="wrong-rank.safetensors")
    errors["shape_mismatch"] = _error_of(
        lambda: run_node(loader, model, selected_cls("w", wrong, "linear", "x"), 1.0, 0.0, True)
    )
    errors["no_motion_model"] = _error_of(lambda: run_node(loader, model, webvid, 1.0, 1.0, True))
    saved = {k: nodes.NODE_CLASS_MAPPINGS.pop(k) for k in list(nodes.NODE_CLASS_MAPPINGS) if k.startswith("ADE_")}
    try:
        errors["ade_missing"] = _error_of(lambda: run_node(loader, model, webvid, 1.0, 1.0, True))
    finally:
        nodes.NODE_CLASS_MAPPINGS.update(saved)
    errors["strength_range"] = _error_of(lambda: run_node(loader, model, webvid, 5.0, 1.0, True))
    errors["not_an_adapter"] = _error_of(lambda: run_node(loader, model, "animatediff-webvid", 1.0, 1.0, True))
    errors["motion_strength_zero_ok"] = _error_of(lambda: run_node(loader, model, webvid, 1.0, 0.0, True))
    out["errors"] = errors


def check_ade_sample(M, patched, pos, neg, sigmas, motion_model, out):
    import torch

    mm = M["ADE_LoadAnimateDiffModel"]().load_motion_model(motion_model)[0]
    m_models = M["ADE_ApplyAnimateDiffModelSimple"]().apply_motion_model(mm)[0]
    ade = M["ADE_UseEvolvedSampling"]().use_evolved_sampling(patched, "use existing", m_models=m_models)[0]
    out["after_ade_use_existing"] = type(ade.get_model_object("model_sampling")).__name__
    latent = M["EmptyLatentImage"]().generate(32, 32, 4)[0]
    sampler = run_node(M["MCM_Sampler"])[0]
    results = {}
    for steps in (1, 2):
        res = M["SamplerCustom"]().sample(ade, True, 7, 1.0, pos, neg, sampler, sigmas[steps], latent)
        results[steps] = (res[0] if isinstance(res, tuple) else res.result[0])["samples"]
    one = run_node(M["MCM_KSampler"], ade, 7, 1, 1.0, pos, neg, latent, 1.0)[0]["samples"]
    out["sample_shape"] = list(results[1].shape)
    out["sample_finite"] = bool(all(torch.isfinite(s).all() for s in results.values()))
    out["one_vs_two_steps_differ"] = bool((results[1] - results[2]).abs().max() > 1e-4)
    out["ksampler_equals_samplercustom"] = float((one - results[1]).abs().max())


if __name__ == "__main__":
    result = main(*sys.argv[1:6])
    print(json.dumps(result, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
