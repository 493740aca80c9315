"""Teachers for MCM distillation: AnimateDiff (SD1.5 UNet + motion adapter) and ModelScope T2V.

A teacher is a diffusers video UNet (``UNetMotionModel`` or ``UNet3DConditionModel``), its VAE, a CLIP
text encoder and a tokenizer. Real teachers load from local diffusers folders (or hub ids when a hub
is reachable); ``tiny-animatediff`` / ``tiny-modelscope`` build small random models of the same
classes from configs, for tests and for runs on a CPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mcm.schedule import BETA_END, BETA_SCHEDULES, BETA_START, NUM_TRAIN_TIMESTEPS
from mcm.weights import OFFICIAL_TARGET_MODULES, AdapterError, UNetLayout, ldm_to_diffusers, read_weights

TINY_TEACHERS = ("tiny-animatediff", "tiny-modelscope")
KINDS = ("animatediff", "modelscope")
MAX_TOKENS = 77


class ByteTokenizer:
    """A self-contained tokenizer for the tiny teachers: UTF-8 bytes, BOS/EOS, padded to 77 tokens."""

    bos, eos, pad = 1, 2, 0
    vocab_size = 259
    model_max_length = MAX_TOKENS

    def __call__(self, captions: list[str]) -> torch.Tensor:
        ids = torch.full((len(captions), MAX_TOKENS), self.pad, dtype=torch.long)
        for i, caption in enumerate(captions):
            tokens = [self.bos, *(b + 3 for b in caption.encode("utf-8")[: MAX_TOKENS - 2]), self.eos]
            ids[i, : len(tokens)] = torch.tensor(tokens)
        return ids


class HFTokenizer:
    """``CLIPTokenizer`` in the same call form (max length, padding, truncation)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, captions: list[str]) -> torch.Tensor:
        out = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return out.input_ids


@dataclass
class Teacher:
    kind: str  # "animatediff" | "modelscope"
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    source: str
    scheduler_config: dict | None = None  # the folder's scheduler/scheduler_config.json, read once by load_teacher
    scheduler_config_path: str | None = None

    @property
    def base(self) -> str:
        return "sd15-animatediff" if self.kind == "animatediff" else "modelscope-t2v"

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def max_frames(self) -> int | None:
        """Longest clip the motion module's positional encoding covers (AnimateDiff: 32), if bounded."""
        value = getattr(self.unet.config, "motion_max_seq_length", None)
        return int(value) if value else None

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def lora_targets(self) -> list[str]:
        """The official target list: every module ending in one of the suffixes (ModelScope: without
        the temporal convolutions, which PEFT cannot wrap)."""
        names = [
            n
            for n, _ in self.unet.named_modules()
            if any(n == s or n.endswith("." + s) for s in OFFICIAL_TARGET_MODULES)
        ]
        if self.kind == "modelscope":
            names = [n for n in names if not ("temp" in n and "conv" in n)]
        return names


#: The tiny teachers' model configurations (the shipped toy teacher uses the same): an SD-like UNet with
#: AnimateDiff motion modules, a VAE and a CLIP text encoder, each well under a million parameters.
TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=16,
)
TINY_BLOCKS = {
    "animatediff": dict(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")
    ),
    "modelscope": dict(
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")
    ),
}
TINY_MOTION = dict(
    motion_layers_per_block=1,
    motion_norm_num_groups=8,
    motion_num_attention_heads=2,
    motion_max_seq_length=32,
    block_out_channels=TINY_UNET["block_out_channels"],  # a motion module per UNet block
)
TINY_VAE = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)


def tiny_text_encoder(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        **TINY_TEXT,
        vocab_size=ByteTokenizer.vocab_size,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return CLIPTextModel(config)


def tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE)


def tiny_teacher(kind: str, seed: int = 0) -> Teacher:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel

    torch.manual_seed(seed)
    if kind == "animatediff":
        unet2d = UNet2DConditionModel(**TINY_UNET, **TINY_BLOCKS[kind])
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**TINY_MOTION))
    elif kind == "modelscope":
        unet = UNet3DConditionModel(**TINY_UNET, **TINY_BLOCKS[kind])
    else:
        raise ValueError(f"unknown teacher kind {kind!r}; expected one of {KINDS}")
    return Teacher(kind, unet, tiny_vae(seed + 1), tiny_text_encoder(seed + 2), ByteTokenizer(), f"tiny-{kind}")


