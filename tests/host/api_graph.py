"""Shipped API workflows evaluated in a real ComfyUI host by its own node functions, as ComfyUI's executor
calls them (inputs resolved link by link, each node once), for checks that compare a workflow with a reference
(check_controlnet.py). A workflow not shipped yet is replaced by a stand-in graph built from the text-to-video
template. Runs in the host's Python (this folder is on sys.path)."""

from __future__ import annotations

import copy
import json
import os

import check_temporal_norm as tn
from host_util import run_node

SIZE, FRAMES = 64, 8
POSE, LONG, HIRES, TRAVEL = "mcm_pose_gen2_4step", "mcm_pose_long_acn", "mcm_hires_gen2_4step", "mcm_prompt_travel_gen2"
APPLY = ("ControlNetApplyAdvanced", "ACN_AdvancedControlNetApply_v2")
IMAGE_OPS = ("ImageScale", "ImageScaleBy", "ImageScaleToTotalPixels", "ImageUpscaleWithModel")


# --------------------------------------------------------------------------------------------------------------
# the workflows: shipped, or a stand-in built from the text-to-video template
# --------------------------------------------------------------------------------------------------------------


def _base(package_dir: str, name: str = "mcm_t2v_gen2_4step") -> dict:
    with open(os.path.join(package_dir, "workflows", "api", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def _splice_controlnet(g: dict, sampler: str, loader: dict, apply_class: str) -> dict:
    """A control video (LoadVideo -> GetVideoComponents -> ImageScale) applied to the sampler's conditioning."""
    pos, neg = g[sampler]["inputs"]["positive"], g[sampler]["inputs"]["negative"]
    g["50"] = loader
    g["51"] = {"class_type": "LoadVideo", "inputs": {"file": "pose.mp4"}}
    g["52"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["51", 0]}}
    g["53"] = {
        "class_type": "ImageScale",
        "inputs": {"upscale_method": "lanczos", "width": 512, "height": 512, "crop": "center", "image": ["52", 0]},
    }
    g["54"] = {
        "class_type": apply_class,
        "inputs": {
            "positive": pos,
            "negative": neg,
            "control_net": ["50", 0],
            "image": ["53", 0],
            "strength": 1.0,
            "start_percent": 0.0,
            "end_percent": 1.0,
        },
    }
    g[sampler]["inputs"]["positive"], g[sampler]["inputs"]["negative"] = ["54", 0], ["54", 1]
    return g


def stand_in(package_dir: str, name: str) -> dict:
    if name == POSE:
        loader = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_v11p_sd15_openpose.pth"}}
        return _splice_controlnet(_base(package_dir), "12", loader, "ControlNetApplyAdvanced")
    if name == LONG:
        loader = {"class_type": "ACN_ControlNetLoaderAdvanced", "inputs": {"cnet": "control_v11p_sd15_openpose.pth"}}
        return _splice_controlnet(_base(package_dir, "mcm_long_video_context"), "13", loader, APPLY[1])
    g = _base(package_dir)
    if name == HIRES:
        g["20"] = {"class_type": "LatentUpscaleBy", "inputs": {"upscale_method": "bislerp", "scale_by": 1.5}}
        g["20"]["inputs"]["samples"] = ["12", 0]
        g["21"] = {"class_type": "MCM_Scheduler", "inputs": {"steps": 4, "denoise": 0.5, "model": ["6", 0]}}
        return g
    if name == TRAVEL:
        prompts = '"0": "a red panda eating bamboo in a forest",\n"8": "a red panda sleeping in the snow"'
        g["7"] = {"class_type": "ADE_PromptScheduling", "inputs": {"prompts": prompts, "clip": ["1", 1]}}
        g["7"]["inputs"]["max_length"] = 16
        return g
    raise KeyError(name)


def load_workflow(package_dir: str, name: str) -> tuple[dict, str]:
    path = os.path.join(package_dir, "workflows", "api", f"{name}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f), "shipped"
    return stand_in(package_dir, name), "stand-in"


def nodes_of(graph: dict, *classes: str) -> list[str]:
    return sorted((k for k, v in graph.items() if v["class_type"] in classes), key=int)  # API node ids are numbers


def one_node(graph: dict, *classes: str) -> str:
    found = nodes_of(graph, *classes)
    if len(found) != 1:
        raise ValueError(f"expected one node of {classes} in the workflow, found {found}")
    return found[0]


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def control_source(graph: dict, apply_id: str) -> tuple[str, int]:
    """The link that brings the control frames: the apply node's image input, followed back through image
    resizing nodes to where the frames come from (a video loader's components)."""
    link = graph[apply_id]["inputs"]["image"]
    while graph[link[0]]["class_type"] in IMAGE_OPS:
        link = graph[link[0]]["inputs"]["image"]
    return tuple(link)


def shrink(graph: dict, frames: int) -> dict:
    """The workflow at 64 px and ``frames`` frames; every image resize to 64 px."""
    g = copy.deepcopy(graph)
    for node in g.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "ADE_EmptyLatentImageLarge"):
            inputs.update(width=SIZE, height=SIZE, batch_size=frames)
        elif node["class_type"] == "ImageScale":
            inputs.update(width=SIZE, height=SIZE)
        elif node["class_type"] == "ADE_PromptScheduling" and inputs.get("max_length"):
            inputs["max_length"] = frames
    return g


# --------------------------------------------------------------------------------------------------------------
# evaluating an API workflow with the host's node functions
# --------------------------------------------------------------------------------------------------------------


def call_node(cls, kwargs: dict) -> tuple:
    out = run_node(cls, **kwargs)
    if len(out) == 1 and isinstance(out[0], dict) and "result" in out[0]:  # a V1 node returning {"ui", "result"}
        return tuple(out[0]["result"])
    return out


class Evaluator:
    """Evaluates the nodes a wanted output depends on, once each; ``fixed`` gives some nodes' outputs."""

    def __init__(self, M, graph: dict, fixed: dict):
        self.M, self.graph, self.memo = M, graph, dict(fixed)

    def inputs(self, node_id: str) -> dict:
        return {k: (self.output(*v) if _is_link(v) else v) for k, v in self.graph[node_id]["inputs"].items()}

    def output(self, node_id: str, slot: int = 0):
        if node_id not in self.memo:
            self.memo[node_id] = call_node(self.M[self.graph[node_id]["class_type"]], self.inputs(node_id))
        return self.memo[node_id][slot]


class Host:
    def __init__(self, M, model, clip, motion_name: str, controlnet: str):
        self.M, self.model, self.clip, self.motion_name, self.controlnet = M, model, clip, motion_name, controlnet

    def evaluator(self, graph: dict, fixed: dict | None = None) -> Evaluator:
        """Model files named in the workflow become the host's random ones; the checkpoint is the one loaded."""
        g = copy.deepcopy(graph)
        for node in g.values():
            inputs = node["inputs"]
            if node["class_type"] == "ADE_LoadAnimateDiffModel":
                inputs["model_name"] = self.motion_name
            elif node["class_type"] == "ControlNetLoader":
                inputs["control_net_name"] = self.controlnet
            elif node["class_type"] == "ACN_ControlNetLoaderAdvanced":
                inputs["cnet"] = self.controlnet
            elif node["class_type"] == "MCM_StyleAdapter":
                inputs["adapter"] = tn.ADAPTER
        base = dict.fromkeys(nodes_of(g, "CheckpointLoaderSimple"), (self.model, self.clip, None))
        return Evaluator(self.M, g, {**base, **(fixed or {})})


def sampler_node(graph: dict) -> str:
    return one_node(graph, "SamplerCustom", "MCM_KSampler")


def sample(ev: Evaluator, sampler_id: str, steps: int | None = None, cfg: float | None = None):
    """The sampler node's output (UNet latent space, float64) with steps and cfg set; (latent, model, inputs)."""
    g = ev.graph
    node = g[sampler_id]
    inputs = ev.inputs(sampler_id)
    if cfg is not None:
        inputs["cfg"] = cfg
    if steps is not None:
        if node["class_type"] == "MCM_KSampler":
            inputs["steps"] = steps
        else:
            sched = g[node["inputs"]["sigmas"][0]]
            inputs["sigmas"] = call_node(
                ev.M["MCM_Scheduler"], {**ev.inputs(node["inputs"]["sigmas"][0]), "steps": steps}
            )[0]
            assert sched["class_type"] == "MCM_Scheduler", sched["class_type"]
    out = call_node(ev.M[node["class_type"]], inputs)[0]
    return inputs["model"].model.process_latent_in(out["samples"]).double(), inputs


def seed_of(graph: dict, sampler_id: str) -> int:
    inputs = graph[sampler_id]["inputs"]
    return inputs["noise_seed"] if "noise_seed" in inputs else inputs["seed"]


def noise(seed: int, frames: int):
    """The initial noise the samplers draw for ``seed`` and their between-step noise, as diffusers videos."""
    import comfy.k_diffusion.sampling as kds
    import comfy.sample
    import torch

    shape = torch.zeros(frames, 4, SIZE // 8, SIZE // 8)
    ns = kds.default_noise_sampler(shape, seed=seed)
    return tn.to_video(comfy.sample.prepare_noise(shape, seed)), lambda: tn.to_video(ns(None, None))


def control_frames(frames: int, seed: int = 3):
    """Random control frames (ComfyUI IMAGE: frames, h, w, 3 in [0, 1]), larger than 64 px (the workflow resizes)."""
    import torch

    return torch.rand(frames, 96, 80, 3, generator=torch.Generator().manual_seed(seed))
