"""The shipped ControlNet, long-video, high-resolution and prompt-travel workflows in a real ComfyUI host, against
independent references. Prints one JSON line; the pytest wrapper is tests/test_host_controlnet.py.

usage: python check_controlnet.py COMFYUI_DIR PACKAGE_DIR CHECKPOINT MOTION_MODEL ADAPTER_DIR CONTROLNET

Each check loads an API workflow from workflows/api/ and evaluates it with the host's own node functions, called
as ComfyUI's executor calls them (inputs resolved link by link), shrunk to 64 px; the checkpoint is loaded once,
the motion model, adapter and ControlNet are the host's random full-size files and the official-layout adapter.
A workflow not shipped yet is replaced by a stand-in graph built here from the text-to-video template (reported
as "stand-in"). What is compared (errors are max |ours - reference| / max |reference| on the latents the UNet sees):

  controlnet  the pose template (ControlNetLoader + ControlNetApplyAdvanced on positive and negative) at 1 and
              4 steps, cfg 1 and cfg 2, against diffusers: UNetMotionModel with the PEFT adapter merged, plus
              ControlNetModel residuals (the same file's weights, one control frame per video frame, applied to
              cond and uncond), LCMScheduler ('linear' betas, timestep scaling 4), the same noise. A reference
              without the ControlNet is reported too (it must be far off).
  acn_context the long template (ACN loader + Apply Advanced ControlNet, ADE context options) on just enough
              frames for two windows, 1 step: diffusers run per window (its frames, its control frames) and
              fused with the template's fuse weights (sum w * eps / sum w).
  hires       the timesteps the MCM Scheduler nodes of the high-resolution template land on (host model sampling).
  travel      ADE Prompt Scheduling fed to SamplerCustom and to MCM KSampler: the text embedding the UNet receives
              for each frame, against each keyframe prompt encoded alone (CLIPTextEncode) and ADE's interpolation
              between keyframes (see expected_schedule; also the straight line, which it is not).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time

import check_nodes  # this folder is on sys.path (it is the script's)
import check_temporal_norm as tn
from api_graph import (
    APPLY,
    FRAMES,
    HIRES,
    LONG,
    POSE,
    SIZE,
    TRAVEL,
    Evaluator,
    Host,
    call_node,
    control_frames,
    control_source,
    load_workflow,
    nodes_of,
    noise,
    one_node,
    sample,
    sampler_node,
    seed_of,
    shrink,
)
from host_util import run_parts

# --------------------------------------------------------------------------------------------------------------
# diffusers references
# --------------------------------------------------------------------------------------------------------------


def diffusers_controlnet(path: str):
    """diffusers' ControlNetModel (SD1.5 config) holding the weights of the host's ControlNet file (diffusers keys)."""
    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    with torch.device("meta"):
        cn = ControlNetModel(cross_attention_dim=768)
    cn.load_state_dict({k: v.float() for k, v in load_file(path).items()}, strict=True, assign=True)
    return cn.eval()


class Reference:
    """eps of diffusers' UNetMotionModel (+ ControlNet residuals) for a video (1, c, f, h, w) and a text embedding."""

    def __init__(self, unet, controlnet):
        self.unet, self.controlnet = unet, controlnet

    def eps(self, x, t, emb, hint=None, strength=1.0):
        import torch

        frames = x.shape[2]
        per_frame = emb.repeat_interleave(frames, dim=0)  # the pipelines repeat the prompt once per frame
        kwargs = {}
        with torch.no_grad():
            if hint is not None:  # AnimateDiffControlNetPipeline: the 2-D ControlNet on the frames as a batch
                flat = x.permute(0, 2, 1, 3, 4).reshape(frames, x.shape[1], x.shape[3], x.shape[4])
                down, mid = self.controlnet(
                    flat, t, encoder_hidden_states=per_frame, controlnet_cond=hint, conditioning_scale=strength
                ).to_tuple()
                kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            return self.unet(x, t, encoder_hidden_states=per_frame, **kwargs).sample