def _local_or_hub(path: str) -> str:
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise FileNotFoundError(
            f"--teacher {path}: a file; expected a diffusers folder (unet/, vae/, text_encoder/, tokenizer/)"
        )
    if "/" in path and not path.startswith((".", "/")) and path.count("/") == 1:
        return path  # a hub id; from_pretrained reports whether it is reachable
    raise FileNotFoundError(
        f"--teacher {path}: no such folder (expected a diffusers folder or a hub id such as org/name)"
    )


def load_unet_checkpoint(unet, path: str | Path, allow_pickle: bool = False) -> None:
    """Load a single-file UNet into a diffusers ``UNet2DConditionModel`` (in place).

    Accepts a whole Stable Diffusion checkpoint in the original layout (``model.diffusion_model.*``; the
    VAE and text encoder in it are ignored), an LDM UNet (``diffusion_model.*`` or bare LDM names) or a
    diffusers UNet state dict. LDM names are translated with the same map the nodes use.
    """

    path = Path(path)
    try:
        tensors = read_weights(path, allow_pickle=allow_pickle)
    except AdapterError as exc:
        raise FileNotFoundError(f"--unet-checkpoint: {exc}") from None
    layout = UNetLayout.from_diffusers_config(dict(unet.config))
    ldm = {k.split("diffusion_model.", 1)[1]: v for k, v in tensors.items() if "diffusion_model." in k}
    if not ldm and any(k.startswith(("input_blocks.", "middle_block.", "output_blocks.")) for k in tensors):
        ldm = dict(tensors)
    if ldm:
        state = {}
        for key, value in ldm.items():
            module, leaf = key.rsplit(".", 1)
            try:
                state[f"{ldm_to_diffusers(module, layout)}.{leaf}"] = value
            except KeyError as exc:
                raise ValueError(f"--unet-checkpoint {path}: {exc}") from None
    else:
        state = {k.removeprefix("unet."): v for k, v in tensors.items()}
    own = unet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"--unet-checkpoint {path}: does not fit the teacher's UNet: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} with other shapes (e.g. {wrong[:3]})"
        )
    unet.load_state_dict(state, strict=True)


def load_teacher(
    teacher: str, kind: str = "animatediff", motion_adapter: str | None = None, unet_checkpoint: str | None = None
) -> Teacher:
    """A teacher from ``tiny-*``, a local diffusers folder or a hub id.

    AnimateDiff: ``teacher`` is an SD1.5 diffusers folder (``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``) and ``motion_adapter`` a diffusers ``MotionAdapter`` folder (default: the
    teacher's ``motion_adapter/`` subfolder); ``unet_checkpoint`` replaces the UNet weights with a
    single-file checkpoint (e.g. a fine-tune such as Realistic Vision). ModelScope: a
    text-to-video-ms-1.7b folder.
    """
    if teacher in TINY_TEACHERS:
        return tiny_teacher(teacher.removeprefix("tiny-"))
    if kind not in KINDS:
        raise ValueError(f"--teacher-kind {kind!r}; expected one of {KINDS}")
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = _local_or_hub(teacher)
    try:
        tokenizer = HFTokenizer(CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"))
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
        if kind == "animatediff":
            unet2d = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
            if unet_checkpoint:
                load_unet_checkpoint(unet2d, unet_checkpoint)
            mm_path = motion_adapter or str(Path(root) / "motion_adapter")
            adapter = MotionAdapter.from_pretrained(_local_or_hub(mm_path))
            unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        else:
            unet = UNet3DConditionModel.from_pretrained(root, subfolder="unet")
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"--teacher {teacher}: cannot load the {kind} teacher ({exc})") from None
    scheduler_config, scheduler_path = read_scheduler_config(root)
    return Teacher(kind, unet, vae, text_encoder, tokenizer, teacher, scheduler_config, scheduler_path)


def read_scheduler_config(root: str) -> tuple[dict | None, str | None]:
    """The teacher's ``scheduler/scheduler_config.json`` (a local folder's, or a hub id's when the hub is
    reachable) and where it was read from; ``(None, None)`` when there is none."""
    path = Path(root) / "scheduler" / "scheduler_config.json"
    if not os.path.isdir(root):
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(root, "scheduler_config.json", subfolder="scheduler"))
        except Exception:  # noqa: BLE001 - no hub, or no scheduler in the repository
            return None, None
    if not path.is_file():
        return None, None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON scheduler config ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config, str(path)


