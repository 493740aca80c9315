"""Build the shipped ComfyUI workflows from one definition each (stdlib only).

usage: python workflows/build_workflows.py [OUT_DIR]

For every workflow in WORKFLOWS this writes, under OUT_DIR (default: this folder's parent, the repository):
  workflows/<name>.json          UI format (what ComfyUI's Save / Export writes; drag it onto the canvas)
  workflows/api/<name>.json      API format (what POST /prompt takes; for scripts and headless runs)
ComfyUI's template browser lists the UI files of workflows/ (it globs `<pack>/workflows/*.json`, not subfolders,
so the API files are not listed); nothing else is written, so each template is listed once.

Each workflow is a small graph spec (nodes, widget values by name, links by input name); the widget order,
link slots and types come from NODE_SCHEMAS below, which mirror the nodes' INPUT_TYPES. The real-host test
(tests/host/run_workflows.py) checks the written files against a running ComfyUI's /object_info.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

# Model files named in the workflows (the usual public file names; users pick theirs in the dropdowns).
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
MOTION_MODULE = "mm_sd15_v2.safetensors"
ADAPTER = "animatediff-webvid.safetensors"
INPUT_VIDEO = "mcm_input_video.mp4"
INPUT_IMAGE = "mcm_input_image.png"
#: ControlNet v1.1 for SD1.5 (the public fp16 safetensors) and the preprocessed videos that drive them.
CONTROLNETS = {
    "pose": ("control_v11p_sd15_openpose_fp16.safetensors", "mcm_pose_video.mp4"),
    "depth": ("control_v11f1p_sd15_depth_fp16.safetensors", "mcm_depth_video.mp4"),
}
#: ADE prompt travel: the prompt changes at frame 8 of 16 (ADE interpolates between keyframes).
TRAVEL_PROMPTS = (
    '"0": "a red panda eating bamboo in a sunlit spring forest, high quality",\n'
    '"8": "a red panda eating bamboo in a snowy winter forest, falling snow, high quality"'
)
#: ModelScope T2V (text-to-video-ms-1.7b): the UNet, the text encoder (SD 2.x's OpenCLIP-H) and the VAE (the SD
#: KL-f8 VAE) of its diffusers repository, each one file renamed in its model folder (a UNet file not named like
#: diffusers' weights takes its shape from its tensors; the whole unet/ folder works as well).
MODELSCOPE_UNET = "text-to-video-ms-1.7b_unet.safetensors"
MODELSCOPE_CLIP = "text-to-video-ms-1.7b_text_encoder.safetensors"
MODELSCOPE_VAE = "text-to-video-ms-1.7b_vae.safetensors"
MODELSCOPE_ADAPTER = "modelscopet2v-anime.safetensors"
MODELSCOPE_REPO = "ali-vilab/text-to-video-ms-1.7b"
MODELSCOPE_POSITIVE = "an anime girl with long silver hair walking through a field of flowers, wind, high quality"
POSITIVE = "a red panda eating bamboo in a sunlit forest, gentle wind in the leaves, high quality"
NEGATIVE = "blurry, low quality, watermark, text"
SEED = 42
#: Load MCM LoRA: full strength, MCM model sampling, and the motion-module normalisation the adapter was
#: trained with (auto: from its metadata; the official adapters: frames, as diffusers).
LORA_WIDGETS = {"strength_model": 1.0, "strength_motion": 1.0, "mcm_sampling": True, "temporal_norm": "auto"}
FPS = 8.0  # the frame rate AnimateDiff and MCM clips are made for
#: Save Video: an H.264 mp4. ComfyUI 0.8 has plain combos format [auto, mp4] and codec [auto, h264]; 0.33 makes
#: format a dynamic combo with a nested codec and keeps a hidden top-level codec, so these values load and run in
#: both (its frontend appends its own defaults for the inputs it added).
VIDEO_FORMAT = {"format": "mp4", "codec": "h264"}

#: The model files the workflows name: widget value -> (model folder, download URL). to_ui writes the entries a node's
#: widgets name into that node's ``properties.models``, the manifest ComfyUI's frontend reads when a workflow is
#: loaded: it lists the files missing from their folder and offers their URL (1.35 offers only .safetensors / .sft
#: files from huggingface.co or civitai.com; 1.49 also .ckpt / .pt / .pth). The folder is the one the node lists
#: the widget's choices from. A new model file in a workflow needs a row here.
HF = "https://huggingface.co"
MODEL_FILES: dict[str, tuple[str, str]] = {
    # Stable Diffusion 1.5 (the stable-diffusion-v1-5 organisation's copy of the original release)
    CHECKPOINT: ("checkpoints", f"{HF}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/{CHECKPOINT}"),
    # AnimateDiff motion module v1-5-2 as fp16 safetensors (the official release, guoyww/animatediff, is a
    # pickled mm_sd_v15_v2.ckpt, which the 1.35 frontend does not offer); ADE's README points to this copy
    MOTION_MODULE: ("animatediff_models", f"{HF}/conrevo/AnimateDiff-A1111/resolve/main/motion_module/{MOTION_MODULE}"),
    # the official MCM adapter's weights as one file: with no adapter_config.json beside it the loader scales each
    # layer by 1 (alpha = rank), which is what the official training's LoRA config gives (r 64, lora_alpha 64: the
    # training code's defaults, which its scripts do not override)
    ADAPTER: ("mcm", f"{HF}/yhzhai/mcm/resolve/main/animatediff-webvid/adapter_model.safetensors"),
    # ModelScope T2V: the diffusers repository's UNet, text encoder and VAE; the official MCM style adapter's
    # weights as one file (alpha = rank, as for the AnimateDiff adapter above)
    MODELSCOPE_UNET: ("text2video", f"{HF}/{MODELSCOPE_REPO}/resolve/main/unet/diffusion_pytorch_model.safetensors"),
    MODELSCOPE_CLIP: ("text_encoders", f"{HF}/{MODELSCOPE_REPO}/resolve/main/text_encoder/model.safetensors"),
    MODELSCOPE_VAE: ("vae", f"{HF}/{MODELSCOPE_REPO}/resolve/main/vae/diffusion_pytorch_model.safetensors"),
    MODELSCOPE_ADAPTER: ("mcm", f"{HF}/yhzhai/mcm/resolve/main/modelscopet2v-anime/adapter_model.safetensors"),
    # ControlNet v1.1 for SD1.5, fp16 safetensors
    "control_v11p_sd15_openpose_fp16.safetensors": (
        "controlnet",
        f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11p_sd15_openpose_fp16.safetensors",
    ),
    "control_v11f1p_sd15_depth_fp16.safetensors": (
        "controlnet",
        f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11f1p_sd15_depth_fp16.safetensors",
    ),
}

# ---------------------------------------------------------------------------------------------------------------
# Node schemas: link inputs (name, type) in slot order, widgets (name, kind) in widget order, outputs (name, type).
# Widget kinds: INT, FLOAT, STRING, BOOLEAN, COMBO; SEED = INT followed by the frontend's control_after_generate
# value; UPLOAD = COMBO followed by the frontend's upload-button value.
# ---------------------------------------------------------------------------------------------------------------
NODE_SCHEMAS: dict[str, dict] = {
    "CheckpointLoaderSimple": {
        "title": "Load Checkpoint",
        "inputs": [],
        "widgets": [("ckpt_name", "COMBO")],
        "outputs": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    },
    "ADE_LoadAnimateDiffModel": {
        "title": "Load AnimateDiff Model 🎭🅐🅓②",
        "inputs": [("ad_settings", "AD_SETTINGS")],
        "widgets": [("model_name", "COMBO")],
        "outputs": [("MOTION_MODEL", "MOTION_MODEL_ADE")],
    },
    "ADE_ApplyAnimateDiffModelSimple": {
        "title": "Apply AnimateDiff Model 🎭🅐🅓②",
        "inputs": [
            ("motion_model", "MOTION_MODEL_ADE"),
            ("motion_lora", "MOTION_LORA"),
            ("scale_multival", "MULTIVAL"),
            ("effect_multival", "MULTIVAL"),
            ("ad_keyframes", "AD_KEYFRAMES"),
            ("per_block", "PER_BLOCK"),
        ],
        "widgets": [],
        "outputs": [("M_MODELS", "M_MODELS")],
    },
    "ADE_UseEvolvedSampling": {
        "title": "Use Evolved Sampling 🎭🅐🅓②",
        "inputs": [
            ("model", "MODEL"),
            ("m_models", "M_MODELS"),
            ("context_options", "CONTEXT_OPTIONS"),
            ("sample_settings", "SAMPLE_SETTINGS"),
        ],
        "widgets": [("beta_schedule", "COMBO")],
        "outputs": [("MODEL", "MODEL")],
    },
    "ADE_AnimateDiffLoaderGen1": {
        "title": "AnimateDiff Loader 🎭🅐🅓①",
        "inputs": [
            ("model", "MODEL"),
            ("context_options", "CONTEXT_OPTIONS"),
            ("motion_lora", "MOTION_LORA"),
            ("ad_settings", "AD_SETTINGS"),
            ("ad_keyframes", "AD_KEYFRAMES"),
            ("sample_settings", "SAMPLE_SETTINGS"),
            ("scale_multival", "MULTIVAL"),
            ("effect_multival", "MULTIVAL"),
            ("per_block", "PER_BLOCK"),
        ],
        "widgets": [("model_name", "COMBO"), ("beta_schedule", "COMBO")],
        "outputs": [("MODEL", "MODEL")],
    },
    "ADE_StandardStaticContextOptions": {
        "title": "Context Options◆Standard Static 🎭🅐🅓",
        "inputs": [("prev_context", "CONTEXT_OPTIONS"), ("view_opts", "VIEW_OPTS")],
        "widgets": [
            ("context_length", "INT"),
            ("context_overlap", "INT"),
            ("fuse_method", "COMBO"),
            ("use_on_equal_length", "BOOLEAN"),
            ("start_percent", "FLOAT"),
            ("guarantee_steps", "INT"),
        ],
        "outputs": [("CONTEXT_OPTS", "CONTEXT_OPTIONS")],
    },
    "CLIPTextEncode": {
        "title": "CLIP Text Encode (Prompt)",
        "inputs": [("clip", "CLIP")],
        "widgets": [("text", "STRING")],
        "outputs": [("CONDITIONING", "CONDITIONING")],
    },
    "EmptyLatentImage": {
        "title": "Empty Latent Image",
        "inputs": [],
        "widgets": [("width", "INT"), ("height", "INT"), ("batch_size", "INT")],
        "outputs": [("LATENT", "LATENT")],
    },
    "SamplerCustom": {
        "title": "SamplerCustom",
        "inputs": [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("sampler", "SAMPLER"),
            ("sigmas", "SIGMAS"),
            ("latent_image", "LATENT"),
        ],
        "widgets": [("add_noise", "BOOLEAN"), ("noise_seed", "SEED"), ("cfg", "FLOAT")],
        "outputs": [("output", "LATENT"), ("denoised_output", "LATENT")],
    },
    "VAEDecode": {
        "title": "VAE Decode",
        "inputs": [("samples", "LATENT"), ("vae", "VAE")],
        "widgets": [],
        "outputs": [("IMAGE", "IMAGE")],
    },
    "VAEEncode": {
        "title": "VAE Encode",
        "inputs": [("pixels", "IMAGE"), ("vae", "VAE")],
        "widgets": [],
        "outputs": [("LATENT", "LATENT")],
    },
    "LoadVideo": {
        "title": "Load Video",
        "inputs": [],
        "widgets": [("file", "UPLOAD")],
        "outputs": [("VIDEO", "VIDEO")],
    },
    "GetVideoComponents": {
        "title": "Get Video Components",
        "inputs": [("video", "VIDEO")],
        "widgets": [],
        "outputs": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
    },
    "ImageScale": {
        "title": "Upscale Image",
        "inputs": [("image", "IMAGE")],
        "widgets": [("upscale_method", "COMBO"), ("width", "INT"), ("height", "INT"), ("crop", "COMBO")],
        "outputs": [("IMAGE", "IMAGE")],
    },
    "CreateVideo": {
        "title": "Create Video",
        "inputs": [("images", "IMAGE"), ("audio", "AUDIO")],
        "widgets": [("fps", "FLOAT")],
        "outputs": [("VIDEO", "VIDEO")],
    },
    "SaveVideo": {
        "title": "Save Video",
        "inputs": [("video", "VIDEO")],
        "widgets": [("filename_prefix", "STRING"), ("format", "COMBO"), ("codec", "COMBO")],
        "outputs": [],
    },
    "LoadImage": {
        "title": "Load Image",
        "inputs": [],
        "widgets": [("image", "UPLOAD")],
        "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    },
    "RepeatImageBatch": {
        "title": "Repeat Image Batch",
        "inputs": [("image", "IMAGE")],
        "widgets": [("amount", "INT")],
        "outputs": [("IMAGE", "IMAGE")],
    },
    "LatentUpscaleBy": {
        "title": "Upscale Latent By",
        "inputs": [("samples", "LATENT")],
        "widgets": [("upscale_method", "COMBO"), ("scale_by", "FLOAT")],
        "outputs": [("LATENT", "LATENT")],
    },
    "ControlNetLoader": {
        "title": "Load ControlNet Model",
        "inputs": [],
        "widgets": [("control_net_name", "COMBO")],
        "outputs": [("CONTROL_NET", "CONTROL_NET")],
    },
    "ControlNetApplyAdvanced": {
        "title": "Apply ControlNet",
        "inputs": [
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("control_net", "CONTROL_NET"),
            ("image", "IMAGE"),
            ("vae", "VAE"),
        ],
        "widgets": [("strength", "FLOAT"), ("start_percent", "FLOAT"), ("end_percent", "FLOAT")],
        "outputs": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    },
    "ACN_ControlNetLoaderAdvanced": {
        "title": "Load Advanced ControlNet Model 🛂🅐🅒🅝",
        "inputs": [("_tk_opt", "TIMESTEP_KEYFRAME")],
        "widgets": [("cnet", "COMBO")],
        "outputs": [("CONTROL_NET", "CONTROL_NET")],
    },
    "ACN_AdvancedControlNetApply_v2": {
        "title": "Apply Advanced ControlNet 🛂🅐🅒🅝",
        "inputs": [
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("control_net", "CONTROL_NET"),
            ("image", "IMAGE"),
            ("mask_optional", "MASK"),
            ("timestep_kf", "TIMESTEP_KEYFRAME"),
            ("latent_kf_override", "LATENT_KEYFRAME"),
            ("weights_override", "CONTROL_NET_WEIGHTS"),
            ("vae_optional", "VAE"),
        ],
        "widgets": [("strength", "FLOAT"), ("start_percent", "FLOAT"), ("end_percent", "FLOAT")],
        "outputs": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    },
    "ADE_PromptScheduling": {
        "title": "Prompt Scheduling 🎭🅐🅓",
        "inputs": [
            ("clip", "CLIP"),
            ("prepend_text", "STRING"),
            ("append_text", "STRING"),
            ("values_replace", "VALUES_REPLACE"),
        ],
        "widgets": [
            ("prompts", "STRING"),
            ("print_schedule", "BOOLEAN"),
            ("max_length", "INT"),
            ("tensor_interp", "COMBO"),
        ],
        "outputs": [("CONDITIONING", "CONDITIONING")],
    },
    "MCM_StyleAdapter": {
        "title": "MCM Style Adapter",
        "inputs": [],
        "widgets": [("adapter", "COMBO"), ("beta_schedule", "COMBO")],
        "outputs": [("mcm_adapter", "MCM_ADAPTER"), ("steps", "INT"), ("cfg", "FLOAT"), ("info", "STRING")],
    },
    "MCM_LoraLoader": {
        "title": "Load MCM LoRA",
        "inputs": [("model", "MODEL"), ("mcm_adapter", "MCM_ADAPTER"), ("motion_model", "MOTION_MODEL_ADE")],
        "widgets": [
            ("strength_model", "FLOAT"),
            ("strength_motion", "FLOAT"),
            ("mcm_sampling", "BOOLEAN"),
            ("temporal_norm", "COMBO"),
        ],
        "outputs": [("model", "MODEL"), ("motion_model", "MOTION_MODEL_ADE")],
    },
    "MCM_Scheduler": {
        "title": "MCM Scheduler",
        "inputs": [("model", "MODEL")],
        "widgets": [("steps", "INT"), ("denoise", "FLOAT")],
        "outputs": [("SIGMAS", "SIGMAS")],
    },
    "MCM_Sampler": {
        "title": "MCM Sampler",
        "inputs": [],
        "widgets": [],
        "outputs": [("SAMPLER", "SAMPLER")],
    },
    "MCM_ModelScopeLoader": {
        "title": "Load ModelScope T2V Model",
        "inputs": [],
        "widgets": [("unet_name", "COMBO"), ("weight_dtype", "COMBO")],
        "outputs": [("MODEL", "MODEL")],
    },
    "CLIPLoader": {
        "title": "Load CLIP",
        "inputs": [],
        "widgets": [("clip_name", "COMBO"), ("type", "COMBO"), ("device", "COMBO")],
        "outputs": [("CLIP", "CLIP")],
    },
    "VAELoader": {
        "title": "Load VAE",
        "inputs": [],
        "widgets": [("vae_name", "COMBO")],
        "outputs": [("VAE", "VAE")],
    },
    "MCM_KSampler": {
        "title": "MCM KSampler",
        "inputs": [
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ],
        "widgets": [("seed", "SEED"), ("steps", "INT"), ("cfg", "FLOAT"), ("denoise", "FLOAT")],
        "outputs": [("LATENT", "LATENT")],
    },
}

#: ADE context options of the long-video workflows: 16-frame windows (the motion module's), overlap 4.
LONG_CONTEXT = {
    "context_length": 16,
    "context_overlap": 4,
    "fuse_method": "pyramid",
    "use_on_equal_length": False,
    "start_percent": 0.0,
    "guarantee_steps": 1,
}

# Layout: nodes sit in columns (left -> right = data flow); a column stacks its nodes top to bottom.
COLUMN_X0, COLUMN_WIDTH, ROW_Y0, ROW_GAP = 40, 400, 60, 80
NODE_WIDTH = {
    "CLIPTextEncode": 340,
    "SaveVideo": 420,
    "ADE_StandardStaticContextOptions": 340,
    "ADE_PromptScheduling": 420,
    "ACN_AdvancedControlNetApply_v2": 340,
}
NODE_HEIGHT = {"CLIPTextEncode": 140, "SaveVideo": 460, "LoadVideo": 320, "LoadImage": 320, "ADE_PromptScheduling": 260}
GROUP_COLOR = "#3f789e"


class Graph:
    """A workflow under construction: nodes with widget values by name and links by input name."""

    def __init__(self, name: str, description: str):
        self.name, self.description = name, description
        self.nodes: list[dict] = []

    def add(
        self,
        type_: str,
        col: int,
        widgets: dict | None = None,
        links: dict | None = None,
        title: str | None = None,
        group: str | None = None,
    ) -> int:
        schema = NODE_SCHEMAS[type_]
        widgets, links = dict(widgets or {}), dict(links or {})
        names = [w for w, _ in schema["widgets"]]
        if sorted(widgets) != sorted(names):
            raise ValueError(f"{self.name}: {type_} needs widgets {names}, got {sorted(widgets)}")
        inputs = dict(schema["inputs"])
        for key, (src, slot) in links.items():
            if key not in inputs:
                raise ValueError(f"{self.name}: {type_} has no link input {key!r}")
            out_type = self.node(src)["schema"]["outputs"][slot][1]
            if out_type != inputs[key]:
                raise ValueError(f"{self.name}: {type_}.{key} takes {inputs[key]}, got {out_type} from node {src}")
        node_id = len(self.nodes) + 1
        self.nodes.append(
            {
                "id": node_id,
                "type": type_,
                "schema": schema,
                "col": col,
                "widgets": widgets,
                "links": links,
                "title": title,
                "group": group,
            }
        )
        return node_id

    def node(self, node_id: int) -> dict:
        return self.nodes[node_id - 1]


def out(node_id: int, slot: int = 0) -> tuple[int, int]:
    return (node_id, slot)


# ---------------------------------------------------------------------------------------------------------------
# The workflows
# ---------------------------------------------------------------------------------------------------------------


def _gen2_models(g: Graph, context: dict | None = None) -> dict:
    """Checkpoint + motion model + MCM adapter, LoRA, Apply AnimateDiff, Use Evolved Sampling ('use existing')."""
    ckpt = g.add("CheckpointLoaderSimple", 0, {"ckpt_name": CHECKPOINT}, group="Models")
    motion = g.add("ADE_LoadAnimateDiffModel", 0, {"model_name": MOTION_MODULE}, group="Models")
    style = g.add(
        "MCM_StyleAdapter", 0, {"adapter": ADAPTER, "beta_schedule": "auto (from the adapter)"}, group="Models"
    )
    lora = g.add(
        "MCM_LoraLoader",
        1,
        LORA_WIDGETS,
        {"model": out(ckpt, 0), "mcm_adapter": out(style, 0), "motion_model": out(motion, 0)},
        group="MCM",
    )
    apply = g.add("ADE_ApplyAnimateDiffModelSimple", 1, {}, {"motion_model": out(lora, 1)}, group="MCM")
    ade_links = {"model": out(lora, 0), "m_models": out(apply, 0)}
    if context is not None:
        ctx = g.add("ADE_StandardStaticContextOptions", 1, context, group="MCM")
        ade_links["context_options"] = out(ctx, 0)
    evolved = g.add("ADE_UseEvolvedSampling", 1, {"beta_schedule": "use existing"}, ade_links, group="MCM")
    return {"ckpt": ckpt, "model": evolved}


def _prompts(g: Graph, ckpt: int, col: int) -> tuple[int, int]:
    pos = g.add(
        "CLIPTextEncode", col, {"text": POSITIVE}, {"clip": out(ckpt, 1)}, title="Positive prompt", group="Prompt"
    )
    neg = g.add(
        "CLIPTextEncode",
        col,
        {"text": NEGATIVE},
        {"clip": out(ckpt, 1)},
        title="Negative prompt (unused at cfg 1)",
        group="Prompt",
    )
    return pos, neg


def _save(g: Graph, samples: tuple[int, int], ckpt: int, col: int, prefix: str, vae: tuple | None = None) -> None:
    """VAE Decode (the checkpoint's VAE unless ``vae``) -> Create Video (8 fps) -> Save Video (H.264 mp4 in
    output/MCM/)."""
    decode = g.add("VAEDecode", col, {}, {"samples": samples, "vae": vae or out(ckpt, 2)}, group="Output")
    video = g.add("CreateVideo", col, {"fps": FPS}, {"images": out(decode, 0)}, group="Output")
    g.add("SaveVideo", col + 1, {"filename_prefix": prefix, **VIDEO_FORMAT}, {"video": out(video, 0)}, group="Output")


def _ref(node: int | tuple[int, int]) -> tuple[int, int]:
    """A node's first output, or an explicit (node, slot)."""
    return node if isinstance(node, tuple) else out(node, 0)


