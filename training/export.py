"""What a run hands the nodes: the adapter (``adapter.safetensors``, the nodes' format, with the ``mcm.*``
metadata the nodes and validation sample with) and the same weights as a PEFT folder (``peft/``)."""

from __future__ import annotations

from pathlib import Path

import mcm
from mcm.weights import Adapter, AdapterMeta, export_peft, parse_lora_tensors, save_adapter
from training.models import Teacher, noise_settings


def adapter_meta(teacher: Teacher, args, step: int, seconds: float) -> AdapterMeta:
    """The adapter's metadata (:class:`mcm.weights.AdapterMeta`): what the nodes and validation sample with."""
    noise = noise_settings(teacher, args.prediction_type, args.beta_schedule)  # the same resolution train() uses
    return AdapterMeta(
        base=teacher.base,
        motion_module=args.motion_module_version if teacher.kind == "animatediff" else None,
        lora_rank=args.lora_rank,
        lora_alpha=float(args.lora_alpha),
        beta_schedule=noise.beta_schedule,
        timestep_scaling=float(args.timestep_scaling),
        num_ddim_timesteps=args.num_ddim_timesteps,
        prediction_type=noise.prediction_type,
        temporal_norm="frames",  # diffusers' motion modules normalise over all frames
        style=args.style,
        name=args.adapter_name or f"{args.style} (step {step})",
        training={
            "teacher": str(args.teacher),
            "teacher_kind": args.teacher_kind,
            "data": str(args.data),
            "step": step,
            "motion_repr": args.motion_repr,
            "lambda_real": args.lambda_real,
            "w": [args.w_min, args.w_max],
            "loss": args.loss_type,
            "lr": args.learning_rate,
            "frames": args.num_frames,
            "resolution": args.resolution,
            "seed": args.seed,
            "seconds": round(seconds, 1),
            "comfyui_mcm": mcm.__version__,
        },
    )


def export_adapter(student, teacher: Teacher, args, step: int, folder: Path, seconds: float) -> None:
    """The node-compatible MCM adapter (``adapter.safetensors``) and the PEFT folder (``peft/``)."""
    from peft import get_peft_model_state_dict

    state = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(student).items()}
    layers = parse_lora_tensors(state, f"student at step {step}", lambda p, r: float(args.lora_alpha))
    adapter = Adapter(
        meta=adapter_meta(teacher, args, step, seconds), layers=layers, source=str(folder / "adapter.safetensors")
    )
    save_adapter(adapter, folder / "adapter.safetensors")
    export_peft(adapter, folder / "peft")
