"""Evaluate with the paper's metrics (FVD, FID, CLIPSIM) and write them in the layout of its Tables 1–3.

    python training/evaluate.py --teacher PATH [--motion-adapter PATH] [--adapter ADAPTER] --prompts prompts.txt \
        --methods teacher:50,mcm:1,mcm:2,mcm:4,mcm:8 --i3d i3d_torchscript.pt --real-videos webvid_val/ \
        --inception inception-2015-12-05.pt --real-images laion_aes/ --clip openai/clip-vit-base-patch16 --out eval/
    python training/evaluate.py --videos "MCM:4=samples/" ...   # score videos made elsewhere (METHOD:STEPS=FOLDER)

Rows are methods with their step counts; columns per step count FVD ↓, FID ↓, CLIPSIM ↑ (a metric whose
inputs are not given is left out). ``results.json`` holds every number and the settings; ``results.md`` the
table. Bad input: a video or image that cannot be used (undecodable, empty, too few frames for FVD, no
usable caption for CLIPSIM) is skipped and listed by file under the row's ``skipped`` (or
``reference_skipped``); a missing or wrong detector file, a folder with nothing usable or a bad flag is
one ``error:`` line naming it, exit status 2.

* **FVD**: Fréchet distance (``mcm.metrics``) between I3D features of generated and real videos. Detector:
  the TorchScript I3D of StyleGAN-V (``i3d_torchscript.pt``, Kinetics-400, a port of the TF-Hub I3D of the
  original FVD code), called as ``detector(x, rescale=True, resize=True, return_features=True)`` with ``x``
  the clips as ``uint8 [b, 3, f, h, w]`` (0–255): the detector itself maps them to [−1, 1] and resizes to
  224×224; it returns the 400 logits before the softmax as features. Clips of 16 frames, as StyleGAN-V and
  the MCM-Simplified fork's FVD script use (``--fvd-frames``: the first n frames of each video).
* **FID**: Fréchet distance between Inception-v3 pool features (2048) of every generated frame and of a set
  of images. Detector: NVlabs' TorchScript ``inception-2015-12-05.pt`` (the TF Inception of the original
  FID code), called as ``detector(x, return_features=True)`` with ``x`` ``uint8 [b, 3, h, w]``; it resizes
  to 299×299 itself.
* **CLIPSIM**: cosine similarity between the CLIP image embedding of each frame and the text embedding of
  its prompt, averaged over frames and videos (transformers ``CLIPModel``; ViT-B/16 as in the paper, a local
  folder or hub id). Reported as 100 × cosine (``--clipsim-scale``): the scale common in video-generation
  tables, where CLIPSIM reads about 30. The paper's own text is not in this repository's notes, so the
  scale is a documented assumption and recorded in ``results.json``. Frames are resized (shorter side,
  bicubic) and centre-cropped to the model's image size and normalised with CLIP's mean and std.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcm.metrics import frechet_distance_of  # noqa: E402
from mcm.schedule import NoiseSchedule  # noqa: E402
from mcm.weights import AdapterError, load_adapter, read_safetensors_metadata  # noqa: E402
from mcm.weights.export import export_peft  # noqa: E402
from mcm.weights.peft import PEFT_WEIGHTS  # noqa: E402
from training.eval_inputs import read_images, read_videos  # noqa: E402
from training.models import HFTokenizer, accept_input_keyword, load_teacher  # noqa: E402
from training.prompts import read_prompts  # noqa: E402
from training.sampling import VideoSampler  # noqa: E402

I3D_SOURCE = (
    "i3d_torchscript.pt",
    "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V's FVD detector)",
)
INCEPTION_SOURCE = (
    "inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt (NVlabs)",
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
METRICS = (("fvd", "FVD ↓"), ("fid", "FID ↓"), ("clipsim", "CLIPSIM ↑"))


#: Keyword arguments each detector's ``forward`` must take (its TorchScript schema is checked at load).
DETECTOR_KEYWORDS = {I3D_SOURCE[0]: ("rescale", "resize", "return_features"), INCEPTION_SOURCE[0]: ("return_features",)}


class DetectorError(FileNotFoundError):
    """A feature detector file that is missing, not a TorchScript module, or not the detector expected."""


# --- feature extractors -----------------------------------------------------------------------------


def _last_line(exc: Exception) -> str:
    """The last line of an error (TorchScript errors carry their script's traceback before it), shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


class Detector:
    """A TorchScript detector that names its file when it does not behave as the expected one."""

    def __init__(self, module, path: Path, source: tuple[str, str]):
        self.module, self.path, (self.expected, self.where) = module, path, source

    def _error(self, what: str) -> DetectorError:
        return DetectorError(f"{self.path}: {what}; expected {self.expected}, from {self.where}")

    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        try:
            out = self.module(x, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise self._error(
                f"the detector failed on a {str(x.dtype).replace('torch.', '')} {list(x.shape)} batch "
                f"({_last_line(exc)})"
            ) from None
        if not torch.is_tensor(out) or out.ndim != 2 or len(out) != len(x):
            got = f"a tensor of shape {list(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
            raise self._error(f"the detector returned {got} for {len(x)} inputs, not features [batch, d]")
        return out


def load_detector(path: str | Path, source: tuple[str, str], device="cpu") -> Detector:
    """A TorchScript detector from a local file; clear errors naming the file, what was expected and where
    to get it (missing, not TorchScript, or a ``forward`` without the detector's keywords)."""
    name, where = source
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"{path}: no such detector file; expected {name}, from {where}")
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises (MemoryError for a corrupt size, ...)
        raise DetectorError(
            f"{path}: not a TorchScript module ({_last_line(exc)}); expected {name}, from {where}"
        ) from None
    try:
        takes = [a.name for a in module.forward.schema.arguments]
    except (AttributeError, RuntimeError):
        takes = []
    missing = [k for k in DETECTOR_KEYWORDS.get(name, ()) if k not in takes]
    if missing:
        raise DetectorError(
            f"{path}: a TorchScript module whose forward takes {takes[1:]}, without {missing}: "
            f"not the detector expected here ({name}, from {where})"
        )
    return Detector(module.to(device), path, source)


@torch.no_grad()
def i3d_features(videos: list[np.ndarray], detector, frames: int = 16, batch: int = 8, device="cpu") -> torch.Tensor:
    """``[n, d]`` I3D features of ``uint8 [f, h, w, 3]`` videos (their first ``frames`` frames)."""
    short = [i for i, v in enumerate(videos) if len(v) < frames]
    if short:
        raise ValueError(
            f"FVD needs {frames} frames per video; videos {short[:5]} have {[len(videos[i]) for i in short[:5]]}"
        )
    feats = []
    for start in range(0, len(videos), batch):
        chunk = [v[:frames] for v in videos[start : start + batch]]
        shapes = {v.shape for v in chunk}
        if len(shapes) > 1:
            raise ValueError(
                f"videos {start}..{start + len(chunk) - 1} differ in size {sorted(shapes)}; FVD batches need one size"
            )
        x = torch.from_numpy(np.stack(chunk)).permute(0, 4, 1, 2, 3).to(device)  # [b, 3, f, h, w] uint8
        feats.append(detector(x, rescale=True, resize=True, return_features=True).float().cpu())
    return torch.cat(feats)


@torch.no_grad()
def inception_features(frames: list[np.ndarray], detector, batch: int = 64, device="cpu") -> torch.Tensor:
    """``[n, 2048]`` Inception pool features of ``uint8 [h, w, 3]`` images (batched by size)."""
    feats = [None] * len(frames)
    by_shape: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        by_shape.setdefault(f.shape, []).append(i)
    for index in by_shape.values():
        for start in range(0, len(index), batch):
            part = index[start : start + batch]
            x = torch.from_numpy(np.stack([frames[i] for i in part])).permute(0, 3, 1, 2).to(device)
            out = detector(x, return_features=True).float().cpu()
            for i, row in zip(part, out):
                feats[i] = row
    return torch.stack(feats)


def _as_tensor(out):
    return out if torch.is_tensor(out) else out.pooler_output  # transformers ≥ 5 may return a model output


class ClipScorer:
    """CLIPSIM with a transformers ``CLIPModel`` and a tokenizer ``captions -> LongTensor [n, 77]``."""

    def __init__(self, model, tokenizer, scale: float = 100.0, device="cpu"):
        self.model, self.tokenizer, self.scale, self.device = model.eval().to(device), tokenizer, scale, device
        self.size = int(model.config.vision_config.image_size)

    @classmethod
    def from_pretrained(cls, name: str, scale: float = 100.0, device="cpu") -> ClipScorer:
        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(name)
            tokenizer = HFTokenizer(CLIPTokenizer.from_pretrained(name))
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"--clip {name}: cannot load a CLIP model and tokenizer ({str(exc).splitlines()[0]}); "
                "give a local folder of openai/clip-vit-base-patch16 (the paper's ViT-B/16)"
            ) from None
        return cls(model, tokenizer, scale, device)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """``uint8 [n, h, w, 3]`` → normalised ``[n, 3, s, s]``: shorter side to s (bicubic), centre crop."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(
            x,
            size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
            mode="bicubic",
            antialias=True,
            align_corners=False,
        )
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size].clamp(0, 1)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def __call__(self, videos: list[np.ndarray], prompts: list[str]) -> float:
        """Mean over videos of the mean over frames of ``scale · cos(image, text)``."""
        if len(videos) != len(prompts):
            raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
        text = F.normalize(
            _as_tensor(self.model.get_text_features(input_ids=self.tokenizer(prompts).to(self.device))).float(), dim=-1
        )
        scores = []
        for video, t in zip(videos, text):
            image = F.normalize(
                _as_tensor(self.model.get_image_features(pixel_values=self.preprocess(video))).float(), dim=-1
            )
            scores.append(float((image @ t).mean()) * self.scale)
        return float(np.mean(scores))


# --- generating videos --------------------------------------------------------------------------------


def parse_methods(spec: str) -> list[tuple[str, int]]:
    """``teacher:50,mcm:4`` → ``[("teacher", 50), ("mcm", 4)]``."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        kind, _, steps = item.partition(":")
        if kind not in ("teacher", "mcm") or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--methods item {item!r}: expected teacher:N or mcm:N with N >= 1 steps")
        out.append((kind, int(steps)))
    return out