def fuse_weights(method: str, length: int) -> list[float]:
    """The weight of each position of a context window (FreeNoise's pyramid: distance to the nearer edge + 1)."""
    if method == "flat":
        return [1.0] * length
    if method == "pyramid":
        return [float(min(i + 1, length - i)) for i in range(length)]
    raise ValueError(f"no reference for fuse_method {method!r} (flat and pyramid are modelled)")


def static_windows(frames: int, length: int, overlap: int) -> list[list[int]]:
    """Standard static windows: every (length - overlap) frames, the last one moved back to end on the last frame."""
    starts = list(range(0, max(frames - length, 0) + 1, length - overlap))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    return [list(range(s, s + length)) for s in starts]


# --------------------------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------------------------


def hint_tensor(ev: Evaluator, apply_id: str):
    """The control frames as the apply node received them (after the workflow's resize), diffusers layout."""
    return ev.inputs(apply_id)["image"].movedim(-1, 1).float()


def prepare_pose(host: Host, package_dir: str, out: dict):
    graph, source = load_workflow(package_dir, POSE)
    graph = shrink(graph, FRAMES)
    apply_id = one_node(graph, *APPLY)
    src = control_source(graph, apply_id)
    fixed = {src[0]: tuple(control_frames(FRAMES) if i == src[1] else None for i in range(src[1] + 1))}
    ev = host.evaluator(graph, fixed)
    sid = sampler_node(graph)
    pos, neg = ev.inputs(sid)["positive"], ev.inputs(sid)["negative"]
    out["controlnet_workflow"] = {"source": source, "apply": graph[apply_id]["class_type"], "frames": FRAMES}
    return {
        "graph": graph,
        "sampler": sid,
        "apply": apply_id,
        "hint": hint_tensor(ev, apply_id),
        "strength": float(ev.inputs(apply_id)["strength"]),
        "pos": pos[0][0].float(),
        "neg": neg[0][0].float(),
        "seed": seed_of(graph, sid),
        "fixed": fixed,
    }


def prepare_long(host: Host, package_dir: str, out: dict):
    graph, source = load_workflow(package_dir, LONG)
    ctx_id = one_node(graph, "ADE_StandardStaticContextOptions", "ADE_StandardUniformContextOptions")
    ctx = graph[ctx_id]["inputs"]
    if graph[ctx_id]["class_type"] != "ADE_StandardStaticContextOptions":
        raise ValueError(f"{graph[ctx_id]['class_type']}: only Standard Static context windows are modelled")
    length, overlap = ctx["context_length"], ctx["context_overlap"]
    frames = 2 * length - overlap  # two windows
    graph = shrink(graph, frames)
    apply_id = one_node(graph, *APPLY)
    src = control_source(graph, apply_id)
    fixed = {src[0]: tuple(control_frames(frames, seed=4) if i == src[1] else None for i in range(src[1] + 1))}
    ev = host.evaluator(graph, fixed)
    sid = sampler_node(graph)
    out["acn_workflow"] = {
        "source": source,
        "apply": graph[apply_id]["class_type"],
        "frames": frames,
        "context_length": length,
        "context_overlap": overlap,
        "fuse_method": ctx["fuse_method"],
    }
    return {
        "graph": graph,
        "sampler": sid,
        "hint": hint_tensor(ev, apply_id),
        "strength": float(ev.inputs(apply_id)["strength"]),
        "pos": ev.inputs(sid)["positive"][0][0].float(),
        "seed": seed_of(graph, sid),
        "fixed": fixed,
        "frames": frames,
        "windows": static_windows(frames, length, overlap),
        "weights": fuse_weights(ctx["fuse_method"], length),
    }


