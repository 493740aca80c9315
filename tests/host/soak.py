"""Soak the MCM nodes in a real ComfyUI server: a long queue on ONE server, interrupts at random moments, and
every result compared bit for bit with the same prompt run alone on a fresh server.

usage: python tests/host/soak.py [--prompts 300] [--seed S] [--specs all|ci|NAME,...] [--interrupts N]
                                 [--warmup 30] [--window 30] [--rss-bound 0.05] [--frames 8] [--adapters DIR]
                                 [--json OUT] [--no-record]

Run it with the project's Python (it writes the test adapters with tests/host/make_adapters.py unless
--adapters names a folder that has them); the server runs with COMFYUI_PYTHON in COMFYUI_DIR (the environment
of the other host tests, tests/README.md). The queue cycles the specs in :data:`SPECS`: the shipped API
workflows (``workflows/api/``, shrunk as ``run_workflows.shrink`` does, then to ``--frames`` frames at 64 px)
with their inputs edited: both test adapters, strength_model / strength_motion in {0, 0.5, 1, 1.3}, 1, 2 or 4
steps, cfg 1 or 2, temporal_norm auto / frames / per_frame, the Gen2 graph (MCM Scheduler + MCM Sampler in
SamplerCustom), the one-node MCM KSampler graph, the Gen1 graph, and context windows (the long-video
workflow). Each spec has its own fixed seed. The sampler's LATENT goes to core ``SaveLatent`` (no decoding),
under a filename prefix unique to the prompt, so results compare exactly.

What it checks (each failure is listed, and the exit status is then 1):

1. the server answers ``GET /system_stats`` after every prompt, and is still running at the end;
2. every prompt succeeds, except the ones interrupted (``POST /interrupt`` with the prompt's id, about one
   prompt in ten, at a random delay into its execution); the prompt after an interrupt is never interrupted
   and must succeed (it retries the interrupted spec, or runs another one, at random);
3. memory, read after ``--warmup`` prompts and at the end, both times right after the same spec (the memory
   probe: the host keeps the last graph's outputs, so a reading depends on the graph that ran last):
   a. the resident memory of the server process (VmRSS in ``/proc/<pid>/status``, read after every prompt)
      grows by less than ``--rss-bound`` (:data:`MAX_GROWTH`, 5 %): the mean of the last ``--window`` readings
      against the mean of the first ``--window`` after the warm-up. One reading is too noisy to bound: in a
      300-prompt run, the readings within one window of 30 prompts spread by up to 11 % (which graph ran last
      and what the allocator kept), while the window means stayed within 4 % of each other;
   b. the tensors Python keeps alive after a garbage collection (``GET /mcm_soak/memory``, a probe written into
      the server's private custom_nodes: :data:`MEMORY_PROBE`) grow by less than :data:`MAX_LIVE_GROWTH` (1 %):
      a leak (a patched clone or an adapter kept alive, a cache that grows) shows here, without the heap's noise.
   The resident memory rises for the first 25-30 prompts and then stays within a few percent (glibc keeps
   the freed patched weights for reuse; with its mmap threshold fixed, ``GLIBC_TUNABLES=glibc.malloc.
   mmap_threshold=1048576``, it is flat from the first prompt): hence a 30-prompt warm-up. A shorter run (the CI
   budget) passes a looser ``--rss-bound`` and relies on b;
4. every completed prompt equals, bit for bit, the same spec run alone as the first prompt of a freshly
   started server (one fresh server per spec, run after the soak; ``--compare`` limits which specs); all
   completions of a spec also equal each other;
5. the queue is empty at the end.

Consecutive prompts are never the same spec (except a retry after an interrupt that stopped it): ComfyUI
caches a node whose inputs did not change, so a repeated prompt would only re-save the cached latent.

Unless --no-record, a dated entry is appended to tests/host/SOAK.md; --json writes every prompt's record.
tests/test_soak.py runs this with a CI budget.
"""

from __future__ import annotations

import argparse
import array
import datetime as dt
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))  # server.py and run_workflows.py sit beside this script
from run_workflows import shrink  # noqa: E402
from server import PROMPT_TIMEOUT_S, Client, Server  # noqa: E402

