"""Headless MCM distillation: ``python training/distill.py`` (the embedded toy default) or with flags.

Consistency distillation of a video teacher (AnimateDiff or ModelScope T2V, diffusers) into a LoRA
student, with MCM's disentangled motion loss (a learnable motion head by default) and mixed
trajectories; numbers from the official code (``--help`` lists every flag with its default). The
schedule, DDIM solver, boundary conditions and adapter format come from ``mcm/``, the same code the
ComfyUI nodes sample with, and every checkpoint holds an adapter file the nodes load directly.

    python training/distill.py                         # toy default: CPU, minutes, no downloads
    accelerate launch training/distill.py --teacher PATH --data SHARDS --output-dir runs
    python training/distill.py --config run.yaml       # flags from a YAML file (flags on the CLI win)
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROCESS_START = time.time()
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mcm  # noqa: E402
from mcm.boundary import MCM_TIMESTEP_SCALING  # noqa: E402
from mcm.distill import (  # noqa: E402
    DistillConfig,
    distillation_step,
    generated_x0,
    sample_guidance,
    sample_indices,
    use_generated_trajectories,
)
from mcm.motion import MOTION_REPRESENTATIONS, ema_update, make_motion_representation  # noqa: E402
from mcm.schedule import NUM_DDIM_TIMESTEPS, NoiseSchedule, lcm_timesteps  # noqa: E402
from mcm.weights.io import atomic_dir  # noqa: E402
from training.checkpoints import CheckpointError, truncate_metrics  # noqa: E402

TOY_TEACHER = ROOT / "training" / "toy_teacher"  # trained by training/toy_teacher.py, shipped with the repository
TOY_DEFAULTS = {
    "teacher": str(TOY_TEACHER),
    "data": "toy",
    "resolution": 32,
    "num_frames": 8,
    "max_train_steps": 200,
    "train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "lora_rank": 8,
    "lora_alpha": 8.0,
    "learning_rate": 2e-4,
    "scale_lr": False,
    "lr_warmup_steps": 20,
    "w_min": 2.0,
    "w_max": 6.0,
    "checkpointing_steps": 50,
    "num_workers": 0,
    "style": "toy",
    # 7-px patches: a 32-px frame is judged as 8 x 8 patches (14-px ones see 4 x 4 and barely see an edge). A probe
    # telling clean frames from blurred ones reached AUC 1.0 with 7-px patches and 0.70 with 14-px ones; in the full
    # method the shape stayed visible (0.91 of the clips, no discriminator 0.81; 14-px patches 0.66) and the FD to
    # the clean frames fell to the teacher's level (training/ablations.md)
    "disc_backbone": "tiny:7",
    "disc_real": "images",
    "disc_images": "toy",
    # the official 1e-4 is for 30k steps; at 5e-5 the heads barely move in 200 (logits stayed within ±0.1 of
    # each other, and the ladder's "+ frame discriminator" row equalled the row without it)
    "disc_lr": 2e-3,
    # the official augmentation (translation 1/8, cutout 20%, colour) is for 512-px frames; on 32-px toy frames it
    # moves or erases the watermark bar and evens out the contrast, the cues that tell the two domains apart. With it
    # the discriminator's accuracy stayed at 0.57 and no frame metric moved; without it 0.68, and the watermark fell
    # from 0.19 (no discriminator) to 0.07 at 4 steps (training/ablations.md)
    "disc_augment": False,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--config", help="YAML file of flag values (keys as the flags, with _ or -); CLI flags override it")
    g.add_argument("--output-dir", default="runs", help="parent folder; each run gets a new subfolder (default: runs)")
    g.add_argument("--run-name", default=None, help="subfolder name (default: date-time); an existing one is never reused")
    g.add_argument("--resume", default=None,
                   help="continue a run exactly: a run folder (its newest checkpoint), a checkpoint folder, or 'latest' "
                   "(the newest checkpoint of --output-dir/--run-name, or of the newest run in --output-dir)")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="random seed (data order, timesteps, guidance, noise)")
    g.add_argument("--dry-run", action="store_true", help="build everything, run one step, report time per part and peak memory")
    g.add_argument("--plan", action="store_true", help="print what the run will do and exit")
    g = p.add_argument_group("teacher and student")
    g.add_argument("--teacher", default=None, help="diffusers folder or hub id, or tiny-animatediff / tiny-modelscope (toy default)")
    g.add_argument("--teacher-kind", default="animatediff", choices=["animatediff", "modelscope"], help="teacher family")
    g.add_argument("--motion-adapter", default=None, help="AnimateDiff MotionAdapter folder (default: <teacher>/motion_adapter)")
    g.add_argument("--unet-checkpoint", default=None,
                   help="single-file SD1.5 checkpoint (original or diffusers layout) whose UNet replaces the teacher folder's, "
                   "e.g. a fine-tune such as Realistic Vision; VAE and text encoder stay the folder's")  # fmt: skip
    g.add_argument("--motion-module-version", default="v2", help="recorded in the adapter metadata (official: v2, mm v1-5-2)")
    g.add_argument("--lora-rank", type=int, default=64, help="LoRA rank (official 64)")
    g.add_argument("--lora-alpha", type=float, default=64.0, help="LoRA alpha (official 64; scale alpha/rank = 1)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory in the student's UNet")
    g.add_argument("--frozen-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="storage dtype of the frozen teacher UNet, VAE and text encoder (auto: the --mixed-precision dtype); "
                   "the LoRA and the motion head stay fp32")  # fmt: skip
    g.add_argument("--offload-frozen", action="store_true", help="keep VAE and text encoder on the CPU; move them to the GPU per call")
    g.add_argument("--teacher-cfg-batch", action="store_true",
                   help="one teacher call on [cond; uncond] (faster on a GPU, more activation memory) instead of two")  # fmt: skip
    g = p.add_argument_group("consistency distillation")
    g.add_argument("--beta-schedule", default="scaled_linear", choices=["scaled_linear", "linear"],
                   help="training betas, diffusers names (official training: scaled_linear; recorded in the adapter)")  # fmt: skip
    g.add_argument("--num-ddim-timesteps", type=int, default=NUM_DDIM_TIMESTEPS, help="DDIM solver grid size (50)")
    g.add_argument("--timestep-scaling", type=float, default=MCM_TIMESTEP_SCALING, help="boundary timestep scaling (MCM 4)")
    g.add_argument("--w-min", type=float, default=5.0, help="teacher guidance w ~ U[w-min, w-max], LCM form (scale 1+w)")
    g.add_argument("--w-max", type=float, default=15.0, help="see --w-min (paper: [7, 8] for AnimateDiff; scripts 15)")
    g.add_argument("--loss-type", default="huber", choices=["huber", "l2"], help="consistency distance")
    g.add_argument("--huber-c", type=float, default=0.001, help="pseudo-Huber c")
    g.add_argument("--motion-repr", default="learn", choices=sorted(MOTION_REPRESENTATIONS),
                   help="motion representation of the loss: " + "; ".join(f"{k}: {v}" for k, v in MOTION_REPRESENTATIONS.items()))  # fmt: skip
    g.add_argument("--ema-decay", type=float, default=0.95, help="EMA of the motion head used on the target side")
    g.add_argument("--lambda-real", type=float, default=0.5,
                   help="mixed trajectories: fraction of micro-batches on real latents; the rest start from the "
                   "student's own one-step sample (0 collapses ~5%% of samples to black, paper App. B.1)")  # fmt: skip
    g.add_argument("--mixed-start-step", type=int, default=0, help="optimizer step from which mixed trajectories start")
    g.add_argument("--ema-target", action="store_true", help="paper: EMA student as target (official code: the student itself)")
    g.add_argument("--ema-target-decay", type=float, default=0.95, help="decay of the EMA target (with --ema-target)")
    g = p.add_argument_group("frame discriminator (adversarial loss on a few decoded frames)")
    g.add_argument("--disc", action=argparse.BooleanOptionalAction, default=True, help="use the frame discriminator (MCM's appearance loss)")
    g.add_argument("--disc-backbone", default="facebook/dinov2-small", help="DINOv2 folder or hub id (ViT-S/14); 'tiny' = random, for CPU toys ('tiny:7': with 7-px patches)")
    g.add_argument("--disc-layers", default="2,5,8,11", help="backbone layers whose patch tokens the heads judge")
    g.add_argument("--disc-loss", default="wgan", choices=["wgan", "hinge", "bce"], help="official scripts: wgan; paper: hinge")
    g.add_argument("--disc-weight", type=float, default=1.0, help="λ_adv, weight of the generator's adversarial loss")
    g.add_argument("--disc-lr", type=float, default=5e-5, help="discriminator lr (scaled by total batch × frames / 128: official 1e-4)")
    g.add_argument("--disc-start-step", type=int, default=0, help="optimizer step from which the adversarial loss is on")
    g.add_argument("--disc-update-every", type=int, default=1, help="discriminator update every N micro-batches (update ratio)")
    g.add_argument("--disc-augment", action=argparse.BooleanOptionalAction, default=True,
                   help="differentiable colour/translation/cutout augmentation of real and fake frames (official: on; the toy default: off)")
    g.add_argument("--disc-frames", type=int, default=2, help="frames per clip decoded and judged (official 2)")
    g.add_argument("--disc-gp", type=float, default=1e-5,
                   help="weight of the official 'r1': a gradient penalty on interpolates in DINO-feature space (×5 when it stays ≥ 100)")  # fmt: skip
    g.add_argument("--disc-r1", type=float, default=0.0, help="weight of a true R1 penalty on real images (needs eager attention)")
    g.add_argument("--disc-real", default="video", choices=["video", "images"],
                   help="real side: frames of the same video batch (official distillation) or a high-quality image set")  # fmt: skip
    g.add_argument("--disc-images", default=None, help="image set for --disc-real images: *.tar shards or a folder (+ captions); 'toy'")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="*.tar shards (mp4 + json caption) or a folder of videos with captions; 'toy' = synthetic")
    g.add_argument("--num-frames", type=int, default=16, help="frames per clip (16)")
    g.add_argument("--frame-interval", type=int, default=8, help="frame stride in the source video (official 8)")
    g.add_argument("--resolution", type=int, default=512, help="square crop size in pixels (AnimateDiff 512, ModelScope 256)")
    g.add_argument("--crop", default="random", choices=["random", "center"], help="random-resized (official) or centre crop")
    g.add_argument("--num-workers", type=int, default=4, help="decoding worker processes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--train-batch-size", type=int, default=1, help="videos per process per micro-batch")
    g.add_argument("--gradient-accumulation-steps", type=int, default=16, help="micro-batches per optimizer step")
    g.add_argument("--max-train-steps", type=int, default=30000, help="optimizer steps (paper 30k)")
    g.add_argument("--learning-rate", type=float, default=5e-6, help="LoRA + motion-head learning rate")
    g.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="multiply the lr by total batch / 128 (official; 1.0 at the official batch of 128)")  # fmt: skip
    g.add_argument("--lr-scheduler", default="cosine", help="diffusers scheduler name")
    g.add_argument("--lr-warmup-steps", type=int, default=500, help="warm-up steps")
    g.add_argument("--adam-weight-decay", type=float, default=0.0, help="AdamW weight decay (scripts 0)")
    g.add_argument("--use-8bit-adam", action=argparse.BooleanOptionalAction, default=None,
                   help="bitsandbytes AdamW8bit (default: when bitsandbytes is installed and on a GPU)")  # fmt: skip
    g.add_argument("--max-grad-norm", type=float, default=10.0, help="gradient-norm clip of the LoRA parameters")
    g.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"], help="default: fp16 on a GPU, no on a CPU")
    g = p.add_argument_group("outputs")
    g.add_argument("--checkpointing-steps", type=int, default=500, help="checkpoint every N optimizer steps")
    g.add_argument("--checkpoints-total-limit", type=int, default=None, help="keep only the newest N checkpoints (default: all)")
    g.add_argument("--on-save-error", default="continue", choices=["continue", "stop"],
                   help="a checkpoint that cannot be written (disk full): warn and train on, or stop (earlier checkpoints stay intact)")  # fmt: skip
    g.add_argument("--max-nonfinite-steps", type=int, default=5,
                   help="a step with a non-finite loss or gradient is skipped; after N in a row the run stops with a checkpoint")  # fmt: skip
    g.add_argument("--style", default="custom", help="style label recorded in the adapter (webvid, laion, anime, …)")
    g.add_argument("--adapter-name", default=None, help="display name recorded in the adapter")
    g.add_argument("--toy-eval", action=argparse.BooleanOptionalAction, default=None,
                   help="after training, sample the teacher (50-step and 4-step CFG) and MCM (1/2/4 steps) on toy prompts, "
                   "score motion and frame quality, time them, write preview/ and metrics.json (default: on for --data toy)")  # fmt: skip
    g.add_argument("--eval-guidance", type=float, default=None, help="teacher CFG scale of the toy evaluation (default: 1 + mean of w)")
    g.add_argument("--eval-seeds", type=int, default=2, help="samples per toy prompt in the evaluation")
    g.add_argument("--eval-prompts", type=int, default=8, help="how many of the eight toy prompts to evaluate")
    g.add_argument("--eval-teacher-steps", default="4,50", help="teacher DDIM step counts to compare with (50 = the reference)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions if any(opt in (argv if argv is not None else sys.argv[1:]) for opt in a.option_strings)}
    if args.config:
        import yaml

        try:
            values = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            parser.error(f"--config {args.config}: {exc}")
        known = {a.dest for a in parser._actions}
        for key, value in values.items():
            dest = key.replace("-", "_")
            if dest not in known:
                parser.error(f"--config {args.config}: unknown key {key!r}")
            if dest not in given:
                setattr(args, dest, value)
    if args.teacher is None and args.data is None:  # the embedded default
        for key, value in TOY_DEFAULTS.items():
            if key not in given:
                setattr(args, key, value)
    if args.teacher == str(TOY_TEACHER) and not (TOY_TEACHER / "toy_teacher.json").exists():
        parser.error(f"the toy teacher is missing from {TOY_TEACHER}; rebuild it with: python training/toy_teacher.py")
    if args.teacher is None or args.data is None:
        parser.error("--teacher and --data go together (leave both out for the toy default)")
    if args.toy_eval is None:
        args.toy_eval = args.data == "toy"
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        parser.error(f"--checkpoints-total-limit {args.checkpoints_total_limit}: keep at least 1")
    if args.max_nonfinite_steps < 1:
        parser.error(f"--max-nonfinite-steps {args.max_nonfinite_steps}: must be at least 1")
    if args.num_frames < 2:
        parser.error(f"--num-frames {args.num_frames}: a video needs at least 2 frames")
    return args


def describe_plan(args) -> str:
    steps = ", ".join(f"{n}-step ({', '.join(map(str, lcm_timesteps(n).tolist()))})" for n in (1, 2, 4))
    return (
        f"MCM distillation (arXiv 2406.06890)\n"
        f"  teacher {args.teacher} ({args.teacher_kind}); data {args.data}; {args.num_frames} frames at {args.resolution}px\n"
        f"  consistency distillation on the {args.num_ddim_timesteps}-point DDIM grid, betas {args.beta_schedule}, "
        f"timestep scaling {args.timestep_scaling:g}, teacher w ~ U[{args.w_min:g}, {args.w_max:g}]\n"
        f"  motion loss on '{args.motion_repr}' ({args.loss_type}), mixed trajectories λ_real = {args.lambda_real:g}\n"
        f"  LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g}; {args.max_train_steps} steps\n"
        f"  the adapter samples with the MCM nodes at {steps}\n"
        + (f"  frame discriminator: DINOv2 {args.disc_backbone}, {args.disc_loss}, λ_adv {args.disc_weight:g}, "
           f"{args.disc_frames} frames per clip, real = {args.disc_images if args.disc_real == 'images' else 'video frames'}"
           if args.disc else "  frame discriminator: off (--no-disc)")
    )


# --- run folder and checkpoints ----------------------------------------------------------------------


def toy_cache() -> Path:
    """Where the synthetic toy data is written once and reused (``MCM_TOY_DATA`` overrides it)."""
    return Path(os.environ.get("MCM_TOY_DATA", Path.home() / ".cache" / "comfyui-mcm" / "toy-videos"))


def new_run_dir(output_dir: str, run_name: str | None) -> Path:
    parent = Path(output_dir)
    parent.mkdir(parents=True, exist_ok=True)
    name = run_name or dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    candidate, n = parent / name, 1
    while candidate.exists():  # never reuse a folder that holds an earlier run
        n += 1
        candidate = parent / f"{name}-{n}"
    candidate.mkdir()
    return candidate


def export_adapter(student, teacher, args, step: int, folder: Path, seconds: float) -> None:
    """The node-compatible MCM adapter (``adapter.safetensors``) and the PEFT folder (``peft/``)."""
    from peft import get_peft_model_state_dict

    from mcm.weights import Adapter, AdapterMeta, export_peft, parse_lora_tensors, save_adapter

    state = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(student).items()}
    layers = parse_lora_tensors(state, f"student at step {step}", lambda p, r: float(args.lora_alpha))
    meta = AdapterMeta(
        base=teacher.base,
        motion_module=args.motion_module_version if teacher.kind == "animatediff" else None,
        lora_rank=args.lora_rank,
        lora_alpha=float(args.lora_alpha),
        beta_schedule=args.beta_schedule,
        timestep_scaling=float(args.timestep_scaling),
        num_ddim_timesteps=args.num_ddim_timesteps,
        prediction_type=teacher.unet.config.get("prediction_type", "epsilon") if hasattr(teacher.unet.config, "get") else "epsilon",
        temporal_norm="frames",  # diffusers' motion modules normalise over all frames
        style=args.style,
        name=args.adapter_name or f"{args.style} (step {step})",
        training={
            "teacher": str(args.teacher), "teacher_kind": args.teacher_kind, "data": str(args.data), "step": step,
            "motion_repr": args.motion_repr, "lambda_real": args.lambda_real, "w": [args.w_min, args.w_max],
            "loss": args.loss_type, "lr": args.learning_rate, "frames": args.num_frames, "resolution": args.resolution,
            "seed": args.seed, "seconds": round(seconds, 1), "comfyui_mcm": mcm.__version__,
        },
    )  # fmt: skip
    adapter = Adapter(meta=meta, layers=layers, source=str(folder / "adapter.safetensors"))
    save_adapter(adapter, folder / "adapter.safetensors")
    export_peft(adapter, folder / "peft")


# --- training ----------------------------------------------------------------------------------------


def make_optimizer(params, args, lr: float, use_cuda: bool):
    use_8bit = args.use_8bit_adam
    if use_8bit is None:
        try:
            import bitsandbytes  # noqa: F401

            use_8bit = use_cuda
        except ImportError:
            use_8bit = False
    if use_8bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=(0.9, 0.999), weight_decay=args.adam_weight_decay, eps=1e-8)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=args.adam_weight_decay, eps=1e-8)


ADVERSARIAL_COLUMNS = ("g_loss", "d_loss", "real_logit", "fake_logit", "d_accuracy", "gp", "gp_weight")


class MetricsLog:
    """``metrics.csv``, one row per optimizer step (a resumed run first drops the rows logged after its
    checkpoint), and TensorBoard scalars where TensorBoard is installed; only the main process writes."""

    COLUMNS = ("step", "loss", "lr", "generated_trajectory_fraction", "skipped_samples", "seconds", *ADVERSARIAL_COLUMNS)

    def __init__(self, run_dir: Path, resumed_step: int, enabled: bool = True):
        self.path, self.file, self.writer, self.tb = run_dir / "metrics.csv", None, None, None
        if not enabled:
            return
        truncate_metrics(self.path, resumed_step)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)
        if self.path.stat().st_size == 0:
            self.writer.writerow(self.COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self.tb = None

    def write(self, step: int, loss: float, lr: float, generated: float, skipped: int, seconds: float, adversarial: dict) -> None:
        if self.writer:
            self.writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}", generated, skipped, round(seconds, 2)]
                                 + [f"{adversarial[k]:.6g}" if k in adversarial else "" for k in ADVERSARIAL_COLUMNS])  # fmt: skip
            self.file.flush()
        if self.tb:
            self.tb.add_scalar("loss/consistency", loss, step)
            for key, value in adversarial.items():
                self.tb.add_scalar(f"adversarial/{key}", value, step)
            self.tb.add_scalar("lr", lr, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


class NonFiniteLoss(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def train(args, teacher=None) -> Path:
    """Run the distillation; ``teacher`` (a :class:`training.models.Teacher`) overrides ``--teacher``
    (tests pass a prepared one)."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from training.checkpoints import CheckpointError, check_layout, read_state, resolve_resume, set_aside_newer, set_rng_state, slot_generator
    from training.data import Batches, DataError, VideoClips, data_stopped, write_toy_shards
    from training.memory import PartTimer, frozen_dtype, visiting
    from training.models import VideoUNet, call_unet, load_teacher, make_student

    mixed = args.mixed_precision or ("fp16" if torch.cuda.is_available() else "no")
    weight_dtype = frozen_dtype(args.frozen_dtype, mixed)
    accelerate_on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())  # multi-process CPU runs use gloo
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=mixed, cpu=accelerate_on_cpu)
    set_seed(args.seed + accelerator.process_index)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes

    log = (lambda *a: print(*a, flush=True)) if accelerator.is_main_process else (lambda *a: None)

    # the teacher first: cheap checks before any data is touched
    teacher = teacher or load_teacher(args.teacher, args.teacher_kind, args.motion_adapter, args.unet_checkpoint)
    if args.resolution % (teacher.vae_downsample * 4):
        raise ValueError(f"--resolution {args.resolution}: must be a multiple of {teacher.vae_downsample * 4} for this teacher")
    max_frames = teacher.max_frames
    if max_frames is not None and args.num_frames > max_frames:
        raise ValueError(f"--num-frames {args.num_frames}: this teacher's motion module takes at most {max_frames} frames")

    # where a resumed run continues: its checkpoint, the data positions and the RNG states of each process
    resume_from, state, rngs = None, {}, None
    if args.resume:
        resume_from = resolve_resume(args.resume, args.output_dir, args.run_name)
        state, rngs = read_state(resume_from)
        check_layout(state, resume_from, world, args.train_batch_size, args.gradient_accumulation_steps, args.seed)

    # data: one global stream; this process takes every world-th block of train-batch-size samples
    data_root = args.data
    if data_root == "toy":
        cache = toy_cache()
        frames = max(16, args.num_frames)
        data_root = write_toy_shards(cache / f"{args.resolution}px-{frames}f-seed{args.seed}", frames=frames,
                                     size=args.resolution, seed=args.seed)  # fmt: skip
        args.frame_interval = 1
    dataset = VideoClips(data_root, args.num_frames, args.frame_interval, args.resolution, args.crop, args.seed, rank, world,
                         block=args.train_batch_size, start=state.get("data_positions", [0] * world)[rank])  # fmt: skip
    loader = Batches(dataset, args.train_batch_size, args.num_workers)

    # the run folder, once the inputs are known to be usable
    if resume_from is not None:
        run_dir = resume_from.parent
        if accelerator.is_main_process:
            set_aside_newer(resume_from, log)
    else:
        run_dir = new_run_dir(args.output_dir, args.run_name) if accelerator.is_main_process else None
        run_dir = Path(gather_object([str(run_dir) if run_dir else ""])[0]) if world > 1 else run_dir
    log(describe_plan(args))
    log(f"run folder: {run_dir}")

    # models: the student is the teacher + LoRA; the teacher is the same UNet with the adapter disabled
    for m in (teacher.unet, teacher.vae, teacher.text_encoder):
        m.requires_grad_(False)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)
    if args.gradient_checkpointing:
        teacher.unet.enable_gradient_checkpointing()
    student = make_student(teacher, args.lora_rank, args.lora_alpha)
    lora_params = [p for p in student.parameters() if p.requires_grad]
    for p in lora_params:  # trainable weights stay fp32 whatever the frozen dtype
        p.data = p.data.float()
    head, target_head = make_motion_representation(args.motion_repr, teacher.latent_channels)
    head_params = list(head.parameters()) if isinstance(head, torch.nn.Module) else []
    total_batch = args.train_batch_size * world * args.gradient_accumulation_steps
    lr = args.learning_rate * (total_batch / 128 if args.scale_lr else 1.0)
    optimizer = make_optimizer([{"params": lora_params}, {"params": head_params}], args, lr, torch.cuda.is_available())
    scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * world,
                              num_training_steps=args.max_train_steps * world)  # fmt: skip
    modules = [student] + ([head] if head_params else [])
    prepared = accelerator.prepare(*modules, optimizer, scheduler)
    student_p, head_p = prepared[0], (prepared[1] if head_params else head)
    optimizer, scheduler = prepared[-2], prepared[-1]
    if not args.offload_frozen:
        for m in (teacher.vae, teacher.text_encoder):
            m.to(device)
    if isinstance(target_head, torch.nn.Module):
        target_head.to(device)
    ema_student = None
    if args.ema_target:
        ema_student = copy.deepcopy(accelerator.unwrap_model(student_p)).requires_grad_(False)

    adversary, images = None, None
    if args.disc:
        from training.adversarial import Adversary
        from training.data import ImageCaptions, write_toy_image_shards

        disc_lr = args.disc_lr * (total_batch * args.disc_frames / 128 if args.scale_lr else 1.0)
        adversary = Adversary(args, teacher, device, accelerator, disc_lr, args.max_train_steps, slot_generator(args.seed, rank))
        if args.disc_real == "images":
            root = args.disc_images
            if root is None:
                raise ValueError("--disc-real images needs --disc-images (a folder or *.tar shards of captioned images)")
            if root == "toy":
                root = write_toy_image_shards(toy_cache() / f"images-{args.resolution}px-seed{args.seed}", size=args.resolution, seed=args.seed)
            per_batch = args.train_batch_size * args.disc_frames
            image_set = ImageCaptions(root, args.resolution, args.seed, rank, world, block=per_batch,
                                      start=state.get("image_positions", [0] * world)[rank])  # fmt: skip
            images = Batches(image_set, per_batch, min(args.num_workers, 2))

    schedule = NoiseSchedule(args.beta_schedule)
    config = DistillConfig(args.num_ddim_timesteps, args.timestep_scaling, args.w_min, args.w_max, args.loss_type,
                           args.huber_c, "epsilon", args.lambda_real, args.teacher_cfg_batch)  # fmt: skip
    unwrapped = accelerator.unwrap_model(student_p)

    def student_fn(x, t, c):
        return call_unet(student_p, x, t, c)

    def teacher_fn(x, t, c):
        with unwrapped.disable_adapter():
            return call_unet(unwrapped, x, t, c)

    target_fn = VideoUNet(ema_student) if ema_student is not None else student_fn

    @torch.no_grad()
    def encode_text(captions):
        """Per-token embeddings (the UNet's conditioning) and the pooled one (the discriminator's)."""
        with visiting(teacher.text_encoder, device, args.offload_frozen) as text_encoder:
            out = text_encoder(teacher.tokenizer(captions).to(device))
        return out[0], out.pooler_output.float()

    @torch.no_grad()
    def encode_video(video, generator):
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(device, teacher.vae.dtype)
        with visiting(teacher.vae, device, args.offload_frozen) as vae:
            latents = torch.cat([vae.encode(chunk).latent_dist.sample(generator) for chunk in frames.split(32)])
        latents = latents * teacher.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4).float()

    global_step, micro_done, skip_reasons, start_time = 0, 0, {}, time.time()
    if resume_from is not None:
        load_checkpoint(resume_from, accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary)
        global_step, micro_done, skip_reasons = state["global_step"], state.get("micro_batches", 0), state.get("skip_reasons", {})
        if rngs is not None:
            set_rng_state(rngs[rank])
        log(f"resumed from {resume_from} at step {global_step} (data position {state.get('data_positions')})")

    metrics = MetricsLog(run_dir, global_step, accelerator.is_main_process)

    def counts():
        """Skip reasons summed over processes (this process's local counts plus those at the resume point)."""
        local = dict(skip_local)
        merged = dict(skip_reasons)
        for part in (gather_object([local]) if world > 1 else [local]):
            for k, v in part.items():
                merged[k] = merged.get(k, 0) + v
        return merged

    def checkpoint(step):
        parts = gather_object([(loader.position, images.position if images else 0, rng_state())]) if world > 1 else \
            [(loader.position, images.position if images else 0, rng_state())]  # fmt: skip
        extra = {"micro_batches": micro_done, "skip_reasons": counts(), "data_positions": [p[0] for p in parts],
                 "image_positions": [p[1] for p in parts], "num_processes": world, "train_batch_size": args.train_batch_size,
                 "gradient_accumulation_steps": args.gradient_accumulation_steps}  # fmt: skip
        try:
            save_checkpoint(accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary, teacher, args,
                            step, extra, [p[2] for p in parts], run_dir, time.time() - start_time, log)  # fmt: skip
        except CheckpointError as exc:
            if args.on_save_error == "stop":
                raise
            log(f"warning: {exc}; the earlier checkpoints are intact; training goes on (--on-save-error stop to stop)")

    from training.checkpoints import rng_state

    skip_local = {}
    uncond_cache = {}
    timer = PartTimer(args.dry_run)
    progress = tqdm(total=args.max_train_steps, initial=global_step, disable=not accelerator.is_main_process,
                    desc="distilling", dynamic_ncols=True)  # fmt: skip
    window_losses, window_generated, window_finite, nonfinite_run = [], [], True, 0
    try:
        while global_step < args.max_train_steps:
            generator = slot_generator(args.seed, micro_done * world + rank)
            with timer("data"):
                batch = next(loader)
                for reason, n in batch["skip_reasons"].items():
                    skip_local[reason] = skip_local.get(reason, 0) + n
            with accelerator.accumulate(*modules):
                b = batch["video"].shape[0]
                with timer("encode"):
                    x0 = encode_video(batch["video"], generator)
                    cond, pooled = encode_text(batch["caption"])
                    if b not in uncond_cache:
                        uncond_cache[b] = encode_text([""] * b)[0]
                    uncond = uncond_cache[b]
                generated = global_step >= args.mixed_start_step and use_generated_trajectories(args.lambda_real, generator)
                if generated:
                    with timer("student one-step sample"), accelerator.autocast():
                        x0 = generated_x0(student_fn, torch.randn(x0.shape, generator=generator).to(device), cond, schedule).float()
                index = sample_indices(b, args.num_ddim_timesteps, generator)
                w = sample_guidance(b, args.w_min, args.w_max, generator)
                noise = torch.randn(x0.shape, generator=generator).to(device)
                with timer("distillation step (student, teacher x2, target)"), accelerator.autocast():
                    out = distillation_step(student_fn, teacher_fn, x0, cond, uncond, schedule, config, index=index.to(device),
                                            w=w, noise=noise, target_model=target_fn, motion=head_p, target_motion=target_head)  # fmt: skip
                    loss = out["loss"]
                    adversarial = adversary is not None and global_step >= args.disc_start_step
                    if adversarial:
                        adversary.generator = generator
                        with timer("adversarial: decode frames, discriminator (generator side)"):
                            g_term, fake_frames, c_fake = adversary.generator_term(out["model_pred"], pooled)
                            loss = loss + g_term
                finite = bool(accelerator.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0)  # all processes agree
                window_finite = window_finite and finite
                if finite:
                    with timer("backward"):
                        accelerator.backward(loss)
                if accelerator.sync_gradients:
                    with timer("optimizer"):
                        norm = accelerator.clip_grad_norm_(lora_params, args.max_grad_norm) if args.max_grad_norm > 0 else None
                        if window_finite and (norm is None or torch.isfinite(torch.as_tensor(norm)).item()):
                            optimizer.step()
                            scheduler.step()
                        else:
                            window_finite = False
                        optimizer.zero_grad(set_to_none=True)
                if finite and adversarial and micro_done % args.disc_update_every == 0:
                    with timer("discriminator step"), accelerator.autocast():
                        if images is not None:
                            real_batch = next(images)
                            real, c_real = real_batch["image"].to(device), adversary.text(real_batch["caption"], device)
                        else:
                            real, c_real = adversary.real_from_video(batch["video"].to(device)), c_fake
                        adversary.discriminator_step(real, c_real, fake_frames, c_fake, global_step)
                micro_done += 1
                if finite:
                    window_losses.append(out["loss"].detach().float().item())  # the consistency loss alone
                window_generated.append(float(generated))
            if not accelerator.sync_gradients:
                continue
            if not window_finite:
                nonfinite_run += 1
                window_losses, window_generated, window_finite = [], [], True
                log(f"warning: non-finite loss or gradient at step {global_step + 1}: step skipped ({nonfinite_run} in a row)")
                if nonfinite_run >= args.max_nonfinite_steps:
                    checkpoint(global_step)
                    raise NonFiniteLoss(f"{nonfinite_run} steps in a row had a non-finite loss or gradient (--max-nonfinite-steps "
                                        f"{args.max_nonfinite_steps}); the last good state (step {global_step}) is in {run_dir / f'checkpoint-{global_step}'}; "
                                        "lower the learning rate or try --mixed-precision bf16 / no")  # fmt: skip
                continue
            nonfinite_run = 0
            if isinstance(target_head, torch.nn.Module):
                ema_update(target_head, accelerator.unwrap_model(head_p), args.ema_decay)
            if ema_student is not None:
                ema_update(ema_student, accelerator.unwrap_model(student_p), args.ema_target_decay)
            global_step += 1
            mean_loss = accelerator.reduce(torch.tensor([sum(window_losses) / len(window_losses)], device=device), "mean").item()
            gen_frac = sum(window_generated) / len(window_generated)
            window_losses, window_generated = [], []
            skipped_total = sum(counts().values())
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{scheduler.get_last_lr()[0]:.2e}", skipped=skipped_total)
            metrics.write(global_step, mean_loss, scheduler.get_last_lr()[0], gen_frac, skipped_total, time.time() - start_time,
                          adversary.last if adversary is not None else {})  # fmt: skip
            if args.dry_run:
                break
            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                checkpoint(global_step)
    except KeyboardInterrupt:
        log(f"\ninterrupted at step {global_step}; saving a checkpoint")
        checkpoint(global_step)
        raise
    except (DataError, RuntimeError) as exc:  # the data cannot go on (e.g. a loader worker died): keep what was trained
        stopped, between_steps = data_stopped(exc, data_root)
        if stopped is None:
            raise
        if between_steps and global_step and not (run_dir / f"checkpoint-{global_step}").exists():
            checkpoint(global_step)
        raise stopped from None
    finally:
        progress.close()
        metrics.close()

    accelerator.wait_for_everyone()
    # every process must hold the same LoRA (gradients are averaged across processes before each step)
    checksum = torch.stack([p.detach().double().sum() for p in lora_params]).to(device)
    checksums = accelerator.gather(checksum.unsqueeze(0))
    in_sync = bool(torch.allclose(checksums, checksums[:1].expand_as(checksums), rtol=1e-6, atol=1e-9))
    if not in_sync:
        log("warning: the LoRA weights differ between processes; gradients were not synchronised")
    reasons = counts()
    if args.dry_run:
        gib = 2**30
        report = {"seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
                  "peak_memory_gib": round(getattr(timer, "overall", 0) / gib, 3),
                  "peak_memory_gib_per_part": {k: round(v / gib, 3) for k, v in timer.peak_bytes.items()},
                  "memory": "CUDA allocated" if torch.cuda.is_available() else "process peak resident set (VmHWM)",
                  "loss": window_losses or mean_loss}  # fmt: skip
        log(json.dumps(report, indent=2))
        if accelerator.is_main_process:
            (run_dir / "dry_run.json").write_text(json.dumps(report, indent=2))
        return run_dir
    if accelerator.is_main_process:
        final = run_dir / "final" if not (run_dir / "final").exists() else run_dir / f"final-{global_step}"
        with atomic_dir(final) as tmp:
            export_adapter(accelerator.unwrap_model(student_p), teacher, args, global_step, tmp, time.time() - start_time)
        adapter_path = final / "adapter.safetensors"
        if not (run_dir / "adapter.safetensors").exists():  # the newcomer's shortcut; never replaced
            shutil.copyfile(adapter_path, run_dir / "adapter.safetensors")
            adapter_path = run_dir / "adapter.safetensors"
        summary = {"steps": global_step, "skipped_samples": sum(reasons.values()), "skipped_by_reason": reasons,
                   "seconds": round(time.time() - start_time, 1), "num_processes": world, "processes_in_sync": in_sync,
                   "adapter": str(adapter_path), "peft": str(final / "peft")}  # fmt: skip
        if adversary is not None:
            from training.adversarial import adversarial_summary

            summary["discriminator"] = adversarial_summary(metrics.path)
        if reasons:
            log(f"skipped samples by reason: {json.dumps(reasons)}")
        if args.toy_eval:
            summary["metrics"] = str(toy_evaluation(args, unwrapped, teacher, encode_text, run_dir, log))
        summary["wall_seconds"] = round(time.time() - PROCESS_START, 1)
        tmp_summary = run_dir / ".summary.json.tmp"
        tmp_summary.write_text(json.dumps(summary, indent=2))
        os.replace(tmp_summary, run_dir / "summary.json")
        log(f"done in {summary['wall_seconds']:.0f} s wall (from start-up, evaluation included): {json.dumps(summary)}")
    return run_dir