def _custom_sampling(g: Graph, m: dict, latent, pos, neg, steps: int, denoise: float, col: int):
    sched = g.add(
        "MCM_Scheduler", col, {"steps": steps, "denoise": denoise}, {"model": out(m["model"], 0)}, group="Sample"
    )
    sampler = g.add("MCM_Sampler", col, {}, group="Sample")
    return g.add(
        "SamplerCustom",
        col + 1,
        {"add_noise": True, "noise_seed": SEED, "cfg": 1.0},
        {
            "model": out(m["model"], 0),
            "positive": _ref(pos),
            "negative": _ref(neg),
            "sampler": out(sampler, 0),
            "sigmas": out(sched, 0),
            "latent_image": _ref(latent),
        },
        group="Sample",
    )


def t2v_gen2(name: str, steps: int, frames: int = 16, context: dict | None = None, description: str = "") -> Graph:
    g = Graph(name, description)
    m = _gen2_models(g, context)
    pos, neg = _prompts(g, m["ckpt"], 2)
    latent = g.add("EmptyLatentImage", 2, {"width": 512, "height": 512, "batch_size": frames}, group="Prompt")
    sample = _custom_sampling(g, m, latent, pos, neg, steps, 1.0, 3)
    _save(g, out(sample, 0), m["ckpt"], 5, f"MCM/{name}")
    return g