#: The ``mcm.*`` metadata entries the MCM rows are sampled with (:func:`adapter_sampling`).
SAMPLING_ENTRIES = ("timestep_scaling", "beta_schedule", "prediction_type", "num_ddim_timesteps")


def adapter_sampling(path: str | Path, log=print):
    """The adapter at ``path`` and the sampling settings its metadata records (:data:`SAMPLING_ENTRIES`).

    An adapter file of this package must carry each entry (the trainer writes them all): a missing one
    is an error naming the file and the entry, as is an invalid value (checked by ``load_adapter``). A
    file without MCM metadata (the official PEFT releases) samples with the official settings, and the
    log says so. diffusers' motion modules normalise over the frames, so an adapter recording
    ``mcm.temporal_norm = "per_frame"`` (made for stock AnimateDiff-Evolved) is refused.
    """
    adapter = load_adapter(path)
    source = Path(adapter.source)
    header = source / PEFT_WEIGHTS if source.is_dir() else source
    if adapter.metadata_source == "file":
        recorded = read_safetensors_metadata(header)
        missing = [f"mcm.{k}" for k in SAMPLING_ENTRIES if f"mcm.{k}" not in recorded]
        if missing:
            raise AdapterError(
                f"{header}: metadata entries {missing} missing; the MCM rows are sampled with "
                f"{['mcm.' + k for k in SAMPLING_ENTRIES]} as the adapter was trained"
            )
    else:
        log(f"{header}: no MCM metadata; sampling with the official settings ({adapter.meta.summary()})")
    if adapter.meta.temporal_norm != "frames":
        raise AdapterError(
            f"{header}: mcm.temporal_norm = {adapter.meta.temporal_norm!r}; evaluate samples with diffusers' "
            "motion modules, which normalise over the frames ('frames')"
        )
    return adapter, {k: getattr(adapter.meta, k) for k in SAMPLING_ENTRIES}