def references(host: Host, adapter_dir: str, cn_path: str, pose: dict, long: dict, out: dict) -> dict:
    import comfy.model_management as mmgmt
    import torch

    mmgmt.unload_all_models()  # ComfyUI's weights back to the checkpoint's before copying them
    t0 = time.time()
    motion = host.M["ADE_LoadAnimateDiffModel"]().load_motion_model(host.motion_name)[0]
    unet = tn.diffusers_unet(host.model, motion, os.path.join(adapter_dir, tn.ADAPTER))
    ref = Reference(unet, diffusers_controlnet(cn_path))
    out["reference_build_seconds"] = round(time.time() - t0, 1)
    r = {}
    hint, s = pose["hint"], pose["strength"]
    z, renoise = noise(pose["seed"], FRAMES)
    steps = tn.lcm_reference(lambda x, t: ref.eps(x, t, pose["pos"], hint, s), z, 4, renoise)
    r["cfg1_1"], r["cfg1_4"] = steps[0], steps[-1]

    def cfg2(x, t):
        e_c, e_u = ref.eps(x, t, pose["pos"], hint, s), ref.eps(x, t, pose["neg"], hint, s)
        return e_u + 2.0 * (e_c - e_u)

    z, renoise = noise(pose["seed"], FRAMES)
    steps = tn.lcm_reference(cfg2, z, 4, renoise)
    r["cfg2_1"], r["cfg2_4"] = steps[0], steps[-1]
    z, renoise = noise(pose["seed"], FRAMES)
    r["no_controlnet_1"] = tn.lcm_reference(lambda x, t: ref.eps(x, t, pose["pos"]), z, 1, renoise)[0]

    def windowed(x, t):
        total, count = torch.zeros_like(x), torch.zeros(1, 1, x.shape[2], 1, 1, dtype=x.dtype)
        w = torch.tensor(long["weights"], dtype=x.dtype).view(1, 1, -1, 1, 1)
        for idx in long["windows"]:  # the window's frames and control frames alone, then the weighted mean
            total[:, :, idx] += w * ref.eps(x[:, :, idx], t, long["pos"], long["hint"][idx], long["strength"])
            count[:, :, idx] += w
        return total / count

    z, renoise = noise(long["seed"], long["frames"])
    r["acn_context"] = tn.lcm_reference(windowed, z, 1, renoise)[0]
    out["reference_seconds"] = round(time.time() - t0, 1)
    return r


def check_controlnet(host: Host, pose: dict, ref: dict, out: dict):
    t0 = time.time()
    ev = host.evaluator(pose["graph"], pose["fixed"])
    errs = {}
    for cfg in (1.0, 2.0):
        for steps in (1, 4):
            got, _ = sample(ev, pose["sampler"], steps, cfg)
            errs[f"cfg{cfg:g}_{steps}"] = tn.rel_err(tn.to_video(got), ref[f"cfg{cfg:g}_{steps}"])
            if cfg == 1.0 and steps == 1:
                errs["vs_no_controlnet_1"] = tn.rel_err(tn.to_video(got), ref["no_controlnet_1"])
    out["controlnet_parity"] = errs
    out.setdefault("seconds", {})["controlnet_comfy"] = round(time.time() - t0, 1)


def check_acn_context(host: Host, long: dict, ref: dict, out: dict):
    t0 = time.time()
    ev = host.evaluator(long["graph"], long["fixed"])
    sid = long["sampler"]
    model = ev.inputs(sid)["model"]
    mm = model.get_additional_models_with_key("ADE") if hasattr(model, "get_additional_models_with_key") else []
    seen, handles = [], []
    for patcher in mm:  # the windows the motion module ran on (ADE's sub_idxs)
        first = patcher.model.down_blocks[0].motion_modules[0]
        handles.append(first.register_forward_pre_hook(lambda mod, args: seen.append(mod.sub_idxs)))
    try:
        got, _ = sample(ev, sid, 1, 1.0)
    finally:
        for h in handles:
            h.remove()
    out["acn_context_parity"] = tn.rel_err(tn.to_video(got), ref["acn_context"])
    out["acn_windows"] = [list(s) if s is not None else None for s in seen]
    out["acn_reference_windows"] = long["windows"]
    out.setdefault("seconds", {})["acn_comfy"] = round(time.time() - t0, 1)


