"""The trainer's configuration as one object: a frozen :class:`TrainConfig`, resolved in one place.

Precedence, lowest first: the defaults below (the official scripts' values) < the toy preset
(:data:`training.toy.PRESET`, used when neither ``teacher`` nor ``data`` is given, on the command line or in
the YAML file) < a ``--config`` YAML file < the command line. The parser is built from the dataclass, so
``--help``, the YAML keys and the ``config.yaml`` written into each run folder use the same names. Ranges
and contradictions are refused at parse time naming the flag; no value is rewritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import yaml

from mcm.boundary import MCM_TIMESTEP_SCALING
from mcm.distill import DistillConfig
from mcm.motion import MOTION_REPRESENTATIONS
from mcm.schedule import NUM_DDIM_TIMESTEPS, NUM_TRAIN_TIMESTEPS
from training import toy
from training.prompts import read_prompts

USAGE = """MCM distillation (Motion Consistency Model) of a video teacher into a LoRA student.

    python training/distill.py                         # toy default: CPU, minutes, no downloads
    accelerate launch training/distill.py --teacher PATH --data SHARDS --output-dir runs
    python training/distill.py --config run.yaml       # values from a YAML file (the command line wins)

Precedence: defaults < toy preset (no --teacher/--data) < --config YAML < command line. YAML keys are
the flag names (lora-rank or lora_rank). Each run folder gets config.yaml; --config that file repeats the run.
"""

OFFICIAL_FRAME_INTERVAL = 8  # the official scripts' stride in the source video
#: diffusers' ``SchedulerType`` names (a test keeps them in step with the installed diffusers)
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "piecewise_constant",
)


@dataclass(frozen=True)
class Range:
    """A numeric flag's allowed interval (``None``: unbounded on that side)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"must be {'>' if self.lo_open else 'at least'} {self.lo:g}"
        return f"must lie in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def flag(default, help: str, group: str, kind: type | None = None, choices: tuple = (), range: Range | None = None):
    """A :class:`TrainConfig` field: its default, ``--help`` text, argparse group, type, choices and range."""
    meta = {"help": help, "group": group, "kind": kind or type(default), "choices": tuple(choices), "range": range}
    return dataclasses.field(default=default, metadata=meta)


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(1), Range(0), Range(0, lo_open=True)
UNIT, UNIT_OPEN = Range(0, 1), Range(0, 1, hi_open=True)

_run = partial(flag, group="run")
_model = partial(flag, group="teacher and student")
_cd = partial(flag, group="consistency distillation")
_adv = partial(flag, group="frame discriminator (adversarial loss on a few decoded frames)")
_data = partial(flag, group="data")
_opt = partial(flag, group="optimisation")
_out = partial(flag, group="outputs")