def t2v_gen2_ksampler(name: str) -> Graph:
    g = Graph(name, "Gen2 text-to-video with the one-node MCM KSampler (4 steps, cfg 1).")
    m = _gen2_models(g)
    pos, neg = _prompts(g, m["ckpt"], 2)
    latent = g.add("EmptyLatentImage", 2, {"width": 512, "height": 512, "batch_size": 16}, group="Prompt")
    sample = g.add(
        "MCM_KSampler",
        3,
        {"seed": SEED, "steps": 4, "cfg": 1.0, "denoise": 1.0},
        {"model": out(m["model"], 0), "positive": out(pos, 0), "negative": out(neg, 0), "latent_image": out(latent, 0)},
        group="Sample",
    )
    _save(g, out(sample, 0), m["ckpt"], 4, f"MCM/{name}")
    return g


def t2v_gen1(name: str) -> Graph:
    g = Graph(
        name,
        "Gen1 text-to-video: AnimateDiff Loader, then Load MCM LoRA (patches the attached motion model), "
        "then MCM KSampler (4 steps).",
    )
    ckpt = g.add("CheckpointLoaderSimple", 0, {"ckpt_name": CHECKPOINT}, group="Models")
    style = g.add(
        "MCM_StyleAdapter", 0, {"adapter": ADAPTER, "beta_schedule": "auto (from the adapter)"}, group="Models"
    )
    ad = g.add(
        "ADE_AnimateDiffLoaderGen1",
        1,
        {"model_name": MOTION_MODULE, "beta_schedule": "autoselect"},
        {"model": out(ckpt, 0)},
        group="MCM",
    )
    lora = g.add("MCM_LoraLoader", 1, LORA_WIDGETS, {"model": out(ad, 0), "mcm_adapter": out(style, 0)}, group="MCM")
    pos, neg = _prompts(g, ckpt, 2)
    latent = g.add("EmptyLatentImage", 2, {"width": 512, "height": 512, "batch_size": 16}, group="Prompt")
    sample = g.add(
        "MCM_KSampler",
        3,
        {"seed": SEED, "steps": 4, "cfg": 1.0, "denoise": 1.0},
        {"model": out(lora, 0), "positive": out(pos, 0), "negative": out(neg, 0), "latent_image": out(latent, 0)},
        group="Sample",
    )
    _save(g, out(sample, 0), ckpt, 4, f"MCM/{name}")
    return g


