"""ModelScope T2V in a real ComfyUI host: Load ModelScope T2V Model + MCM Style Adapter + Load MCM LoRA + the MCM
sampling nodes against diffusers (UNet3DConditionModel from the same folder, the PEFT adapter merged by peft, its
own LCMScheduler with the ms-1.7b schedule and timestep scaling 4, the same noise), on full-size random weights.

usage: python check_modelscope.py COMFYUI_DIR PACKAGE_DIR DATA_DIR [SD_CHECKPOINT [TRAINED_DIR]]
DATA_DIR is what make_modelscope.py wrote. TRAINED_DIR (optional) holds a tiny trained run's teacher UNet
(text2video/tiny-ms/unet/), its exported adapter (mcm/tiny-ms.safetensors) and the trainer's validation inputs
(inputs.safetensors: text embeddings, starting noise and re-noising draws); the samples the nodes give for them are
written to TRAINED_DIR/comfyui.safetensors for the test to decode. Prints one JSON line.
CPU-sized: 64 px, 8 frames, 1 and 4 steps, cfg 1 and 2. Errors are max |ours - reference| / max |reference| on the
latents the UNet sees (the sample before the VAE's scaling). One big model at a time: ComfyUI's samples first,
then ComfyUI's model is freed and the diffusers reference built.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import time

from check_temporal_norm import lcm_reference, rel_err, to_video  # this folder is on sys.path (it is the script's)
from host_util import combo_options, error_of, run_node, run_parts

SIZE, FRAMES, SEED = 64, 8, 42
UNET = "ms-rand/unet/diffusion_pytorch_model.safetensors"
ORIGINAL = "ms-rand-original.pth"
ADAPTER = "modelscopet2v-anime"
SD_ADAPTER = "animatediff-webvid"
CLIP, VAE = "rand_clip_h.safetensors", "rand_sd_vae.safetensors"
AUTO_BETAS = "auto (from the adapter)"
CASES = {"1@cfg1": (1, 1.0), "4@cfg1": (4, 1.0), "1@cfg2": (1, 2.0), "4@cfg2": (4, 2.0)}


def start_host(comfy_dir: str, package_dir: str, data_dir: str):
    """ComfyUI with this package loaded in process, DATA_DIR's folders first in its model folders; the nodes."""
    os.chdir(comfy_dir)
    sys.path.insert(0, comfy_dir)
    sys.path.append(package_dir)
    from comfy.cli_args import args

    args.cpu = True
    args.use_pytorch_cross_attention = True  # as the server tests start ComfyUI
    import folder_paths

    import nodes

    custom = tempfile.mkdtemp(prefix="mcm-host-")
    os.symlink(os.path.abspath(package_dir), os.path.join(custom, "comfyui-mcm"))
    folder_paths.add_model_folder_path("custom_nodes", custom)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    for folder in ("text2video", "mcm", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(folder, os.path.join(os.path.abspath(data_dir), folder), is_default=True)
    return nodes.NODE_CLASS_MAPPINGS


def _result(res):
    return res[0] if isinstance(res, tuple) else res.result[0]


def contexts():
    """Two text embeddings (1, 77, 1024) as CONDITIONING: the prompt and the negative (random, fixed)."""
    import torch

    g = torch.Generator().manual_seed(3)
    cond, uncond = (torch.randn(1, 77, 1024, generator=g) for _ in range(2))
    return [[cond, {}]], [[uncond, {}]]


def noise():
    """The initial noise SamplerCustom draws for SEED, and the between-step noise sampler's draws (video layout)."""
    import comfy.k_diffusion.sampling as kds
    import comfy.sample
    import torch

    shape = torch.zeros(FRAMES, 4, SIZE // 8, SIZE // 8)
    ns = kds.default_noise_sampler(shape, seed=SEED)
    return to_video(comfy.sample.prepare_noise(shape, SEED)), lambda: to_video(ns(None, None))


def _recording(model):
    """A clone that records (batch, cond_or_uncond) of every UNet call; the values are untouched."""
    seen = []
    m = model.clone()

    def wrapper(apply_model, args):
        options = args["c"].get("transformer_options", {})
        seen.append((int(args["input"].shape[0]), list(options.get("cond_or_uncond", []))))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, seen


def sample(M, model, steps, cfg, pos, neg):
    latent = M["EmptyLatentImage"]().generate(SIZE, SIZE, FRAMES)[0]
    sampler = run_node(M["MCM_Sampler"])[0]
    sigmas = run_node(M["MCM_Scheduler"], model, steps, 1.0)[0]
    out = _result(M["SamplerCustom"]().sample(model, True, SEED, cfg, pos, neg, sampler, sigmas, latent))
    return out["samples"]


def check_loader_and_nodes(M, out):
    """The loader lists and builds the model; the selector hands the demo's defaults; the LoRA patches every layer."""
    loader = M["MCM_ModelScopeLoader"]
    listed = combo_options(loader.INPUT_TYPES()["required"]["unet_name"])
    out["listed"] = listed
    model = run_node(loader, UNET, "default")[0]
    inner = model.model
    out["model"] = {
        "network": type(inner.diffusion_model).__name__,
        "config": type(inner.model_config).__name__,
        "dtype": str(inner.get_dtype()),
        "parameters": sum(p.numel() for p in inner.diffusion_model.parameters()),
        "latent_scale": float(inner.latent_format.scale_factor),
        "model_sampling": type(model.get_model_object("model_sampling")).__name__,
    }
    selected, steps, cfg, info = run_node(M["MCM_StyleAdapter"], ADAPTER, AUTO_BETAS)
    out["selector"] = {
        "steps": steps,
        "cfg": cfg,
        "beta_schedule": selected.beta_schedule,
        "timestep_scaling": selected.timestep_scaling,
        "base": selected.adapter.meta.base,
        "layers": len(selected.adapter.layers),
        "temporal_layers": len(selected.adapter.temporal_layers()),
    }
    patched = run_node(M["MCM_LoraLoader"], model, selected, 1.0, 1.0, True, "auto")[0]
    out["patched_layers"] = len(patched.patches)
    out["patched_model_sampling"] = type(patched.get_model_object("model_sampling")).__name__
    motion_off = run_node(M["MCM_LoraLoader"], model, selected, 1.0, 0.0, True, "auto")[0]
    out["patched_layers_motion_off"] = len(motion_off.patches)
    return model, selected, patched


def check_sampling(M, patched, out):
    """Every case through SamplerCustom + MCM Scheduler + MCM Sampler; MCM KSampler once. Samples in UNet space."""
    import torch

    pos, neg = contexts()
    got, batches = {}, {}
    for name, (steps, cfg) in CASES.items():
        m, seen = _recording(patched)
        got[name] = patched.model.process_latent_in(sample(M, m, steps, cfg, pos, neg)).double()
        batches[name] = sorted({(b, tuple(c)) for b, c in seen})
    out["unet_calls"] = {k: [[b, list(c)] for b, c in v] for k, v in batches.items()}
    latent = M["EmptyLatentImage"]().generate(SIZE, SIZE, FRAMES)[0]
    ks = _result(run_node_raw(M["MCM_KSampler"], patched, SEED, 4, 2.0, pos, neg, latent, 1.0))["samples"]
    out["ksampler_equals_sampler_custom_4@cfg2"] = bool(
        torch.equal(patched.model.process_latent_in(ks).double(), got["4@cfg2"])
    )
    out["finite"] = all(bool(torch.isfinite(v).all()) for v in got.values())
    return got


def run_node_raw(cls, *args):
    """A node's output as returned (V3: an io.NodeOutput)."""
    if hasattr(cls, "GET_SCHEMA"):
        return cls.execute(*args)
    return getattr(cls(), cls.FUNCTION)(*args)


def check_text_and_vae(M, got, out):
    """Stock Load CLIP (stable_diffusion) reads SD 2.x's text encoder for it; stock Load VAE decodes its frames."""
    clip = M["CLIPLoader"]().load_clip(CLIP, "stable_diffusion")[0]
    cond = M["CLIPTextEncode"]().encode(clip, "an anime girl walking in the rain")[0]
    out["clip"] = {"shape": list(cond[0][0].shape)}
    vae = M["VAELoader"]().load_vae(VAE)[0]
    latent = {"samples": got["4@cfg1"].float() / 0.18215}
    images = M["VAEDecode"]().decode(vae, latent)[0]
    out["decoded"] = list(images.shape)
    del clip, vae


def references(data_dir, out):
    """diffusers: the UNet from the folder, the PEFT adapter merged, LCMScheduler (scaled_linear, scaling 4)."""
    import torch
    from check_temporal_norm import _hide_torchvision_shim

    _hide_torchvision_shim()
    from diffusers import UNet3DConditionModel
    from peft import PeftModel

    pos, neg = contexts()
    cond, uncond = pos[0][0], neg[0][0]
    net = {"unet": UNet3DConditionModel.from_pretrained(os.path.join(data_dir, "text2video", "ms-rand", "unet"))}

    def eps(x, t, emb):
        with torch.no_grad():
            return net["unet"].eval()(x, t, encoder_hidden_states=emb).sample

    ref = {}
    # without the adapter first: the reference the check must be able to tell apart
    start, renoise = noise()
    ref["no_adapter_1@cfg1"] = lcm_reference(
        lambda x, t: eps(x, t, cond), start, 1, renoise, beta_schedule="scaled_linear"
    )[-1].double()
    t0 = time.time()
    net["unet"] = PeftModel.from_pretrained(net["unet"], os.path.join(data_dir, "mcm", ADAPTER)).merge_and_unload()
    out["reference_merge_seconds"] = round(time.time() - t0, 1)
    for name, (steps, cfg) in CASES.items():
        start, renoise = noise()

        def guided(x, t, cfg=cfg):
            e_c = eps(x, t, cond)
            if cfg == 1.0:
                return e_c
            e_u = eps(x, t, uncond)
            return e_u + cfg * (e_c - e_u)

        ref[name] = lcm_reference(guided, start, steps, renoise, beta_schedule="scaled_linear")[-1].double()
    net.clear()
    gc.collect()
    return ref


def check_original_layout(M, data_dir, out):
    """The original release's layout (.pth, UNetSD names) loads to exactly the diffusers folder's tensors."""
    import torch
    from safetensors import safe_open

    model = run_node(M["MCM_ModelScopeLoader"], ORIGINAL, "default")[0]
    state = model.model.diffusion_model.state_dict()
    path = os.path.join(data_dir, "text2video", "ms-rand", "unet", "diffusion_pytorch_model.safetensors")
    different, count = [], 0
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        for key in keys:
            count += 1
            if key not in state or not torch.equal(f.get_tensor(key), state[key]):
                different.append(key)
    out["original_layout"] = {"tensors": count, "model_tensors": len(state), "different": different[:5]}
    del model, state
    gc.collect()


def check_errors(M, model, data_dir, sd_checkpoint, out):
    """Bad inputs to the loader and the LoRA loader: one clear line each; nothing written into the model folders."""
    import folder_paths

    errors = {}
    loader = M["MCM_ModelScopeLoader"]
    bad = tempfile.mkdtemp(prefix="mcm-bad-models-")
    folder_paths.add_model_folder_path("diffusion_models", bad, is_default=True)
    unet = os.path.join(data_dir, "text2video", "ms-rand", "unet", "diffusion_pytorch_model.safetensors")
    with open(unet, "rb") as src, open(os.path.join(bad, "truncated.safetensors"), "wb") as dst:
        dst.write(src.read(1 << 20))
    if sd_checkpoint:
        os.symlink(folder_paths.get_full_path("checkpoints", sd_checkpoint), os.path.join(bad, "an_sd15.safetensors"))
    before = sorted(os.listdir(bad)), sorted(os.listdir(os.path.join(data_dir, "text2video")))
    errors["truncated"] = error_of(lambda: run_node(loader, "truncated.safetensors", "default"))
    errors["not_listed"] = error_of(lambda: run_node(loader, "nothing_here.safetensors", "default"))
    if sd_checkpoint:
        errors["sd15_checkpoint"] = error_of(lambda: run_node(loader, "an_sd15.safetensors", "default"))
    after = sorted(os.listdir(bad)), sorted(os.listdir(os.path.join(data_dir, "text2video")))
    errors["nothing_written"] = before == after
    lora = M["MCM_LoraLoader"]
    ms = run_node(M["MCM_StyleAdapter"], ADAPTER, AUTO_BETAS)[0]
    sd = run_node(M["MCM_StyleAdapter"], SD_ADAPTER, AUTO_BETAS)[0]
    errors["animatediff_adapter_on_modelscope"] = error_of(lambda: run_node(lora, model, sd, 1.0, 1.0, True, "auto"))
    errors["per_frame_on_modelscope"] = error_of(lambda: run_node(lora, model, ms, 1.0, 1.0, True, "per_frame"))

    class MotionModel:  # what reaches motion_model from Load AnimateDiff Model, as far as the check needs
        def clone(self):
            return self

    errors["motion_model_on_modelscope"] = error_of(
        lambda: run_node(lora, model, ms, 1.0, 1.0, True, "auto", motion_model=MotionModel())
    )
    if sd_checkpoint:
        import comfy.model_management

        comfy.model_management.unload_all_models()
        sd_model = M["CheckpointLoaderSimple"]().load_checkpoint(sd_checkpoint)[0]
        errors["modelscope_adapter_on_sd15"] = error_of(lambda: run_node(lora, sd_model, ms, 1.0, 1.0, True, "auto"))
        del sd_model
    out["errors"] = errors


def check_trained(M, trained_dir: str, out):
    """The trainer's validation inputs through Load ModelScope T2V Model + MCM Style Adapter + Load MCM LoRA + MCM
    Scheduler and MCM Sampler (its noise sampler handed the validation's re-noising draws), cfg 1."""
    import comfy.sample
    import comfy.samplers
    import folder_paths
    import torch
    from safetensors.torch import load_file, save_file

    for folder in ("text2video", "mcm"):
        folder_paths.add_model_folder_path(folder, os.path.join(trained_dir, folder), is_default=True)
    model = run_node(M["MCM_ModelScopeLoader"], "tiny-ms/unet/diffusion_pytorch_model.safetensors", "default")[0]
    selected = run_node(M["MCM_StyleAdapter"], "tiny-ms.safetensors", AUTO_BETAS)[0]
    patched = run_node(M["MCM_LoraLoader"], model, selected, 1.0, 1.0, True, "auto")[0]
    inputs = load_file(os.path.join(trained_dir, "inputs.safetensors"))
    sampler = run_node(M["MCM_Sampler"])[0]
    frames = lambda video: video[0].transpose(0, 1).contiguous()  # noqa: E731  (1, c, f, h, w) -> (f, c, h, w)
    results = {}
    for key in sorted(k.removeprefix("z.") for k in inputs if k.startswith("z.")):
        steps, _ = key.split("-")
        draws = [inputs[f"renoise.{key}.{i}"] for i in range(int(steps) - 1)]
        ks = comfy.samplers.KSAMPLER(
            sampler.sampler_function, {**sampler.extra_options, "noise_sampler": lambda *_, d=draws: frames(d.pop(0))}
        )
        sigmas = run_node(M["MCM_Scheduler"], patched, int(steps), 1.0)[0]
        z = frames(inputs[f"z.{key}"])
        cond = [[inputs[f"cond.{key}"], {}]]
        latent = torch.zeros_like(z)
        samples = comfy.sample.sample_custom(patched, z, 1.0, ks, sigmas, cond, cond, latent, disable_pbar=True)
        video = patched.model.process_latent_in(samples).transpose(0, 1).unsqueeze(0)
        results[key] = video.contiguous()
    save_file(results, os.path.join(trained_dir, "comfyui.safetensors"))
    out["trained"] = {"samples": sorted(results), "layers": len(selected.adapter.layers)}


def main(comfy_dir: str, package_dir: str, data_dir: str, sd_checkpoint: str | None, trained: str | None) -> dict:
    M = start_host(comfy_dir, package_dir, data_dir)
    out = {"registered": sorted(k for k in M if k.startswith("MCM_")), "seconds": {}}
    state = {}

    def nodes_part():
        state["model"], _, state["patched"] = check_loader_and_nodes(M, out)

    def sampling_part():
        state["got"] = check_sampling(M, state["patched"], out)

    def text_vae_part():
        check_text_and_vae(M, state["got"], out)

    def errors_part():
        check_errors(M, state["model"], data_dir, sd_checkpoint, out)

    def free_part():
        import comfy.model_management

        state.pop("patched", None)
        state.pop("model", None)
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        gc.collect()

    def reference_part():
        ref = references(data_dir, out)
        got = state["got"]
        out["parity_rel_err"] = {name: rel_err(to_video(got[name]), ref[name]) for name in CASES}
        out["no_adapter_rel_err_1@cfg1"] = rel_err(to_video(got["1@cfg1"]), ref["no_adapter_1@cfg1"])

    def original_part():
        check_original_layout(M, data_dir, out)

    def trained_part():
        if trained:
            check_trained(M, trained, out)

    run_parts(
        [
            ("trained", trained_part),
            ("nodes", nodes_part),
            ("sampling", sampling_part),
            ("text_vae", text_vae_part),
            ("errors", errors_part),
            ("free", free_part),
            ("reference", reference_part),
            ("original", original_part),
        ],
        out,
    )
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    comfy_dir, package_dir, data_dir = sys.argv[1:4]
    sd_checkpoint = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    trained = sys.argv[5] if len(sys.argv) > 5 else None
    print(json.dumps(main(comfy_dir, package_dir, data_dir, sd_checkpoint, trained), default=str))