def check_hires(host: Host, package_dir: str, out: dict):
    graph, source = load_workflow(package_dir, HIRES)
    ev = host.evaluator(shrink(graph, FRAMES))
    passes = []
    for nid in nodes_of(graph, "MCM_Scheduler", "MCM_KSampler"):
        inputs = graph[nid]["inputs"]  # only the model is evaluated (a second pass's latent would sample the first)
        model = ev.output(*inputs["model"])
        ms = model.get_model_object("model_sampling")
        sigmas = call_node(host.M["MCM_Scheduler"], {"model": model, **_pick(inputs, "steps", "denoise")})[0]
        passes.append(
            {
                "node": nid,
                "steps": inputs["steps"],
                "denoise": inputs["denoise"],
                "timesteps": ms.timestep(sigmas[:-1]).tolist(),
                "model_sampling": type(ms).__name__,
            }
        )
    out["hires"] = {"source": source, "passes": passes}


def _pick(d: dict, *keys: str) -> dict:
    return {k: d[k] for k in keys}


KEYFRAME = re.compile(r'"?(\d+)(:?)"?\s*[:=]\s*"((?:[^"\\]|\\.)*)"')


def keyframes(prompts: str) -> list[tuple[int, bool, str]]:
    """(frame, hold, prompt) of a schedule written with whole-number frames ('"0": "a", "8": "b"' or '0 = "a"');
    anything else is refused (no expectation is modelled for it)."""
    found = [(int(i), hold == ":", text) for i, hold, text in KEYFRAME.findall(prompts)]
    rest = KEYFRAME.sub("", prompts).replace(",", "").strip()
    if not found or rest:
        raise ValueError(f"prompt schedule not modelled by this check (whole-number keyframes only): {prompts!r}")
    return sorted(found)


def expected_schedule(enc: dict, keys: list[tuple[int, bool, str]], frames: int, straight: bool = False):
    """Per frame: a keyframe's own encoding; after the last keyframe, the last; on a frame k steps past keyframe a
    (n frames before keyframe b, unless a holds), the mix (1 - p) * b + p * a with p = prod_{j=1..k} (1 - j / n).

    That product is what ADE's Prompt Scheduling computes: it moves each frame from the *previous frame's* mix
    towards b by j / n (a lerp of lerps), so the mix reaches b sooner than a straight line would (a straight
    line, p = 1 - k / n, agrees on the first frame after a keyframe only)."""
    import math

    import torch

    rows = []
    for f in range(frames):
        before = [k for k in keys if k[0] <= f][-1]
        after = [k for k in keys if k[0] > f]
        if not after or before[1] or before[0] == f:
            rows.append(enc[before[2]])
            continue
        (f0, _, a), (f1, _, b) = before, after[0]
        k, n = f - f0, f1 - f0
        p = 1 - k / n if straight else math.prod(1 - j / n for j in range(1, k + 1))
        rows.append(p * enc[a] + (1 - p) * enc[b])
    return torch.cat(rows, dim=0)


def received_conds(host: Host, run):
    """The cond half of the text embedding (``context``) of every UNet call during ``run()``: a list of
    (frames, tokens, width) tensors, one per call."""
    seen = []
    unet = host.model.model.diffusion_model

    def hook(module, args, kwargs):
        ctx, order = kwargs["context"], kwargs["transformer_options"].get("cond_or_uncond", [0])
        chunk = ctx.shape[0] // len(order)
        seen.append(ctx[order.index(0) * chunk : (order.index(0) + 1) * chunk].detach().double().clone())

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