def v2v_gen2(name: str) -> Graph:
    g = Graph(name, "Gen2 video-to-video: the input video is encoded and re-sampled from the MCM grid at denoise 0.6.")
    m = _gen2_models(g)
    pos, neg = _prompts(g, m["ckpt"], 2)
    video = g.add("LoadVideo", 2, {"file": INPUT_VIDEO}, group="Input video")
    frames = g.add("GetVideoComponents", 2, {}, {"video": out(video, 0)}, group="Input video")
    scaled = g.add(
        "ImageScale",
        2,
        {"upscale_method": "bilinear", "width": 512, "height": 512, "crop": "center"},
        {"image": out(frames, 0)},
        group="Input video",
    )
    latent = g.add("VAEEncode", 3, {}, {"pixels": out(scaled, 0), "vae": out(m["ckpt"], 2)}, group="Sample")
    sample = _custom_sampling(g, m, latent, pos, neg, 4, 0.6, 3)
    _save(g, out(sample, 0), m["ckpt"], 5, f"MCM/{name}")
    return g


def _control_video(g: Graph, file: str, col: int, group: str) -> int:
    """Load Video -> Get Video Components -> Upscale Image to the latent size (512x512, center crop)."""
    video = g.add("LoadVideo", col, {"file": file}, group=group)
    frames = g.add("GetVideoComponents", col, {}, {"video": out(video, 0)}, group=group)
    return g.add(
        "ImageScale",
        col,
        {"upscale_method": "bilinear", "width": 512, "height": 512, "crop": "center"},
        {"image": out(frames, 0)},
        group=group,
    )