def toy_evaluation(args, student, teacher, encode_text, run_dir: Path, log) -> Path:
    """Teacher vs MCM on the toy prompts: ``preview/`` (GIF + PNG strip) and ``metrics.json``."""
    from training.toy_eval import ToySampler, evaluate, toy_prompts

    guidance = args.eval_guidance if args.eval_guidance is not None else 1.0 + (args.w_min + args.w_max) / 2
    student.eval()
    sampler = ToySampler(student, teacher.vae, lambda captions: encode_text(captions)[0], teacher.scaling_factor,
                         args.num_frames, args.resolution, teacher.vae_downsample, NoiseSchedule(args.beta_schedule), guidance,
                         timestep_scaling=args.timestep_scaling, num_ddim_timesteps=args.num_ddim_timesteps)  # fmt: skip
    log(f"toy evaluation ({args.eval_seeds} samples per prompt, teacher cfg {guidance:g}):")
    report = evaluate(sampler, run_dir / "preview", toy_prompts()[: args.eval_prompts], seeds=args.eval_seeds,
                      teacher_steps=[int(n) for n in str(args.eval_teacher_steps).split(",") if n.strip()], log=log)  # fmt: skip
    report["run"] = {"steps": args.max_train_steps, "seconds_since_start": round(time.time() - PROCESS_START, 1)}
    path = run_dir / "metrics.json"
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    log(f"previews: {report['previews']['gif']} and {report['previews']['png']}; metrics: {path}")
    return path