SOAK_MD = HERE / "SOAK.md"
MAX_GROWTH = 0.05  # resident memory may grow by less than 5 % from the warm-up to the end
MAX_LIVE_GROWTH = 0.01  # the bytes of the tensors Python keeps alive: less than 1 % (a leak shows here first)
SIZE = 64
WEBVID, LAION = "animatediff-webvid", "mcm-test-laion.safetensors"
GRAPHS = {  # spec graph -> shipped API workflow
    "gen2": "mcm_t2v_gen2_4step",  # MCM Scheduler + MCM Sampler in SamplerCustom
    "ksampler": "mcm_t2v_gen2_ksampler",  # the one-node MCM KSampler, Gen2
    "gen1": "mcm_t2v_gen1_4step",  # MCM KSampler after ADE's Gen1 loader
    "long": "mcm_long_video_context",  # SamplerCustom in ADE context windows
}
SAMPLERS = ("SamplerCustom", "MCM_KSampler")


@dataclass(frozen=True)
class Spec:
    name: str
    graph: str
    adapter: str
    strength_model: float
    strength_motion: float
    steps: int
    cfg: float
    temporal_norm: str
    seed: int


#: The distinct prompts of the queue. Every value of every varied input occurs in several graphs.
SPECS = [
    Spec("gen2-a", "gen2", WEBVID, 1.0, 1.0, 1, 1.0, "auto", 101),
    Spec("gen2-b", "gen2", LAION, 0.5, 1.3, 2, 2.0, "frames", 102),
    Spec("gen2-c", "gen2", WEBVID, 1.3, 0.5, 4, 1.0, "per_frame", 103),
    Spec("gen2-d", "gen2", LAION, 0.0, 1.0, 1, 1.0, "auto", 104),
    Spec("gen2-e", "gen2", WEBVID, 0.0, 0.0, 2, 1.0, "per_frame", 105),
    Spec("ksampler-a", "ksampler", WEBVID, 1.0, 0.0, 2, 1.0, "frames", 201),
    Spec("ksampler-b", "ksampler", LAION, 1.0, 1.0, 1, 2.0, "per_frame", 202),
    Spec("ksampler-c", "ksampler", WEBVID, 0.5, 0.5, 4, 1.0, "auto", 203),
    Spec("ksampler-d", "ksampler", LAION, 1.3, 0.0, 1, 1.0, "frames", 204),
    Spec("gen1-a", "gen1", WEBVID, 1.0, 1.0, 1, 1.0, "auto", 301),
    Spec("gen1-b", "gen1", LAION, 1.3, 1.3, 2, 1.0, "frames", 302),
    Spec("gen1-c", "gen1", WEBVID, 0.0, 0.5, 1, 2.0, "per_frame", 303),
    Spec("long-a", "long", WEBVID, 1.0, 1.0, 1, 1.0, "auto", 401),
    Spec("long-b", "long", LAION, 0.5, 1.0, 2, 1.0, "frames", 402),
]
#: The CI budget's specs (tests/test_soak.py): one per sampler graph, both adapters, all three temporal norms.
CI_SPECS = ["gen2-a", "ksampler-b", "gen1-c"]


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


def load_api_workflows() -> dict[str, dict]:
    folder = ROOT / "workflows" / "api"
    return {g: json.loads((folder / f"{name}.json").read_text(encoding="utf-8")) for g, name in GRAPHS.items()}