def control_gen2(name: str, kind: str, strength: float, long: bool = False) -> Graph:
    """ControlNet-conditioned text-to-video: a preprocessed control video (OpenPose skeletons, depth maps) through
    a ControlNet on both prompts. 16 frames with core Apply ControlNet; 48 frames in ADE context windows with
    Advanced-ControlNet, which slices the control frames per window (core ControlNet is not sliced)."""
    cn_file, video_file = CONTROLNETS[kind]
    frames = 48 if long else 16
    what = f"{frames} frames in 16-frame context windows" if long else "16 frames 512x512, 4 MCM steps"
    g = Graph(name, f"Gen2 {kind}-conditioned text-to-video ({what}): a {kind} video drives a ControlNet, cfg 1.")
    m = _gen2_models(g, LONG_CONTEXT if long else None)
    pos, neg = _prompts(g, m["ckpt"], 2)
    scaled = _control_video(g, video_file, 2, f"Control video ({kind})")
    cn_type, apply_type = (
        ("ACN_ControlNetLoaderAdvanced", "ACN_AdvancedControlNetApply_v2")
        if long
        else ("ControlNetLoader", "ControlNetApplyAdvanced")
    )
    cn = g.add(cn_type, 3, {"cnet" if long else "control_net_name": cn_file}, group="ControlNet")
    apply = g.add(
        apply_type,
        3,
        {"strength": strength, "start_percent": 0.0, "end_percent": 1.0},
        {"positive": out(pos, 0), "negative": out(neg, 0), "control_net": out(cn, 0), "image": out(scaled, 0)},
        group="ControlNet",
    )
    latent = g.add("EmptyLatentImage", 3, {"width": 512, "height": 512, "batch_size": frames}, group="ControlNet")
    sample = _custom_sampling(g, m, latent, out(apply, 0), out(apply, 1), 4, 1.0, 4)
    _save(g, out(sample, 0), m["ckpt"], 6, f"MCM/{name}")
    return g