def load_generator(args):
    """A :class:`training.sampling.VideoSampler` over the teacher, with the adapter (if any) as the student,
    sampling with the adapter's settings (``--beta-schedule`` overrides its betas)."""
    teacher = load_teacher(args.teacher, args.teacher_kind, args.motion_adapter, args.unet_checkpoint)
    unet, settings = teacher.unet, {}
    if args.adapter:
        from peft import PeftModel

        adapter, settings = adapter_sampling(args.adapter)
        with tempfile.TemporaryDirectory(prefix="mcm-eval-") as tmp:  # PEFT reads the folder once, here
            unet = PeftModel.from_pretrained(teacher.unet, str(export_peft(adapter, Path(tmp) / "peft")))
        for module in unet.modules():
            if hasattr(module, "lora_A"):
                accept_input_keyword(module)
    device = torch.device(args.device)
    for m in (unet, teacher.vae, teacher.text_encoder):
        m.eval().requires_grad_(False).to(device)

    @torch.no_grad()
    def encode_text(captions):
        return teacher.text_encoder(teacher.tokenizer(captions).to(device))[0]

    beta = args.beta_schedule or settings.pop("beta_schedule", None) or "scaled_linear"
    settings.pop("beta_schedule", None)
    sampler = VideoSampler(
        unet,
        teacher.vae,
        encode_text,
        teacher.scaling_factor,
        args.frames,
        args.resolution,
        teacher.vae_downsample,
        NoiseSchedule(beta),
        args.guidance,
        **settings,
    )
    return sampler