@dataclass(frozen=True)
class NoiseSettings:
    """The teacher's parameterisation and betas: what the step, the trajectories, validation, the toy
    evaluation and the adapter metadata all use."""

    prediction_type: str  # "epsilon" | "v_prediction"
    beta_schedule: str  # diffusers name
    source: str  # where each came from, for the log


def _setting(name: str, flag: str, config: dict, where: str, default: str, allowed) -> tuple[str, str]:
    value = config.get(name)
    if value is not None and value not in allowed:
        raise ValueError(f"{where}: {name} {value!r} is not supported; expected one of {list(allowed)}")
    option = f"--{name.replace('_', '-')}"
    if flag != "auto":
        if value is not None and value != flag:
            raise ValueError(
                f"{option} {flag} contradicts {where} ({name}: {value!r}); leave {option} at auto "
                f"or give the teacher's own value"
            )
        return flag, option
    return (value, where) if value is not None else (default, "default")


def noise_settings(teacher: Teacher, prediction_type: str = "auto", beta_schedule: str = "auto") -> NoiseSettings:
    """Resolve the prediction type and betas: a flag other than ``auto`` > the teacher's scheduler config >
    the default (``epsilon``, ``scaled_linear``). A flag that contradicts the config is refused, and so is a
    config whose betas the adapter format cannot record (other start/end/length, explicit betas)."""
    config = teacher.scheduler_config or {}
    where = teacher.scheduler_config_path or "the teacher's scheduler config"
    if config.get("trained_betas") is not None:
        raise ValueError(f"{where}: trained_betas (an explicit beta table) is not supported; expected a beta_schedule")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(f"{where}: rescale_betas_zero_snr true is not supported (MCM adapters record the plain betas)")
    for key, expected in (
        ("beta_start", BETA_START),
        ("beta_end", BETA_END),
        ("num_train_timesteps", NUM_TRAIN_TIMESTEPS),
    ):
        if key in config and abs(float(config[key]) - expected) > 1e-9:
            raise ValueError(f"{where}: {key} {config[key]} is not supported; MCM adapters assume {expected}")
    pt, pt_from = _setting("prediction_type", prediction_type, config, where, "epsilon", ("epsilon", "v_prediction"))
    betas, betas_from = _setting("beta_schedule", beta_schedule, config, where, "scaled_linear", BETA_SCHEDULES)
    return NoiseSettings(pt, betas, f"prediction type from {pt_from}, betas from {betas_from}")


def make_student(teacher: Teacher, rank: int, alpha: float):
    """The teacher's UNet wrapped by peft with LoRA on the official targets (the teacher is the same
    UNet with the adapter disabled, so no second copy is kept)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=teacher.lora_targets())
    student = get_peft_model(teacher.unet, config)
    for module in student.modules():
        if hasattr(module, "lora_A") and isinstance(module, torch.nn.Module):
            accept_input_keyword(module)
    return student


def accept_input_keyword(module) -> None:
    """diffusers calls some linears as ``layer(input=x)`` (AnimateDiff's motion proj_in/out); peft's
    LoRA layers take ``x`` positionally. Route the keyword to the positional argument."""
    forward = module.forward

    def patched(*args, **kwargs):
        if not args and "input" in kwargs:
            args = (kwargs.pop("input"),)
        return forward(*args, **kwargs)

    module.forward = patched


def call_unet(unet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Run a diffusers video UNet on ``(b, c, f, h, w)`` latents with per-video text embeddings.

    ``UNetMotionModel`` takes the embeddings once per frame (its pipeline repeats them);
    ``UNet3DConditionModel`` repeats them itself.
    """
    inner = getattr(unet, "module", unet)  # DistributedDataParallel
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    if type(base).__name__ == "UNetMotionModel":
        cond = cond.repeat_interleave(x_t.shape[2], dim=0)
    return unet(x_t, t.to(x_t.device), encoder_hidden_states=cond).sample


class VideoUNet:
    """A diffusers video UNet as ``model(x_t, t, cond) -> output`` (see :func:`call_unet`)."""

    def __init__(self, unet):
        self.unet = unet

    def __call__(self, x_t, t, cond):
        return call_unet(self.unet, x_t, t, cond)