def hires_gen2(name: str, scale: float = 1.5, steps: int = 4, denoise: float = 0.5) -> Graph:
    """Two passes: MCM at 512, latent upscale, a second MCM pass from the lower half of the grid (denoise 0.5:
    timesteps 499, 379, 259, 139), which refines detail and keeps the first pass's layout and motion."""
    g = Graph(
        name,
        f"Gen2 high resolution: 4 MCM steps at 512x512, latent upscale x{scale:g}, "
        f"then {steps} MCM steps at denoise {denoise:g} (16 frames, {int(512 * scale)}x{int(512 * scale)}).",
    )
    m = _gen2_models(g)
    pos, neg = _prompts(g, m["ckpt"], 2)
    latent = g.add("EmptyLatentImage", 2, {"width": 512, "height": 512, "batch_size": 16}, group="Prompt")
    first = _custom_sampling(g, m, latent, pos, neg, 4, 1.0, 3)
    up = g.add(
        "LatentUpscaleBy",
        5,
        {"upscale_method": "bilinear", "scale_by": scale},
        {"samples": out(first, 0)},
        title="Upscale Latent By (second pass input)",
        group="Second pass",
    )
    second = _custom_sampling(g, m, up, pos, neg, steps, denoise, 5)
    _save(g, out(second, 0), m["ckpt"], 7, f"MCM/{name}")
    return g