def build_prompt(spec: Spec, workflows: dict[str, dict], prefix: str, frames: int) -> dict:
    """The shipped workflow of ``spec.graph``, shrunk, with the spec's inputs, saving the sampler's LATENT."""
    p, _ = shrink(workflows[spec.graph], spec.name)
    long_video = spec.graph == "long"
    sampler_id = None
    for nid, node in list(p.items()):
        ct, inputs = node["class_type"], node["inputs"]
        if ct in ("VAEDecode", "CreateVideo", "SaveVideo"):
            del p[nid]  # the latent is compared, exactly; decoding is not ours
        elif ct == "EmptyLatentImage":
            # context windows of `frames` frames over 1.5x as many (2 windows), or `frames` frames
            inputs.update(width=SIZE, height=SIZE, batch_size=frames + frames // 2 if long_video else frames)
        elif ct == "ADE_StandardStaticContextOptions":
            inputs.update(context_length=frames, context_overlap=frames // 2)
        elif ct == "MCM_StyleAdapter":
            inputs["adapter"] = spec.adapter
        elif ct == "MCM_LoraLoader":
            inputs.update(
                strength_model=spec.strength_model,
                strength_motion=spec.strength_motion,
                temporal_norm=spec.temporal_norm,
            )
        elif ct == "MCM_Scheduler":
            inputs["steps"] = spec.steps
        elif ct == "SamplerCustom":
            inputs.update(noise_seed=spec.seed, cfg=spec.cfg)
        elif ct == "MCM_KSampler":
            inputs.update(seed=spec.seed, cfg=spec.cfg, steps=spec.steps)
        if ct in SAMPLERS:
            sampler_id = nid
    if sampler_id is None:
        raise ValueError(f"{spec.name}: no sampler in {GRAPHS[spec.graph]}")
    p["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": prefix}}
    return p


def make_plan(specs: list[Spec], prompts: int, interrupts: int, warmup: int, rng: random.Random) -> list[dict]:
    """The queue: ``prompts`` entries ``{"spec", "interrupt" (a fraction of the prompt's expected duration, or
    None)}``. The memory probe (the first spec) runs as prompt ``warmup`` and as the last prompt, so that both
    memory readings follow the same graph (the host caches the last graph's node outputs, so resident memory
    depends on which graph ran last). Interrupts never fall on the first prompt, on two consecutive prompts,
    or next to a memory probe; the same spec never runs twice in a row (a retry after an interrupt is decided
    while running: see :func:`next_spec`)."""
    probe_at = {min(warmup, prompts) - 1, prompts - 1}
    eligible = [i for i in range(1, prompts - 1) if i not in probe_at and i + 1 not in probe_at]
    chosen: set[int] = set()
    rng.shuffle(eligible)
    for i in eligible:
        if len(chosen) >= interrupts:
            break
        if i - 1 not in chosen and i + 1 not in chosen:
            chosen.add(i)
    plan, previous = [], None
    for i in range(prompts):
        if i in probe_at:
            spec = specs[0]
        else:
            avoid = (previous, specs[0] if i + 1 in probe_at else None)
            spec = rng.choice([s for s in specs if s not in avoid] or specs)
        plan.append({"spec": spec, "interrupt": round(rng.uniform(0.05, 0.7), 3) if i in chosen else None})
        previous = spec
    return plan


def next_spec(planned: Spec, previous: dict | None, specs: list[Spec], rng: random.Random) -> tuple[Spec, str]:
    """The spec to run now, and why: after a prompt that an interrupt stopped, retry it or run another one (at
    random); never the spec that just completed (its sampler output is cached)."""
    if previous and previous["outcome"] == "interrupted":
        if rng.random() < 0.5:
            return previous["spec_obj"], "retry after interrupt"
        others = [s for s in specs if s is not previous["spec_obj"]] or specs
        return (planned if planned in others else rng.choice(others)), "another spec after interrupt"
    if previous and planned is previous["spec_obj"] and len(specs) > 1:
        return rng.choice([s for s in specs if s is not planned]), "planned"
    return planned, "planned"


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


def read_latent(path: Path) -> tuple[list[int], bytes]:
    """(shape, raw little-endian float32 bytes) of ``latent_tensor`` in a SaveLatent file (safetensors)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    t = header["latent_tensor"]
    if t["dtype"] != "F32":
        raise ValueError(f"{path}: latent_tensor is {t['dtype']}, expected F32")
    start, end = t["data_offsets"]
    return list(t["shape"]), data[8 + n + start : 8 + n + end]


def max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two saved latents (0.0 when bit-identical; inf when the shapes
    differ or a value is NaN in one of them only)."""
    shape_a, raw_a = read_latent(a)
    shape_b, raw_b = read_latent(b)
    if shape_a != shape_b:
        return float("inf")
    if raw_a == raw_b:
        return 0.0
    xa, xb = array.array("f"), array.array("f")
    xa.frombytes(raw_a)
    xb.frombytes(raw_b)
    if sys.byteorder != "little":
        xa.byteswap()
        xb.byteswap()
    worst = 0.0
    for u, v in zip(xa, xb):
        if u != v:
            d = abs(u - v)
            worst = max(worst, d if d == d else float("inf"))  # NaN in one of them: inf
    return worst


def saved_latent(entry: dict, output_dir: Path) -> Path | None:
    for out in (entry.get("outputs") or {}).values():
        for item in out.get("latents", []) or []:
            return output_dir / item.get("subfolder", "") / item["filename"]
    return None


def messages(entry: dict) -> dict[str, dict]:
    return {m[0]: m[1] for m in entry.get("status", {}).get("messages", []) or [] if isinstance(m, list) and m}


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_running(client: Client, prompt_id: str, timeout: float = 60) -> bool:
    """Wait until ``prompt_id`` runs (it is in ``queue_running``); False if it finished or never started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, queue = client.request("GET", "/queue")
        running = (queue or {}).get("queue_running", []) if isinstance(queue, dict) else []
        if any(len(item) > 1 and item[1] == prompt_id for item in running):
            return True
        status, hist = client.request("GET", f"/history/{prompt_id}")
        if status == 200 and isinstance(hist, dict) and prompt_id in hist:
            return False
        time.sleep(0.05)
    return False


def run_one(client: Client, server: Server, prompt: dict, interrupt_after: float | None = None) -> dict:
    """Submit one prompt (and interrupt it ``interrupt_after`` seconds into its execution); its record."""
    t0 = time.time()
    status, body = client.submit(prompt)
    rec: dict = {"http_status": status}
    if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
        rec.update(outcome="refused", error=str(body)[:2000])
        return rec
    pid = rec["prompt_id"] = body["prompt_id"]
    if interrupt_after is not None:
        if wait_running(client, pid):
            time.sleep(interrupt_after)
            rec["interrupt_status"] = client.request("POST", "/interrupt", {"prompt_id": pid})[0]
            rec["interrupt_at_s"] = round(time.time() - t0, 2)
        else:
            rec["interrupt_status"] = "not running"
    entry = client.wait(pid)
    rec["seconds"] = round(time.time() - t0, 2)
    if entry is None:
        rec["outcome"] = "timeout"
        return rec
    msgs = messages(entry)
    rec["cached_nodes"] = sorted((msgs.get("execution_cached") or {}).get("nodes") or [])
    if "execution_interrupted" in msgs:
        rec["outcome"] = "interrupted"
        rec["interrupted_in"] = msgs["execution_interrupted"].get("node_type")
    elif "execution_error" in msgs or entry.get("status", {}).get("status_str") != "success":
        err = msgs.get("execution_error") or {}
        rec["outcome"] = "error"
        rec["error"] = {k: err.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")}
    else:
        latent = saved_latent(entry, server.output_dir)
        rec["outcome"] = "success" if latent and latent.exists() else "no latent saved"
        rec["latent"] = str(latent) if latent else None
    return rec


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------

#: A custom node file written into the soak server's private custom_nodes folder: ``GET /mcm_soak/memory`` (asked
#: between prompts only) counts what Python keeps alive after a full garbage collection: the tensors and the
#: bytes of their distinct storages, the model patchers, the MCM model-sampling objects, all objects. Unlike the
#: resident memory, it does not include what the allocator keeps for reuse, so it tells a leak from a heap that
#: settles.
MEMORY_PROBE = """
import gc

import torch
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS = {}


@PromptServer.instance.routes.get("/mcm_soak/memory")
async def mcm_soak_memory(request):
    gc.collect()
    storages, tensors, patchers, sampling, objects = {}, 0, 0, 0, 0
    for obj in gc.get_objects():
        objects += 1
        if isinstance(obj, torch.Tensor):
            tensors += 1
            try:
                st = obj.untyped_storage()
                storages[(st.device.type, st.data_ptr())] = st.nbytes()
            except Exception:
                pass
        elif type(obj).__name__ == "ModelPatcher" or "ModelPatcher" in [c.__name__ for c in type(obj).__mro__]:
            patchers += 1
        elif type(obj).__name__ == "MCMGridSampling":
            sampling += 1
    return web.json_response(
        {"tensor_bytes": sum(storages.values()), "tensors": tensors, "model_patchers": patchers,
         "mcm_model_samplings": sampling, "objects": objects}
    )
"""


def live_memory(client: Client) -> dict | None:
    try:
        status, body = client.request("GET", "/mcm_soak/memory", timeout=300)
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


def new_server(args, work_root: Path, name: str) -> Server:
    work = work_root / name
    work.mkdir()
    return Server(Path(args.comfy_dir), ROOT, Path(args.adapters), work, args.python)


def expected_seconds(spec: Spec, done: list[dict]) -> float:
    """How long ``spec`` took last time it completed in this soak (a guess from its steps before that)."""
    for rec in reversed(done):
        if rec["spec"] == spec.name and rec["outcome"] == "success":
            return rec["seconds"]
    return 4.0 * spec.steps * spec.cfg


def checked(rec: dict, failures: list[str]) -> bool:
    """Record what is wrong with one soak prompt in ``failures``; False when the soak cannot go on."""
    what = f"prompt {rec['index']} ({rec['spec']})"
    if not rec["alive"]:
        failures.append(f"{what}: the server stopped answering /system_stats")
        return False
    if rec["outcome"] == "timeout":  # still running: the next prompts would queue behind it
        failures.append(f"{what}: did not end within {PROMPT_TIMEOUT_S} s")
        return False
    if rec["outcome"] not in ("success", "interrupted") or (
        rec["outcome"] == "interrupted" and not rec["interrupt_delay_s"]
    ):
        failures.append(f"{what}: {rec['outcome']}: {rec.get('error')}")
    if rec["after_interrupt"] and rec["outcome"] != "success":
        failures.append(f"{what} after an interrupt: {rec['outcome']}")
    return True


def soak(args, plan: list[dict], specs: list[Spec], workflows: dict, work_root: Path, result: dict) -> None:
    """The long queue on one server; fills ``result`` (records, memory, failures) as it goes."""
    rng = random.Random(f"{args.seed}-run")
    failures, records = result["failures"], result["records"]
    server = new_server(args, work_root, "soak")
    (server.work / "custom_nodes" / "mcm_soak_probe.py").write_text(MEMORY_PROBE, encoding="utf-8")
    result["notes"] = server.notes
    try:
        result["startup_seconds"] = round(server.start(), 2)
        client = Client(server.port)
        pid = server.proc.pid
        result["rss_kb"] = {"start": rss_kb(pid)}
        previous = None
        for i, item in enumerate(plan):
            spec, why = next_spec(item["spec"], previous, specs, rng)
            interrupt = item["interrupt"] if why == "planned" else None
            delay = round(interrupt * expected_seconds(spec, records), 2) if interrupt is not None else None
            prompt = build_prompt(spec, workflows, f"soak/{i:04d}_{spec.name}", args.frames)
            sampler = next(nid for nid, n in prompt.items() if n["class_type"] in SAMPLERS)
            rec = {"index": i, "spec": spec.name, "why": why, "interrupt_delay_s": delay, "sampler_node": sampler}
            rec.update(run_one(client, server, prompt, delay))
            rec["after_interrupt"] = bool(previous and previous["outcome"] == "interrupted")
            rec["alive"] = client.alive()
            rec["rss_kb"] = rss_kb(pid)
            records.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
            if not checked(rec, failures):
                break
            if i + 1 == min(args.warmup, len(plan)):
                result["rss_kb"]["warmup"] = rec["rss_kb"]
                result["live"]["warmup"] = live_memory(client)
            previous = {**rec, "spec_obj": spec}
        result["rss_kb"]["end"] = rss_kb(pid)
        result["live"]["end"] = live_memory(client)
        _, queue = client.request("GET", "/queue")
        result["queue_empty_at_end"] = (
            isinstance(queue, dict) and not queue.get("queue_running") and not queue.get("queue_pending")
        )
        result["server_running_at_end"] = server.proc.poll() is None
    except Exception as exc:  # noqa: BLE001 - recorded as a failure; the report is still written
        failures.append(f"soak: {type(exc).__name__}: {exc}")
    finally:
        result["server_returncode"] = server.stop()
        log = server.log_tail(10**8)
        result["server_log_tracebacks"] = log.count("Traceback (most recent call last)")
        result["server_log_traceback_ends"] = traceback_ends(log)
        result["server_log_tail"] = log[-4000:]


def traceback_ends(log: str) -> list[str]:
    """The last line of each traceback in a server log (the exception), and the line above its first frame."""
    lines, ends = log.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            before = lines[i - 1].strip() if i else ""
            ends.append(f"{before[:200]} | {lines[j].strip()[:300] if j < len(lines) else '?'}")
    return ends


def solo_runs(args, specs: list[Spec], workflows: dict, work_root: Path, result: dict) -> dict[str, str]:
    """Each spec alone, as the first prompt of a freshly started server (one server at a time)."""
    solo: dict[str, str] = {}
    for spec in specs:
        server = new_server(args, work_root, f"solo-{spec.name}")
        try:
            server.start()
            client = Client(server.port)
            rec = run_one(client, server, build_prompt(spec, workflows, f"solo/{spec.name}", args.frames))
            result["solo"][spec.name] = {k: rec.get(k) for k in ("outcome", "seconds", "error")}
            print(json.dumps({"solo": spec.name, **rec}), file=sys.stderr, flush=True)
            if rec["outcome"] == "success":
                solo[spec.name] = rec["latent"]
            else:
                result["failures"].append(f"solo run of {spec.name}: {rec['outcome']}: {rec.get('error')}")
        except Exception as exc:  # noqa: BLE001 - recorded as a failure
            result["failures"].append(f"solo run of {spec.name}: {type(exc).__name__}: {exc}")
        finally:
            server.stop()
    return solo


def compare(records: list[dict], solo: dict[str, str], result: dict) -> None:
    """Every completed soak prompt against its spec's solo run and its spec's first completion."""
    first: dict[str, str] = {}
    compared, worst, worst_self = 0, 0.0, 0.0
    for rec in records:
        if rec["outcome"] != "success":
            continue
        name = rec["spec"]
        first.setdefault(name, rec["latent"])
        rec["diff_self"] = max_difference(Path(first[name]), Path(rec["latent"]))
        worst_self = max(worst_self, rec["diff_self"])
        if name in solo:
            rec["diff_solo"] = max_difference(Path(solo[name]), Path(rec["latent"]))
            compared += 1
            worst = max(worst, rec["diff_solo"])
            if rec["diff_solo"] != 0.0:
                result["failures"].append(
                    f"prompt {rec['index']} ({name}{', after an interrupt' if rec['after_interrupt'] else ''}) "
                    f"differs from its solo run by up to {rec['diff_solo']:.3g}"
                )
        elif rec["diff_self"] != 0.0:
            result["failures"].append(f"prompt {rec['index']} ({name}) differs from its first completion")
    result.update(compared_with_solo=compared, largest_difference=worst, largest_difference_between_repeats=worst_self)


def summarize(args, result: dict) -> None:
    records, rss, failures = result["records"], result["rss_kb"], result["failures"]
    interrupted = [r for r in records if r["outcome"] == "interrupted"]
    after = [r for r in records if r.get("after_interrupt")]
    result["prompts_run"] = len(records)
    result["interrupts_sent"] = sum(1 for r in records if r.get("interrupt_at_s") is not None)
    result["interrupted"] = len(interrupted)
    result["interrupted_in"] = sorted({r.get("interrupted_in") or "?" for r in interrupted})
    result["after_interrupt"] = {
        "prompts": len(after),
        "succeeded": sum(1 for r in after if r["outcome"] == "success"),
        "exact": sum(1 for r in after if r.get("diff_solo", r.get("diff_self")) == 0.0),
        "retries": sum(1 for r in after if r["why"] == "retry after interrupt"),
    }
    result["sampler_ran"] = sum(
        1 for r in records if r["outcome"] == "success" and r["sampler_node"] not in r["cached_nodes"]
    )
    later = [r["rss_kb"] for r in records[args.warmup :] if r.get("rss_kb")]
    window = min(args.window, len(later) // 2)
    if rss.get("warmup") and rss.get("end") and window:
        result["rss_reading_growth"] = (rss["end"] - rss["warmup"]) / rss["warmup"]
        rss["max_after_warmup"] = max(later)
        rss["first_window_mean"] = sum(later[:window]) / window
        rss["last_window_mean"] = sum(later[-window:]) / window
        rss["window"] = window
        result["rss_growth"] = (rss["last_window_mean"] - rss["first_window_mean"]) / rss["first_window_mean"]
        if result["rss_growth"] >= args.rss_bound:
            failures.append(
                f"resident memory grew by {result['rss_growth']:.1%} after the warm-up (mean of {window} readings: "
                f"{rss['first_window_mean']:.0f} kB -> {rss['last_window_mean']:.0f} kB), over the "
                f"{args.rss_bound:.0%} bound"
            )
    else:
        failures.append(f"resident memory not measured at warm-up and end: {rss}")
    live = result["live"]
    if live.get("warmup") and live.get("end"):
        before, after = live["warmup"]["tensor_bytes"], live["end"]["tensor_bytes"]
        result["live_tensor_growth"] = (after - before) / before
        if result["live_tensor_growth"] >= MAX_LIVE_GROWTH:
            failures.append(
                f"the tensors Python keeps alive grew by {result['live_tensor_growth']:.2%} after the warm-up "
                f"({live['warmup']} -> {live['end']}), over the {MAX_LIVE_GROWTH:.0%} bound"
            )
    else:
        failures.append(f"live memory (/mcm_soak/memory) not measured at warm-up and end: {live}")
    for key, what in (("queue_empty_at_end", "the queue was not empty at the end"), ("server_running_at_end", "")):
        if not result.get(key):
            failures.append(what or "the server was not running at the end")
    if result["interrupts_sent"] and not interrupted:
        failures.append("no interrupt stopped a prompt (the interrupts all came too late)")


def host_version(comfy_dir: str) -> str:
    text = (Path(comfy_dir) / "comfyui_version.py").read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "?"


def live_text(live: dict | None) -> str:
    if not live:
        return "?"
    return (
        f"{live['tensor_bytes'] / 2**20:.0f} MB in {live['tensors']} tensors, {live['model_patchers']} model "
        f"patchers, {live['mcm_model_samplings']} MCM model samplings"
    )


def record(args, result: dict) -> list[str]:
    """The SOAK.md entry of this run (appended unless --no-record)."""
    rss = result["rss_kb"]
    mb = lambda kb: f"{kb / 1024:.0f} MB" if kb else "?"  # noqa: E731
    after = result["after_interrupt"]
    lines = [
        f"\n## {dt.datetime.now():%Y-%m-%d %H:%M}: ComfyUI {result['host_version']}, {result['prompts_run']} prompts, "
        f"seed {args.seed}\n",
        f"- Command: `python tests/host/soak.py --prompts {args.prompts} --seed {args.seed} --specs {args.specs}"
        f" --compare {args.compare} --interrupts {args.interrupts} --warmup {args.warmup}"
        f" --window {args.window} --rss-bound {args.rss_bound:g} --frames {args.frames}`; "
        f"wall time {result['wall_seconds'] / 60:.1f} min",
        f"- Prompts run: {result['prompts_run']} on one server ({len(result['specs'])} specs, {args.frames} frames at "
        f"{SIZE} px; the sampler ran in {result['sampler_ran']} of the completed prompts)",
        f"- Interrupts: {result['interrupts_sent']} sent, {result['interrupted']} stopped a prompt (in "
        f"{', '.join(result['interrupted_in']) or '-'}); the {after['prompts']} prompts after them: "
        f"{after['succeeded']} succeeded, {after['exact']} exact ({after['retries']} retried the interrupted spec)",
        f"- Resident memory, mean of {rss.get('window', '?')} readings: {mb(rss.get('first_window_mean'))} right "
        f"after the {args.warmup}-prompt warm-up, {mb(rss.get('last_window_mean'))} at the end (growth "
        f"{result.get('rss_growth', float('nan')):+.2%}; bound < {args.rss_bound:.0%}); single readings after "
        f"the same spec: {mb(rss.get('warmup'))} -> {mb(rss.get('end'))} "
        f"({result.get('rss_reading_growth', float('nan')):+.2%}); highest after the warm-up "
        f"{mb(rss.get('max_after_warmup'))}",
        f"- Tensors alive (after a garbage collection): {live_text(result['live'].get('warmup'))} -> "
        f"{live_text(result['live'].get('end'))} (growth {result.get('live_tensor_growth', float('nan')):+.2%}; "
        f"bound < {MAX_LIVE_GROWTH:.0%})",
        f"- Compared with solo runs on fresh servers: {result['compared_with_solo']} prompts of "
        f"{len(result['solo'])} specs; largest difference {result['largest_difference']:g} (between repeats "
        f"of a spec: {result['largest_difference_between_repeats']:g})",
        f"- Failures: {len(result['failures'])}" + "".join(f"\n  - {f}" for f in result["failures"][:20]),
    ]
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=300, help="prompts in the queue (default 300)")
    p.add_argument("--seed", default="0", help="the queue's order and interrupts (default 0)")
    p.add_argument("--specs", default="all", help="all, ci, or spec names separated by commas")
    p.add_argument("--compare", default="all", help="specs run alone on fresh servers: all, none, or names")
    p.add_argument("--interrupts", type=int, default=None, help="interrupted prompts (default: one in ten)")
    p.add_argument("--warmup", type=int, default=30, help="prompts before the first memory reading (default 30)")
    p.add_argument("--window", type=int, default=30, help="readings averaged for the memory growth (default 30)")
    p.add_argument("--rss-bound", type=float, default=MAX_GROWTH, help="resident memory growth bound (default 0.05)")
    p.add_argument("--frames", type=int, default=8, help="frames per video (context windows: 1.5x, default 8)")
    p.add_argument("--adapters", default=None, help="a folder with the test adapters (default: written anew)")
    p.add_argument("--json", default=None, help="write every record here")
    p.add_argument("--no-record", action="store_true", help="do not append an entry to tests/host/SOAK.md")
    args = p.parse_args(argv)
    args.comfy_dir = os.environ.get("COMFYUI_DIR")
    args.python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    if not args.comfy_dir:
        p.error("set COMFYUI_DIR (and COMFYUI_PYTHON, COMFYUI_PYTHONPATH) as for the other host tests")
    if args.interrupts is None:
        args.interrupts = args.prompts // 10
    return args


def select(names: str, ci: list[str] | None = None) -> list[Spec]:
    by_name = {s.name: s for s in SPECS}
    if names == "all":
        return list(SPECS)
    if names == "none":
        return []
    wanted = ci if names == "ci" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown spec(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in wanted]


def main(argv=None) -> int:
    args = parse_args(argv)
    specs = select(args.specs, CI_SPECS)
    compared = [s for s in select(args.compare, CI_SPECS) if s in specs]
    workflows = load_api_workflows()
    plan = make_plan(specs, args.prompts, args.interrupts, args.warmup, random.Random(args.seed))
    result: dict = {
        "host_version": host_version(args.comfy_dir),
        "specs": [asdict(s) for s in specs],
        "failures": [],
        "records": [],
        "solo": {},
        "rss_kb": {},
        "live": {},
    }
    t0 = time.time()
    work_root = Path(tempfile.mkdtemp(prefix="mcm-soak-"))
    try:
        if args.adapters is None:
            args.adapters = str(work_root / "adapters")
            subprocess.run([sys.executable, str(HERE / "make_adapters.py"), args.adapters], check=True)
        soak(args, plan, specs, workflows, work_root, result)
        solo = solo_runs(args, compared, workflows, work_root, result) if result["records"] else {}
        compare(result["records"], solo, result)
        summarize(args, result)
    finally:
        result["wall_seconds"] = round(time.time() - t0, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        shutil.rmtree(work_root, ignore_errors=True)
    lines = record(args, result)
    print("\n".join(lines))
    if not args.no_record:
        if not SOAK_MD.exists():
            SOAK_MD.write_text(HEADER, encoding="utf-8")
        with SOAK_MD.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return 1 if result["failures"] else 0


HEADER = """# Soak runs of the nodes in a real host

Each entry is one run of `python tests/host/soak.py` (newest last): a long queue of the shipped API workflows,
shrunk and with their inputs varied, on ONE ComfyUI server with AnimateDiff-Evolved on the CPU, with random
interrupts. Per run: the date, the host's ComfyUI version, the prompts run, the interrupts (how many stopped a
prompt, and whether the prompt after each succeeded and was exact), the server's resident memory after the
warm-up and at the end with the growth (bound: under 5 %), how many prompts were compared bit for bit with the
same prompt run alone on a fresh server and the largest difference (the goal is 0), and the failures (the goal
is none). `tests/test_soak.py` runs the same code with a CI budget and records nothing here.
"""


if __name__ == "__main__":
    sys.exit(main())