def generate(sampler, prompts: list[str], kind: str, steps: int, seed: int, batch: int) -> list[np.ndarray]:
    """``uint8 [f, h, w, 3]`` videos, one per prompt, sampled ``batch`` prompts at a time."""
    if kind == "mcm" and not hasattr(sampler.unet, "disable_adapter"):
        raise ValueError("mcm rows need --adapter (the teacher alone has no MCM student)")
    videos = []
    for start in range(0, len(prompts), batch):
        latents = getattr(sampler, kind)(prompts[start : start + batch], steps, seed + start)
        videos += sampler.decode(latents.to(next(sampler.vae.parameters()).device))
    return videos


# --- scoring and tables -------------------------------------------------------------------------------


class Scorer:
    """The metrics whose detectors and references were given; real-side features are computed once."""

    def __init__(self, args):
        self.args = args
        self.i3d = load_detector(args.i3d, I3D_SOURCE, args.device) if args.i3d else None
        self.inception = load_detector(args.inception, INCEPTION_SOURCE, args.device) if args.inception else None
        self.clip = ClipScorer.from_pretrained(args.clip, args.clipsim_scale, args.device) if args.clip else None
        if bool(self.i3d) != bool(args.real_videos):
            raise ValueError("FVD needs both --i3d and --real-videos")
        if bool(self.inception) != bool(args.real_images):
            raise ValueError("FID needs both --inception and --real-images")
        self.skipped = {}  # {"real_videos" / "real_images": {relative path: reason}}
        self.real_video_feats = self.real_image_feats = None
        if self.i3d:
            real, _, self.skipped["real_videos"] = read_videos(args.real_videos, args.fvd_frames)
            self.real_video_feats = i3d_features(real, self.i3d, args.fvd_frames, device=args.device)
        if self.inception:
            images, self.skipped["real_images"] = read_images(args.real_images, args.max_real_images)
            self.real_image_feats = inception_features(images, self.inception, device=args.device)

    def __call__(self, videos: list[np.ndarray], prompts: list[str | None]) -> dict:
        out = {"videos": len(videos)}
        if self.i3d is not None:
            out["fvd"] = frechet_distance_of(
                i3d_features(videos, self.i3d, self.args.fvd_frames, device=self.args.device), self.real_video_feats
            )
        if self.inception is not None:
            frames = [f for v in videos for f in v]
            out["fid"] = frechet_distance_of(
                inception_features(frames, self.inception, device=self.args.device), self.real_image_feats
            )
        if self.clip is not None:
            if any(p is None for p in prompts):
                raise ValueError(
                    "CLIPSIM needs a prompt for every video (captions.jsonl or <name>.txt sidecars for --videos)"
                )
            out["clipsim"] = self.clip(videos, prompts)
        return out