def i2v_gen2(name: str, frames: int = 16, denoise: float = 0.75) -> Graph:
    """Image-to-video through the init latent: the image repeated to every frame, encoded and re-sampled at
    denoise 0.75 (timesteps 739, 559, 379, 199)."""
    g = Graph(
        name,
        f"Gen2 image-to-video: the input image repeated to {frames} frames, encoded and re-sampled with "
        f"4 MCM steps at denoise {denoise:g} (less denoise keeps more of the picture and gives less motion).",
    )
    m = _gen2_models(g)
    pos, neg = _prompts(g, m["ckpt"], 2)
    image = g.add("LoadImage", 2, {"image": INPUT_IMAGE}, group="Input image")
    scaled = g.add(
        "ImageScale",
        2,
        {"upscale_method": "bilinear", "width": 512, "height": 512, "crop": "center"},
        {"image": out(image, 0)},
        group="Input image",
    )
    repeated = g.add("RepeatImageBatch", 2, {"amount": frames}, {"image": out(scaled, 0)}, group="Input image")
    latent = g.add("VAEEncode", 3, {}, {"pixels": out(repeated, 0), "vae": out(m["ckpt"], 2)}, group="Sample")
    sample = _custom_sampling(g, m, latent, pos, neg, 4, denoise, 3)
    _save(g, out(sample, 0), m["ckpt"], 5, f"MCM/{name}")
    return g


def prompt_travel_gen2(name: str) -> Graph:
    """ADE's Prompt Scheduling gives one positive conditioning per frame; MCM samples it as any other."""
    g = Graph(
        name,
        "Gen2 prompt travel: ADE Prompt Scheduling changes the positive prompt at frame 8 of 16 "
        "(interpolated between keyframes); 4 MCM steps, cfg 1.",
    )
    m = _gen2_models(g)
    pos = g.add(
        "ADE_PromptScheduling",
        2,
        {"prompts": TRAVEL_PROMPTS, "print_schedule": False, "max_length": 16, "tensor_interp": "lerp"},
        {"clip": out(m["ckpt"], 1)},
        title="Positive prompt schedule",
        group="Prompt",
    )
    neg = g.add(
        "CLIPTextEncode",
        2,
        {"text": NEGATIVE},
        {"clip": out(m["ckpt"], 1)},
        title="Negative prompt (unused at cfg 1)",
        group="Prompt",
    )
    latent = g.add("EmptyLatentImage", 2, {"width": 512, "height": 512, "batch_size": 16}, group="Prompt")
    sample = _custom_sampling(g, m, latent, pos, neg, 4, 1.0, 3)
    _save(g, out(sample, 0), m["ckpt"], 5, f"MCM/{name}")
    return g


def modelscope_t2v(name: str, steps: int, adapter: str = MODELSCOPE_ADAPTER) -> Graph:
    g = Graph(
        name,
        f"ModelScope T2V text-to-video with an MCM style adapter: 16 frames 256x256, {steps} MCM step"
        f"{'s' if steps > 1 else ''}, cfg 1.",
    )
    unet = g.add("MCM_ModelScopeLoader", 0, {"unet_name": MODELSCOPE_UNET, "weight_dtype": "default"}, group="Models")
    clip = g.add(
        "CLIPLoader",
        0,
        {"clip_name": MODELSCOPE_CLIP, "type": "stable_diffusion", "device": "default"},
        group="Models",
    )
    vae = g.add("VAELoader", 0, {"vae_name": MODELSCOPE_VAE}, group="Models")
    style = g.add(
        "MCM_StyleAdapter", 0, {"adapter": adapter, "beta_schedule": "auto (from the adapter)"}, group="Models"
    )
    lora = g.add("MCM_LoraLoader", 1, LORA_WIDGETS, {"model": out(unet, 0), "mcm_adapter": out(style, 0)}, group="MCM")
    pos = g.add(
        "CLIPTextEncode",
        2,
        {"text": MODELSCOPE_POSITIVE},
        {"clip": out(clip, 0)},
        title="Positive prompt",
        group="Prompt",
    )
    neg = g.add(
        "CLIPTextEncode",
        2,
        {"text": NEGATIVE},
        {"clip": out(clip, 0)},
        title="Negative prompt (unused at cfg 1)",
        group="Prompt",
    )
    latent = g.add("EmptyLatentImage", 2, {"width": 256, "height": 256, "batch_size": 16}, group="Prompt")
    sample = _custom_sampling(g, {"model": lora}, latent, pos, neg, steps, 1.0, 3)
    _save(g, out(sample, 0), unet, 5, f"MCM/{name}", vae=out(vae, 0))
    return g


WORKFLOWS = {
    "mcm_t2v_gen2_4step": lambda n: t2v_gen2(
        n,
        4,
        description="Default: Gen2 text-to-video, 16 frames 512x512, "
        "4 MCM steps with SamplerCustom + MCM Scheduler + MCM Sampler, cfg 1.",
    ),
    "mcm_t2v_gen2_1step": lambda n: t2v_gen2(n, 1, description="As the default, 1 step."),
    "mcm_t2v_gen2_2step": lambda n: t2v_gen2(n, 2, description="As the default, 2 steps."),
    "mcm_t2v_gen2_8step": lambda n: t2v_gen2(n, 8, description="As the default, 8 steps."),
    "mcm_t2v_gen2_ksampler": t2v_gen2_ksampler,
    "mcm_t2v_gen1_4step": t2v_gen1,
    "mcm_long_video_context": lambda n: t2v_gen2(
        n,
        4,
        frames=48,
        context=LONG_CONTEXT,
        description="Gen2 long video: 48 frames sampled in sliding 16-frame context windows (overlap 4).",
    ),
    "mcm_v2v_gen2": v2v_gen2,
    "mcm_pose_gen2_4step": lambda n: control_gen2(n, "pose", 1.0),
    "mcm_depth_gen2_4step": lambda n: control_gen2(n, "depth", 0.8),
    "mcm_pose_long_acn": lambda n: control_gen2(n, "pose", 1.0, long=True),
    "mcm_hires_gen2_4step": hires_gen2,
    "mcm_i2v_gen2": i2v_gen2,
    "mcm_prompt_travel_gen2": prompt_travel_gen2,
    "mcm_modelscope_t2v_4step": lambda n: modelscope_t2v(n, 4),
    "mcm_modelscope_t2v_2step": lambda n: modelscope_t2v(n, 2),
    "mcm_modelscope_t2v_1step": lambda n: modelscope_t2v(n, 1),
}


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------