def save_checkpoint(accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary, teacher, args, step,
                    extra: dict, rng_states: list, run_dir: Path, seconds: float, log=print):  # fmt: skip
    """``checkpoint-<step>/``: the adapter (+ PEFT folder), motion heads, optimizers and schedulers, trainer
    state (data positions, skip counts) and RNG states, built in a temporary folder and renamed.

    Only trainable state is written (the frozen teacher would be gigabytes per checkpoint). A failed
    write raises :class:`training.checkpoints.CheckpointError` on every process.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from training.checkpoints import CheckpointError, prune, write_checkpoint

    def write_parts(tmp: Path):
        export_adapter(accelerator.unwrap_model(student_p), teacher, args, step, tmp, seconds)
        heads = {}
        if isinstance(target_head, torch.nn.Module):
            heads.update({f"online.{k}": v for k, v in accelerator.unwrap_model(head_p).state_dict().items()})
            heads.update({f"target.{k}": v for k, v in target_head.state_dict().items()})
        if ema_student is not None:
            heads.update({f"ema_student.{k}": v for k, v in get_peft_model_state_dict(ema_student).items()})
        if heads:
            save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(tmp / "trainable_extra.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "adversary": adversary.state_dict() if adversary is not None else None}, tmp / "optimizer.pt")  # fmt: skip

    accelerator.wait_for_everyone()
    final = run_dir / f"checkpoint-{step}"
    error = ""
    if accelerator.is_main_process and not final.exists():
        state = {"global_step": step, "skipped": sum(extra["skip_reasons"].values()), **extra, "args": vars(args)}
        try:
            write_checkpoint(final, write_parts, state, rng_states)
            prune(run_dir, args.checkpoints_total_limit, log)
        except CheckpointError as exc:
            error = str(exc)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    accelerator.wait_for_everyone()
    if error:
        raise CheckpointError(error)


def load_checkpoint(folder: Path, accelerator, student_p, head_p, target_head, ema_student, optimizer, scheduler, adversary=None) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(accelerator.unwrap_model(student_p), load_file(folder / "peft" / "adapter_model.safetensors"))
    extra_path = folder / "trainable_extra.safetensors"
    extra = load_file(extra_path) if extra_path.exists() else {}

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}

    if isinstance(target_head, torch.nn.Module):
        accelerator.unwrap_model(head_p).load_state_dict(part("online."))
        target_head.load_state_dict(part("target."))
    if ema_student is not None:
        set_peft_model_state_dict(ema_student, part("ema_student."))
    state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)  # our own file
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if adversary is not None:
        if state.get("adversary") is None:
            raise ValueError(f"--resume {folder}: the checkpoint has no discriminator state (it was trained with --no-disc)")
        adversary.load_state_dict(state["adversary"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(describe_plan(args))
        return 0
    try:
        train(args)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