def check_travel(host: Host, package_dir: str, out: dict):
    graph, source = load_workflow(package_dir, TRAVEL)
    sched_id = one_node(graph, "ADE_PromptScheduling")
    frames = graph[sched_id]["inputs"].get("max_length") or max(
        n["inputs"]["batch_size"] for n in graph.values() if n["class_type"] == "EmptyLatentImage"
    )
    graph = shrink(graph, frames)
    extra = [k for k in ("prepend_text", "append_text", "values_replace") if graph[sched_id]["inputs"].get(k)]
    if extra or graph[sched_id]["inputs"].get("tensor_interp", "lerp") != "lerp":
        raise ValueError(f"ADE_PromptScheduling {extra or 'slerp'}: not modelled by this check (lerp keyframes only)")
    keys = keyframes(graph[sched_id]["inputs"]["prompts"])
    ev = host.evaluator(graph)
    sid = sampler_node(graph)
    if graph[sid]["inputs"]["positive"] != [sched_id, 0]:
        raise ValueError(f"the sampler's positive input is {graph[sid]['inputs']['positive']}, not Prompt Scheduling")
    enc = {
        text: host.M["CLIPTextEncode"]().encode(host.clip, text)[0][0][0].double() for _, _, text in keys
    }  # each prompt alone
    expected = expected_schedule(enc, keys, frames)
    inputs = ev.inputs(sid)
    results = {"source": source, "frames": frames, "keyframes": [[f, h] for f, h, _ in keys]}
    latent = host.M["EmptyLatentImage"]().generate(SIZE, SIZE, frames)[0]

    shared = {**_pick(inputs, "model", "positive", "negative"), "cfg": 1.0, "latent_image": latent}

    def samplercustom():  # SamplerCustom + MCM Scheduler (1 step) + MCM Sampler
        sigmas = call_node(host.M["MCM_Scheduler"], {"model": inputs["model"], "steps": 1, "denoise": 1.0})[0]
        sampler = call_node(host.M["MCM_Sampler"], {})[0]
        call_node(
            host.M["SamplerCustom"],
            {**shared, "add_noise": True, "noise_seed": 1, "sampler": sampler, "sigmas": sigmas},
        )

    def ksampler():
        call_node(host.M["MCM_KSampler"], {**shared, "seed": 1, "steps": 1, "denoise": 1.0})

    scale = expected.abs().max()
    for name, run in (("samplercustom", samplercustom), ("mcm_ksampler", ksampler)):
        calls = received_conds(host, run)
        results[name] = {
            "calls": len(calls),
            "shapes": sorted({tuple(c.shape) for c in calls}),
            "max_rel_err": max(float((c - expected).abs().max() / scale) for c in calls),
            "per_frame_rel_err": [float((calls[0][f] - expected[f]).abs().max() / scale) for f in range(frames)],
        }
    a, b = enc[keys[0][2]], enc[keys[-1][2]]
    results["prompts_differ"] = float((a - b).abs().max() / scale)
    straight = expected_schedule(enc, keys, frames, straight=True)
    results["vs_straight_line"] = float((calls[0] - straight).abs().max() / scale)
    out["travel"] = results


def main(comfy_dir: str, package_dir: str, ckpt: str, motion_model: str, adapter_dir: str, controlnet: str) -> dict:
    M, model, clip, _, _ = check_nodes.start_host(comfy_dir, package_dir, ckpt, adapter_dir)
    import folder_paths

    host = Host(M, model, clip, motion_model, controlnet)
    cn_path = folder_paths.get_full_path("controlnet", controlnet)
    out, state = {}, {}

    def prepare():
        state["pose"] = prepare_pose(host, package_dir, out)
        state["long"] = prepare_long(host, package_dir, out)
        state["ref"] = references(host, adapter_dir, cn_path, state["pose"], state["long"], out)

    run_parts(
        [
            ("hires", lambda: check_hires(host, package_dir, out)),
            ("travel", lambda: check_travel(host, package_dir, out)),
            ("reference", prepare),
            ("controlnet", lambda: check_controlnet(host, state["pose"], state["ref"], out)),
            ("acn_context", lambda: check_acn_context(host, state["long"], state["ref"], out)),
        ],
        out,
    )
    return out


if __name__ == "__main__":
    result = main(*sys.argv[1:7])
    print(json.dumps(result, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