@dataclass(frozen=True)
class TrainConfig:
    """Every flag of ``training/distill.py``; the field name is the flag with ``_`` for ``-``."""

    config: str | None = _run(
        None, "YAML file of flag values (keys as the flags, with _ or -); the command line overrides it", kind=str
    )
    output_dir: str = _run("runs", "parent folder; each run gets a new subfolder")
    run_name: str | None = _run(None, "subfolder name (default: date-time); an existing one is never reused", kind=str)
    resume: str | None = _run(
        None,
        "continue a run exactly from a run or checkpoint folder, or 'latest' (default: a new run)",
        kind=str,
    )
    seed: int = _run(0, "random seed (data order, timesteps, guidance, noise)", range=Range(0, 2**32 - 1))
    dry_run: bool = _run(False, "build everything, run one step, report time per part and peak memory")
    plan: bool = _run(False, "print what the run will do and exit")

    teacher: str | None = _model(
        None,
        "diffusers folder or hub id, or tiny-animatediff / tiny-modelscope (default: the toy "
        "teacher when --data is left out too)",
        kind=str,
    )
    teacher_kind: str = _model("animatediff", "teacher family", choices=("animatediff", "modelscope"))
    motion_adapter: str | None = _model(
        None, "AnimateDiff MotionAdapter folder (default: <teacher>/motion_adapter)", kind=str
    )
    unet_checkpoint: str | None = _model(
        None,
        "single-file SD1.5 checkpoint (original or diffusers layout) whose UNet replaces the "
        "teacher folder's, e.g. a fine-tune; VAE and text encoder stay the folder's "
        "(default: none)",
        kind=str,
    )
    motion_module_version: str = _model("v2", "recorded in the adapter metadata (official: v2, mm v1-5-2)")
    lora_rank: int = _model(64, "LoRA rank (official 64)", range=AT_LEAST_1)
    lora_alpha: float = _model(64.0, "LoRA alpha (official 64; scale alpha/rank = 1)", range=POSITIVE)
    gradient_checkpointing: bool = _model(False, "trade compute for memory in the student's UNet")
    frozen_dtype: str = _model(
        "auto",
        "storage dtype of the frozen teacher UNet, VAE and text encoder (auto: the --mixed-precision "
        "dtype); the LoRA and the motion head stay fp32",
        choices=("auto", "fp32", "fp16", "bf16"),
    )
    offload_frozen: bool = _model(False, "keep VAE and text encoder on the CPU; move them to the GPU per call")
    teacher_cfg_batch: bool = _model(
        False, "one teacher call on [cond; uncond] (faster on a GPU, more memory) instead of two"
    )

    beta_schedule: str = _cd(
        "auto",
        "training betas, diffusers names (auto: the teacher's scheduler config, else scaled_linear, the "
        "official training's; recorded in the adapter)",
        choices=("auto", "scaled_linear", "linear"),
    )
    prediction_type: str = _cd(
        "auto",
        "the teacher's output (auto: its scheduler/scheduler_config.json, else epsilon); a flag that "
        "contradicts the teacher's config is refused",
        choices=("auto", "epsilon", "v_prediction"),
    )
    num_ddim_timesteps: int = _cd(NUM_DDIM_TIMESTEPS, "DDIM solver grid size", range=Range(1, NUM_TRAIN_TIMESTEPS))
    timestep_scaling: float = _cd(MCM_TIMESTEP_SCALING, "boundary timestep scaling (MCM 4)", range=POSITIVE)
    w_min: float = _cd(
        DistillConfig.w_min, "teacher guidance w ~ U[w-min, w-max], LCM form (scale 1+w)", range=AT_LEAST_0
    )
    w_max: float = _cd(DistillConfig.w_max, "see --w-min (paper: [7, 8] for AnimateDiff; scripts 15)", range=AT_LEAST_0)
    loss_type: str = _cd("huber", "consistency distance", choices=("huber", "l2"))
    huber_c: float = _cd(DistillConfig.huber_c, "pseudo-Huber c", range=POSITIVE)
    motion_repr: str = _cd(
        "learn",
        "motion representation of the loss: " + "; ".join(f"{k}: {v}" for k, v in MOTION_REPRESENTATIONS.items()),
        choices=tuple(sorted(MOTION_REPRESENTATIONS)),
    )
    ema_decay: float = _cd(0.95, "EMA of the motion head used on the target side", range=UNIT_OPEN)
    motion_head_lr_mult: float = _cd(
        1.0,
        "learning rate of the learnable motion head as a multiple of the LoRA's (official: 1, "
        "one optimizer, one lr; the head starts as the identity and at 1 barely moves in a short run)",
        range=POSITIVE,
    )
    lambda_real: float = _cd(
        DistillConfig.lambda_real,
        "mixed trajectories: fraction of micro-batches on real latents; the rest start from the student's "
        "own one-step sample (0 collapses ~5% of samples to black, paper App. B.1)",
        range=UNIT,
    )
    mixed_start_step: int = _cd(0, "optimizer step from which mixed trajectories start", range=AT_LEAST_0)
    ema_target: bool = _cd(False, "paper: EMA student as target (official code: the student itself)")
    ema_target_decay: float = _cd(0.95, "decay of the EMA target (with --ema-target)", range=UNIT_OPEN)

    disc: bool = _adv(True, "use the frame discriminator (MCM's appearance loss)")
    disc_backbone: str = _adv(
        "facebook/dinov2-small",
        "DINOv2 folder or hub id (ViT-S/14); it sees frames area-resized to 224 px (a "
        "random 224 crop half the time when larger): 16 x 16 patch tokens of 14 px, whatever its size; "
        "'tiny' = random, 56 px, for CPU toys ('tiny:7': with 7-px patches)",
    )
    disc_layers: str = _adv("2,5,8,11", "backbone layers whose patch tokens the heads judge (comma-separated integers)")
    disc_loss: str = _adv("wgan", "official scripts: wgan; paper: hinge", choices=("wgan", "hinge", "bce"))
    disc_weight: float = _adv(1.0, "λ_adv, weight of the generator's adversarial loss", range=AT_LEAST_0)
    disc_lr: float = _adv(
        5e-5,
        "discriminator lr (scaled by total batch × frames / 128: official 1e-4); its schedule "
        "(--lr-scheduler) counts discriminator updates: warm-up and length divided by --disc-update-every",
        range=POSITIVE,
    )
    disc_start_step: int = _adv(0, "optimizer step from which the adversarial loss is on", range=AT_LEAST_0)
    disc_update_every: int = _adv(
        1,
        "one discriminator update every N optimizer steps (official 1), from the gradient of all "
        "micro-batches of that step's window, averaged across processes",
        range=AT_LEAST_1,
    )
    disc_augment: bool = _adv(
        True, "differentiable colour/translation/cutout augmentation of real and fake frames (official: on)"
    )
    disc_frames: int = _adv(
        2, "frames per clip decoded and judged (official 2; at most --num-frames)", range=AT_LEAST_1
    )
    disc_gp: float = _adv(
        1e-5,
        "weight of the official 'r1': gradient penalty on interpolates in DINO-feature space (×5 when it stays ≥ 100)",
        range=AT_LEAST_0,
    )
    disc_r1: float = _adv(0.0, "weight of a true R1 penalty on real images (needs eager attention)", range=AT_LEAST_0)
    disc_real: str = _adv(
        "video",
        "real side: frames of the same video batch (official distillation) or a high-quality image set",
        choices=("video", "images"),
    )
    disc_images: str | None = _adv(
        None, "image set for --disc-real images: *.tar shards or a folder (+ captions); 'toy' (default: none)", kind=str
    )

    data: str | None = _data(
        None,
        "*.tar shards (mp4 + json caption) or a folder of videos with captions; 'toy' = synthetic "
        "(default: the toy set when --teacher is left out too)",
        kind=str,
    )
    num_frames: int = _data(16, "frames per clip", range=Range(2))
    frame_interval: int | None = _data(
        None,
        "frame stride in the source video (default: 8, the official; 1 for --data toy, whose clips are 16 frames long)",
        kind=int,
        range=AT_LEAST_1,
    )
    resolution: int = _data(512, "square crop size in pixels (AnimateDiff 512, ModelScope 256)", range=AT_LEAST_1)
    crop: str = _data("random", "random-resized (official) or centre crop", choices=("random", "center"))
    num_workers: int = _data(4, "decoding worker processes (0: decode in the training process)", range=AT_LEAST_0)

    train_batch_size: int = _opt(1, "videos per process per micro-batch", range=AT_LEAST_1)
    gradient_accumulation_steps: int = _opt(16, "micro-batches per optimizer step", range=AT_LEAST_1)
    max_train_steps: int = _opt(30000, "optimizer steps (paper 30k)", range=AT_LEAST_1)
    learning_rate: float = _opt(5e-6, "LoRA + motion-head learning rate", range=POSITIVE)
    scale_lr: bool = _opt(True, "multiply the lr by total batch / 128 (official; 1.0 at the official batch of 128)")
    lr_scheduler: str = _opt("cosine", "diffusers scheduler name", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _opt(500, "warm-up steps", range=AT_LEAST_0)
    adam_weight_decay: float = _opt(0.0, "AdamW weight decay (scripts 0)", range=AT_LEAST_0)
    use_8bit_adam: bool | None = _opt(
        None, "bitsandbytes AdamW8bit (default: when bitsandbytes is installed and on a GPU)", kind=bool
    )
    max_grad_norm: float = _opt(10.0, "gradient-norm clip of the LoRA parameters (0: no clip)", range=AT_LEAST_0)
    mixed_precision: str | None = _opt(
        None,
        "default: fp16 on a GPU, no on a CPU; bf16 is recommended where the GPU has it (no "
        "loss scaling; under fp16 the discriminator's loss goes through a loss scaler of its own)",
        choices=("no", "fp16", "bf16"),
        kind=str,
    )

    checkpointing_steps: int = _out(500, "checkpoint every N optimizer steps (and at the end)", range=AT_LEAST_1)
    checkpoints_total_limit: int | None = _out(
        None, "keep only the newest N checkpoints (default: all)", kind=int, range=AT_LEAST_1
    )
    on_save_error: str = _out(
        "continue",
        "a checkpoint that cannot be written (disk full): warn and train on, or stop (earlier checkpoints stay intact)",
        choices=("continue", "stop"),
    )
    max_nonfinite_steps: int = _out(
        5,
        "a step with a non-finite loss or gradient is skipped; after N in a row the run stops with a checkpoint",
        range=AT_LEAST_1,
    )
    validation_steps: int = _out(
        500,
        "MCM 1/2/4-step samples and the held-out consistency error every N optimizer steps (0: off)",
        range=AT_LEAST_0,
    )
    validation_prompts: str | None = _out(
        None,
        "text file, one validation prompt per line (default: four general prompts; toy data: the toy prompts)",
        kind=str,
    )
    keep_best: bool = _out(
        False, "keep the adapter with the lowest held-out consistency error as <run>/best/ (needs --validation-steps)"
    )
    style: str = _out("custom", "style label recorded in the adapter (webvid, laion, anime, …)")
    adapter_name: str | None = _out(None, "display name in the adapter (default: '<style> (step N)')", kind=str)
    toy_eval: bool | None = _out(
        None,
        "after training, sample the teacher (50-step and 4-step CFG) and MCM (1/2/4 steps) on toy "
        "prompts, score motion and frame quality, time them, write preview/ and metrics.json "
        "(default: on for --data toy)",
        kind=bool,
    )
    eval_guidance: float | None = _out(
        None, "teacher CFG scale of the toy evaluation (default: 1 + mean of w)", kind=float, range=POSITIVE
    )
    eval_seeds: int = _out(2, "samples per toy prompt in the evaluation", range=AT_LEAST_1)
    eval_prompts: int = _out(8, "how many of the eight toy prompts to evaluate", range=Range(1, 8))
    eval_teacher_steps: str = _out("4,50", "teacher DDIM step counts to compare with (50 = the reference; empty: none)")


FIELDS = {f.name: f for f in fields(TrainConfig)}


class ConfigError(ValueError):
    """A value the trainer refuses; the message names the flag (or the file and key) and what was expected."""


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- the command line and the YAML file ---------------------------------------------------------------


#: characters that end a line (``str.splitlines``), written escaped in an error so that it stays one line
LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def shown(token: str) -> str:
    """A command-line token as an error shows it: quoted when it is empty, has spaces or is not printable."""
    return token if token and token.isprintable() and " " not in token else repr(token)


class Parser(argparse.ArgumentParser):
    """argparse, with every error on one line (a value with a line break is shown escaped) and the
    unrecognized arguments shown so that an empty one or one with spaces can be seen."""

    def parse_args(self, args=None, namespace=None):
        given, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(shown(a) for a in extra)}")
        return given

    def error(self, message: str):
        super().error(message.translate(LINE_BREAKS))