def _widget_values(node: dict) -> list:
    values = []
    for name, kind in node["schema"]["widgets"]:
        values.append(node["widgets"][name])
        if kind == "SEED":
            values.append("fixed")  # control_after_generate
        elif kind == "UPLOAD":
            values.append("image")  # the upload button's value, as the frontend saves it
    return values


def _size(node: dict) -> list[int]:
    schema = node["schema"]
    n_widgets = sum(2 if kind == "SEED" else 1 for _, kind in schema["widgets"])
    height = 30 + 22 * max(len(schema["inputs"]), len(schema["outputs"]), 1) + 26 * n_widgets
    return [NODE_WIDTH.get(node["type"], 320), NODE_HEIGHT.get(node["type"], height)]


def _execution_order(g: Graph) -> dict[int, int]:
    done: dict[int, int] = {}

    def visit(nid: int) -> None:
        if nid in done:
            return
        for src, _ in g.node(nid)["links"].values():
            visit(src)
        done[nid] = len(done)

    for node in g.nodes:
        visit(node["id"])
    return done


def to_ui(g: Graph) -> dict:
    order = _execution_order(g)
    links, incoming, outgoing = [], {}, {}
    for node in g.nodes:  # link ids: by target node, then by input slot
        slots = [name for name, _ in node["schema"]["inputs"]]
        for key in sorted(node["links"], key=slots.index):
            src, slot = node["links"][key]
            link_id = len(links) + 1
            type_ = g.node(src)["schema"]["outputs"][slot][1]
            links.append([link_id, src, slot, node["id"], slots.index(key), type_])
            incoming[(node["id"], key)] = link_id
            outgoing.setdefault((src, slot), []).append(link_id)

    y_next: dict[int, int] = {}
    nodes = []
    for node in g.nodes:
        size = _size(node)
        col = node["col"]
        y = y_next.get(col, ROW_Y0)
        y_next[col] = y + size[1] + ROW_GAP
        node["pos"], node["size"] = [COLUMN_X0 + col * COLUMN_WIDTH, y], size
        entry = {
            "id": node["id"],
            "type": node["type"],
            "pos": node["pos"],
            "size": size,
            "flags": {},
            "order": order[node["id"]],
            "mode": 0,
            "inputs": [
                {"name": name, "type": type_, "link": incoming.get((node["id"], name))}
                for name, type_ in node["schema"]["inputs"]
            ],
            "outputs": [
                {"name": name, "type": type_, "links": outgoing.get((node["id"], slot), []), "slot_index": slot}
                for slot, (name, type_) in enumerate(node["schema"]["outputs"])
            ],
            "properties": {"Node name for S&R": node["type"]},
            "widgets_values": _widget_values(node),
        }
        models = [
            {"name": v, "url": MODEL_FILES[v][1], "directory": MODEL_FILES[v][0]}
            for v in dict.fromkeys(entry["widgets_values"])
            if isinstance(v, str) and v in MODEL_FILES
        ]
        if models:  # the frontend's missing-models manifest: the files this node's widgets name
            entry["properties"]["models"] = models
        if node["title"]:
            entry["title"] = node["title"]
        nodes.append(entry)

    groups = []
    for title in dict.fromkeys(n["group"] for n in g.nodes if n["group"]):
        members = [n for n in g.nodes if n["group"] == title]
        x0 = min(n["pos"][0] for n in members) - 15
        y0 = min(n["pos"][1] for n in members) - 45
        x1 = max(n["pos"][0] + n["size"][0] for n in members) + 15
        y1 = max(n["pos"][1] + n["size"][1] for n in members) + 15
        groups.append(
            {
                "id": len(groups) + 1,
                "title": title,
                "bounding": [x0, y0, x1 - x0, y1 - y0],
                "color": GROUP_COLOR,
                "font_size": 24,
                "flags": {},
            }
        )
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-mcm/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": len(g.nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}, "info": {"name": g.name, "description": g.description}},
        "version": 0.4,
    }


def to_api(g: Graph) -> dict:
    prompt = {}
    for node in g.nodes:
        inputs: dict = {}
        for name, _ in node["schema"]["widgets"]:
            inputs[name] = node["widgets"][name]
        for name, _ in node["schema"]["inputs"]:
            if name in node["links"]:
                src, slot = node["links"][name]
                inputs[name] = [str(src), slot]
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node["title"] or node["schema"]["title"]},
        }
    return prompt


def render(name: str) -> tuple[dict, dict]:
    """(UI workflow, API prompt) of one workflow."""
    g = WORKFLOWS[name](name)
    return to_ui(g), to_api(g)


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_all(root: Path) -> list[Path]:
    written = []
    for name in WORKFLOWS:
        ui, api = render(name)
        for path, data in (
            (root / "workflows" / f"{name}.json", ui),
            (root / "workflows" / "api" / f"{name}.json", api),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(data), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    for path in write_all(root):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