def markdown_table(rows: list[dict]) -> str:
    """Rows ``{"method", "steps", metrics…}`` as the paper's tables: one row per method, per metric one
    column per step count."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    metrics = [(k, label) for k, label in METRICS if any(k in r for r in rows)]
    cell = {(r["method"], r["steps"]): r for r in rows}
    header = ["method"] + [f"{label} {n}-step" for _, label in metrics for n in steps]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        values = []
        for key, _ in metrics:
            for n in steps:
                v = cell.get((m, n), {}).get(key)
                values.append("–" if v is None else f"{v:.2f}")
        lines.append("| " + " | ".join([m] + values) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("videos to score: generated (--teacher …) and/or read (--videos)")
    g.add_argument(
        "--teacher", default=None, help="as training/distill.py: diffusers folder, hub id or tiny-animatediff"
    )
    g.add_argument("--teacher-kind", default="animatediff", choices=["animatediff", "modelscope"])
    g.add_argument("--motion-adapter", default=None)
    g.add_argument("--unet-checkpoint", default=None)
    g.add_argument(
        "--adapter", default=None, help="MCM adapter (.safetensors of this package or a PEFT folder): the student"
    )
    g.add_argument("--prompts", default=None, help="text file, one prompt per line (needed to generate)")
    g.add_argument(
        "--methods",
        default="teacher:50,mcm:1,mcm:2,mcm:4,mcm:8",
        help="rows to generate: teacher:N (DDIM + CFG), mcm:N",
    )
    g.add_argument(
        "--videos", action="append", default=[], metavar="METHOD:STEPS=FOLDER", help="score a folder of videos as a row"
    )
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--resolution", type=int, default=512)
    g.add_argument("--guidance", type=float, default=7.5, help="teacher CFG scale")
    g.add_argument(
        "--beta-schedule",
        default=None,
        choices=["linear", "scaled_linear"],
        help="diffusers name (default: the adapter's)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=4, help="prompts sampled at once")
    g = p.add_argument_group("metrics (each runs when its inputs are given)")
    g.add_argument("--i3d", default=None, help=f"FVD detector: {I3D_SOURCE[0]} from {I3D_SOURCE[1]}")
    g.add_argument("--real-videos", default=None, help="FVD reference: a folder of real videos")
    g.add_argument("--fvd-frames", type=int, default=16)
    g.add_argument("--inception", default=None, help=f"FID detector: {INCEPTION_SOURCE[0]} from {INCEPTION_SOURCE[1]}")
    g.add_argument("--real-images", default=None, help="FID reference: a folder of images")
    g.add_argument("--max-real-images", type=int, default=None)
    g.add_argument("--clip", default=None, help="CLIP model for CLIPSIM: local folder or hub id (paper: ViT-B/16)")
    g.add_argument(
        "--clipsim-scale", type=float, default=100.0, help="CLIPSIM = scale × cosine (100: the usual table scale)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="eval", help="folder for results.json and results.md")
    return p


def evaluate(argv=None) -> dict:
    """Generate and/or read the rows' videos, score them, write ``results.json`` and ``results.md``."""
    args = build_parser().parse_args(argv)
    rows_in: list[tuple[str, int, list[np.ndarray], list]] = []
    skipped: dict[tuple[str, int], dict[str, str]] = {}  # per --videos row: {relative path: reason}
    scorer = Scorer(args)  # detectors and references first: a bad file fails before any folder is read or sampled
    for spec in args.videos:
        head, sep, folder = spec.partition("=")
        method, _, steps = head.rpartition(":")
        if not sep or not method or not steps.isdigit():
            raise ValueError(f"--videos {spec!r}: expected METHOD:STEPS=FOLDER, e.g. 'MCM:4=samples/mcm4'")
        videos, captions, skipped[(method, int(steps))] = read_videos(
            folder, args.fvd_frames if args.i3d else 1, bool(args.clip)
        )
        rows_in.append((method, int(steps), videos, captions))
    sampling = None  # the settings the rows were generated with (the adapter's metadata)
    if args.teacher:
        if not args.prompts:
            raise ValueError("generating needs --prompts (a text file, one prompt per line)")
        prompts = read_prompts(args.prompts, "--prompts")
        sampler = load_generator(args)
        sampling = {
            "beta_schedule": sampler.schedule.beta_schedule,
            "timestep_scaling": sampler.timestep_scaling,
            "prediction_type": sampler.prediction_type,
            "num_ddim_timesteps": sampler.num_ddim_timesteps,
        }
        for kind, steps in parse_methods(args.methods):
            name = "MCM" if kind == "mcm" else f"teacher (DDIM, CFG {args.guidance:g})"
            rows_in.append((name, steps, generate(sampler, prompts, kind, steps, args.seed, args.batch), prompts))
    if not rows_in:
        raise ValueError("nothing to score: give --teacher (+ --prompts) to generate, or --videos METHOD:STEPS=FOLDER")
    rows = [
        {"method": m, "steps": n, **scorer(v, c), **({"skipped": skipped[(m, n)]} if skipped.get((m, n)) else {})}
        for m, n, v, c in rows_in
    ]
    report = {
        "rows": rows,
        "settings": dict(vars(args)),
        "sampling": sampling,
        "reference_skipped": scorer.skipped,
        "conventions": {
            "clipsim": f"{args.clipsim_scale:g} x mean cosine(frame, prompt), CLIP {args.clip}",
            "fvd": f"I3D (StyleGAN-V TorchScript) logits, first {args.fvd_frames} frames, "
            "rescale+resize in the detector",
            "fid": "Inception-v3 pool3 (NVlabs TorchScript), every generated frame vs --real-images",
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(rows)
    (out / "results.md").write_text(table)
    print(table, end="")
    return report


def main(argv=None) -> int:
    """The command line: bad input (a file, folder, flag or detector) is one ``error:`` line and exit 2."""
    try:
        evaluate(argv)
    except (OSError, ValueError) as exc:  # DetectorError, DataError, AdapterError are among them
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