def build_parser() -> argparse.ArgumentParser:
    """The command line, built from :class:`TrainConfig`. Defaults are suppressed, so the namespace holds
    only what was given (``--flag v``, ``--flag=v``, ``--[no-]flag``); abbreviations are refused (a prefix
    that is unique today becomes ambiguous, or another flag, when a flag is added)."""
    p = Parser(
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        kwargs = (
            {"action": argparse.BooleanOptionalAction}
            if meta["kind"] is bool
            else {"type": meta["kind"], "metavar": METAVARS[meta["kind"]]}
        )
        if meta["choices"]:
            kwargs.update(choices=meta["choices"], metavar=None)
        group.add_argument(flag_name(f.name), dest=f.name, help=help_text(f), **kwargs)
    return p


METAVARS = {int: "N", float: "X", str: "S"}


def help_text(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    if f.default is not None or "default" not in text:
        text += f" (default: {show(f.default)})"
    if f.name in toy.PRESET and f.name not in ("teacher", "data"):
        text += f" [toy preset: {show(toy.PRESET[f.name])}]"
    return text.replace("%", "%%")


def show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = []
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults': its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice", key_node.start_mark
                    )
                seen.append(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str) -> dict:
    """The values of a YAML config file, converted with the flags' types; unknown keys are refused."""
    where = f"--config {path}"
    try:
        loaded = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8, a date such as 2020-13-45, ...
        raise ConfigError(f"{where}: not a readable YAML file ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not a readable YAML file (nested too deeply)") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping of flag names to values, got a YAML {type(loaded).__name__}")
    values = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS or name == "config":
            hint = (
                "a config file cannot name another"
                if name == "config"
                else "the keys are the flag names, e.g. lora-rank"
            )
            raise ConfigError(f"{where}: unknown key {key!r} ({hint})")
        if name in values:
            raise ConfigError(f"{where}: key {key!r} is given twice (as {name.replace('_', '-')} and {name})")
        values[name] = convert(FIELDS[name], value, f"{where}: key {key!r}")
    return values


KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def convert(f: dataclasses.Field, value, where: str):
    """``value`` from a YAML file as the flag's type (strings parsed as on the command line)."""
    kind, expected = f.metadata["kind"], KIND_NAMES[f.metadata["kind"]]
    if value is None and f.default is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        hint = (
            " (YAML reads yes/no/on/off as booleans: quote the value)"
            if isinstance(value, bool) and kind is str
            else ""
        )
        raise ConfigError(f"{where}: expected {expected}, got {value!r}{hint}")
    if kind is int and isinstance(value, float):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    try:
        converted = kind(value)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    if f.metadata["choices"] and converted not in f.metadata["choices"]:
        raise ConfigError(f"{where}: {converted!r} is not one of {', '.join(f.metadata['choices'])}")
    return converted


def resolve(given: dict, from_file: dict) -> TrainConfig:
    """defaults < toy preset < YAML < command line, in one place."""
    values = {f.name: f.default for f in fields(TrainConfig)}
    if not {"teacher", "data"} & (given.keys() | from_file.keys()):  # the embedded default
        values.update(toy.PRESET)
    values.update(from_file)
    values.update(given)
    toy_data = values["data"] == "toy"
    if values["frame_interval"] is None:  # the derived defaults the help states
        values["frame_interval"] = 1 if toy_data else OFFICIAL_FRAME_INTERVAL
    if values["toy_eval"] is None:
        values["toy_eval"] = toy_data
    return TrainConfig(**values)


def parse_args(argv=None) -> TrainConfig:
    """The configuration of this run; bad values end with ``error: ...`` and exit status 2."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        cfg = resolve(given, read_config_file(given["config"]) if "config" in given else {})
        validate(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    return cfg


# --- validation -----------------------------------------------------------------------------------------


def validate(cfg: TrainConfig) -> None:
    """Refuse a value the run cannot use, naming the flag; nothing is changed."""
    for f in fields(cfg):
        value, allowed = getattr(cfg, f.name), f.metadata["range"]
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_name(f.name)} {value}: must be a finite number")
        if allowed is not None and value is not None and value not in allowed:
            raise ConfigError(f"{flag_name(f.name)} {value}: {allowed}")
    if cfg.teacher is None or cfg.data is None:
        raise ConfigError("--teacher and --data go together (leave both out for the toy default)")
    if problem := toy.missing_teacher(cfg):
        raise ConfigError(problem)
    if cfg.w_min > cfg.w_max:
        raise ConfigError(f"--w-min {cfg.w_min:g} is above --w-max {cfg.w_max:g}")
    integers("--disc-layers", cfg.disc_layers, low=0, empty=False)
    integers("--eval-teacher-steps", cfg.eval_teacher_steps, low=1, empty=True)
    if cfg.disc and cfg.disc_frames > cfg.num_frames:
        raise ConfigError(f"--disc-frames {cfg.disc_frames}: at most --num-frames ({cfg.num_frames})")
    if cfg.validation_prompts is not None and cfg.validation_steps > 0:
        try:
            read_prompts(cfg.validation_prompts, "--validation-prompts")
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    if cfg.keep_best and cfg.validation_steps == 0:
        raise ConfigError(
            "--keep-best needs --validation-steps N (it keeps the adapter with the lowest validation error)"
        )
    if cfg.disc and cfg.disc_real == "images" and cfg.disc_images is None:
        raise ConfigError(
            "--disc-real images needs --disc-images (a folder or *.tar shards of captioned images, or 'toy')"
        )
    if problem := toy.stride_error(cfg):
        raise ConfigError(problem)
    try:
        existing = next(
            p for p in (Path(cfg.output_dir).absolute(), *Path(cfg.output_dir).absolute().parents) if p.exists()
        )
    except OSError as exc:  # a name too long for the file system
        raise ConfigError(f"--output-dir {cfg.output_dir}: {exc.strerror}") from None
    if not existing.is_dir():
        raise ConfigError(f"--output-dir {cfg.output_dir}: {existing} is a file, not a folder")


def integers(name: str, text: str, low: int, empty: bool) -> list[int]:
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if (
        not all(re.fullmatch(r"-?[0-9]{1,18}", t) for t in parts)
        or any(int(t) < low for t in parts)
        or not (parts or empty)
    ):
        raise ConfigError(f"{name} {text!r}: expected comma-separated integers of at least {low}, e.g. 2,5,8,11")
    return [int(t) for t in parts]


# --- config.yaml and resume -------------------------------------------------------------------------------

NOT_RECORDED = ("config", "resume", "plan")  # how the run was started, not what it trains
#: values a resume may change: where and how often things are written, workers, memory-only switches, evaluation
RESUME_MAY_CHANGE = frozenset(NOT_RECORDED) | {
    "output_dir",
    "run_name",
    "dry_run",
    "max_train_steps",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "on_save_error",
    "max_nonfinite_steps",
    "num_workers",
    "gradient_checkpointing",
    "offload_frozen",
    "style",
    "adapter_name",
    "motion_module_version",
    "toy_eval",
    "eval_guidance",
    "eval_seeds",
    "eval_prompts",
    "eval_teacher_steps",
    "validation_steps",
    "validation_prompts",
    "keep_best",
}


def write_config(cfg: TrainConfig, run_dir: Path, resumed_at: int | None = None) -> Path:
    """Every resolved value as YAML (keys as the flags): ``--config`` on it repeats the run. A resumed run
    keeps the folder's ``config.yaml`` and writes ``config-resume-<step>.yaml`` beside it."""
    name = "config.yaml" if resumed_at is None else f"config-resume-{resumed_at}.yaml"
    values = {k.replace("_", "-"): v for k, v in vars(cfg).items() if k not in NOT_RECORDED}
    header = (
        "# every value of this run (defaults included); repeat it with: python training/distill.py --config "
        "<this file>\n"
    )
    tmp = run_dir / f".{name}.tmp"
    tmp.write_text(header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, run_dir / name)
    return run_dir / name


def recorded_config(checkpoint: Path, state: dict) -> tuple[dict, str]:
    """The values the checkpoint's run was started with: its run folder's ``config.yaml``, or (older runs)
    the flags stored in ``trainer_state.json``; and where they were read."""
    path = checkpoint.parent / "config.yaml"
    if path.is_file():
        try:
            return read_config_file(str(path)), str(path)
        except ConfigError as exc:
            raise ConfigError(f"--resume {checkpoint}: {exc}") from None
    return dict(state.get("args") or {}), str(checkpoint / "trainer_state.json")


def check_resume(cfg: TrainConfig, checkpoint: Path, state: dict) -> None:
    """Refuse a resume that changes a value an exact continuation depends on, naming the flag and both values."""
    saved, source = recorded_config(checkpoint, state)
    changed = [
        f"{flag_name(k)} {show(v)} (the checkpoint's run: {show(saved[k])})"
        for k, v in vars(cfg).items()
        if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != v
    ]
    if changed:
        raise ConfigError(
            f"--resume {checkpoint}: this run changes what the checkpoint was trained with: {'; '.join(changed)}; an "
            f"exact resume needs the values recorded in {source} (e.g. --config that file, or start a new run)"
        )
