"""Run inside a real ComfyUI (+ AnimateDiff-Evolved) install: load comfyui-mcm as a custom node and
check the sampling nodes. Prints one JSON line; the pytest wrapper is tests/test_host.py.

usage: python check_sampling_nodes.py COMFYUI_DIR PACKAGE_DIR CHECKPOINT MOTION_MODEL
Runs on the CPU. ComfyUI's root goes first on sys.path (its `nodes` module must win).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile


def main(comfy_dir: str, package_dir: str, ckpt: str, motion_model: str) -> dict:
    os.chdir(comfy_dir)
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths
    import nodes
    import torch

    # A folder holding only a link to this package, so ComfyUI loads nothing else from it.
    custom = tempfile.mkdtemp(prefix="mcm-host-")
    os.symlink(os.path.abspath(package_dir), os.path.join(custom, "comfyui-mcm"))
    folder_paths.add_model_folder_path("custom_nodes", custom)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    M = nodes.NODE_CLASS_MAPPINGS
    out = {"registered": sorted(k for k in M if k.startswith("MCM_"))}

    model, clip = M["CheckpointLoaderSimple"]().load_checkpoint(ckpt)[:2]
    label = next(c for c in M["MCM_ModelSampling"].INPUT_TYPES()["required"]["beta_schedule"][0] if c.startswith("sqrt_linear"))
    (patched,) = M["MCM_ModelSampling"]().patch(model, label, 4.0)
    ms = patched.get_model_object("model_sampling")
    out["model_sampling"] = type(ms).__name__
    out["input_model_sampling"] = type(model.get_model_object("model_sampling")).__name__
    sigmas = {n: M["MCM_Scheduler"]().get_sigmas(patched, n, 1.0)[0] for n in (1, 2, 4, 8)}
    out["unet_timesteps"] = {n: ms.timestep(s[:-1]).tolist() for n, s in sigmas.items()}
    out["v2v_timesteps"] = ms.timestep(M["MCM_Scheduler"]().get_sigmas(patched, 4, 0.5)[0][:-1]).tolist()

    mm = M["ADE_LoadAnimateDiffModel"]().load_motion_model(motion_model)[0]
    m_models = M["ADE_ApplyAnimateDiffModelSimple"]().apply_motion_model(mm)[0]
    ade = M["ADE_UseEvolvedSampling"]().use_evolved_sampling(patched, "use existing", m_models=m_models)[0]
    out["after_ade_use_existing"] = type(ade.get_model_object("model_sampling")).__name__

    # A whole 1-step and 2-step sample through SamplerCustom on 4 frames of 32 px.
    pos = M["CLIPTextEncode"]().encode(clip, "a red square moving left")[0]
    neg = M["CLIPTextEncode"]().encode(clip, "")[0]
    latent = M["EmptyLatentImage"]().generate(32, 32, 4)[0]
    sampler = M["MCM_Sampler"]().get_sampler()[0]
    results = {}
    for steps in (1, 2):
        res = M["SamplerCustom"]().sample(ade, True, 7, 1.0, pos, neg, sampler, sigmas[steps], latent)
        samples = res[0]["samples"] if isinstance(res, tuple) else res.result[0]["samples"]
        results[steps] = samples
    out["sample_shape"] = list(results[1].shape)
    out["sample_finite"] = bool(all(torch.isfinite(s).all() for s in results.values()))
    out["one_vs_two_steps_differ"] = bool((results[1] - results[2]).abs().max() > 1e-4)
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
