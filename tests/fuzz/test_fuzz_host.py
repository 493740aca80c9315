"""Fuzz target of the MCM nodes in a real ComfyUI server: random ``/prompt`` requests (opt-in: COMFYUI_DIR).

Every example starts from the shipped default graph (``workflows/api/mcm_t2v_gen2_4step.json``, shrunk to 64 px
and 4 frames, the sampler's LATENT saved with core ``SaveLatent`` instead of decoded), or from it with MCM Model
Sampling inserted before the sampler, or from the one-node MCM KSampler graph, so that every MCM node is in
some graph. It then changes one to three inputs of the MCM nodes: a value of the wrong type, out of range,
NaN or infinite (JSON's ``NaN`` / ``Infinity`` tokens, which ComfyUI's parser reads, and strings such as
``"nan"`` or ``"1e999"``), a huge int, an empty, unknown or near-miss string for a dropdown, a link to a random
output of a random node (or to none, or malformed), a missing input, or a valid value (small: at most 2
steps). The judge (``tests/fuzz/judge.py``) counts each example:

* ``refused``: HTTP 400 whose ``node_errors`` name a changed node (its message: the error, its details and the
  input), or a run that ends in an execution error of an MCM node whose message is one line, without a
  traceback, and names the node (its display name or id) or the input; or a cycle the changes made (ComfyUI's
  own check: a 400 without ``node_errors``, or its DependencyCycleError when the graph runs);
* ``accepted``: HTTP 200 and a run that succeeds and saves a finite latent.

Anything else fails the example: another HTTP status, an execution error in a node that is not ours (what our
node passed on broke it), a run that succeeds with NaN or infinite values (bad input passed silently), a run
that does not end within :data:`RUN_TIMEOUT_S`, or a server that no longer answers ``/system_stats``. One
server serves the whole module (tests/host/server.py); most examples are refused by ComfyUI's validation
without running, and the ones that run share its cached loaders, so the CI budget (25 examples, and the
:data:`REGRESSIONS`: what the campaign found, each case once) takes about 2 minutes on a 2-core CPU.

Known ComfyUI behaviour the judge accepts: a link on an input a node does not declare reaches ``execute`` (a
value there is dropped), so the node fails with Python's "got an unexpected keyword argument '<input>'",
which names the input; ComfyUI's core nodes do the same. A link that closes a cycle is ComfyUI's to refuse:
its validation follows the links round it, and answers 400 naming no node, or with a RecursionError at
whichever node the recursion limit was reached in (ours included), or fails the run with DependencyCycleError.
"""

from __future__ import annotations

import array
import copy
import importlib.util
import json
import math
import os
import struct
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.judge import fuzz_target, judge
from tests.real_host import COMFYUI_DIR, MARKS, ROOT, make_adapters, skip_without_models

pytestmark = MARKS
TARGET = "host /prompt"
RUN_TIMEOUT_S = 300
FRAMES, SIZE = 4, 64
WEBVID = "animatediff-webvid"


def _host_module(name: str):
    spec = importlib.util.spec_from_file_location(f"mcm_fuzz_{name}", ROOT / "tests" / "host" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- the graphs -------------------------------------------------------------------------------------------------

#: Our nodes' inputs: name -> kind ("link" for a connection; widgets: "combo", "int", "float", "bool").
OUR_INPUTS = {
    "MCM_StyleAdapter": {"adapter": "combo", "beta_schedule": "combo"},
    "MCM_LoraLoader": {
        "model": "link",
        "mcm_adapter": "link",
        "strength_model": "float",
        "strength_motion": "float",
        "mcm_sampling": "bool",
        "temporal_norm": "combo",
        "motion_model": "link",
    },
    "MCM_ModelSampling": {"model": "link", "beta_schedule": "combo", "timestep_scaling": "float"},
    "MCM_Scheduler": {"model": "link", "steps": "int", "denoise": "float"},
    "MCM_Sampler": {},
    "MCM_KSampler": {
        "model": "link",
        "seed": "int",
        "steps": "int",
        "cfg": "float",
        "positive": "link",
        "negative": "link",
        "latent_image": "link",
        "denoise": "float",
    },
}
#: Widget bounds and choices (checked against the server's /object_info by a test below).
BOUNDS = {
    ("MCM_LoraLoader", "strength_model"): (-2.0, 2.0),
    ("MCM_LoraLoader", "strength_motion"): (-2.0, 2.0),
    ("MCM_ModelSampling", "timestep_scaling"): (0.1, 100.0),
    ("MCM_Scheduler", "steps"): (1, 50),
    ("MCM_Scheduler", "denoise"): (0.02, 1.0),
    ("MCM_KSampler", "seed"): (0, 0xFFFFFFFFFFFFFFFF),
    ("MCM_KSampler", "steps"): (1, 50),
    ("MCM_KSampler", "cfg"): (0.0, 30.0),
    ("MCM_KSampler", "denoise"): (0.02, 1.0),
}
MAX_RUN_STEPS = 2  # valid step counts the generator draws (a link may still bring the adapter's 4)


def _shrunk(name: str) -> dict:
    """A shipped API workflow at 64 px and 4 frames, 1 step, saving the sampler's LATENT (no decoding)."""
    prompt = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text(encoding="utf-8"))
    sampler = None
    for nid, node in list(prompt.items()):
        ct, inputs = node["class_type"], node["inputs"]
        if ct in ("VAEDecode", "CreateVideo", "SaveVideo"):
            del prompt[nid]
        elif ct == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = os.environ.get("MCM_HOST_CHECKPOINT", "rand_sd15.safetensors")
        elif ct == "ADE_LoadAnimateDiffModel":
            inputs["model_name"] = os.environ.get("MCM_HOST_MOTION_MODEL", "rand_mm_v2.safetensors")
        elif ct == "EmptyLatentImage":
            inputs.update(width=SIZE, height=SIZE, batch_size=FRAMES)
        elif ct == "MCM_StyleAdapter":
            inputs["adapter"] = WEBVID
        elif ct in ("MCM_Scheduler", "MCM_KSampler"):
            inputs["steps"] = 1
        if ct in ("SamplerCustom", "MCM_KSampler"):
            sampler = nid
    prompt["90"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": "fuzz/x"}}
    return prompt


def _with_model_sampling(prompt: dict) -> dict:
    """The default graph with MCM Model Sampling between Use Evolved Sampling and the scheduler / sampler."""
    p = copy.deepcopy(prompt)
    p["80"] = {
        "class_type": "MCM_ModelSampling",
        "inputs": {
            "model": ["6", 0],
            "beta_schedule": "linear (diffusers scaled_linear; MCM training, SD default)",
            "timestep_scaling": 4.0,
        },
    }
    p["10"]["inputs"]["model"] = ["80", 0]
    p["12"]["inputs"]["model"] = ["80", 0]
    return p


def graphs() -> dict[str, dict]:
    default = _shrunk("mcm_t2v_gen2_4step")
    return {
        "default": default,
        "model sampling": _with_model_sampling(default),
        "ksampler": _shrunk("mcm_t2v_gen2_ksampler"),
    }


GRAPHS = graphs()
#: (graph, node id, input) of every input of our nodes in the graphs
SLOTS = [
    (g, nid, name)
    for g, prompt in GRAPHS.items()
    for nid, node in prompt.items()
    for name in OUR_INPUTS.get(node["class_type"], {})
]
#: (graph, node id) of our nodes without inputs (MCM Sampler): fuzzed through inputs added to them
BARE = [
    (g, nid) for g, p in GRAPHS.items() for nid, n in p.items() if n["class_type"] in OUR_INPUTS and not n["inputs"]
]


# --- values -----------------------------------------------------------------------------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "-1e999",
    "0x10",
    "１",
    "1_000",
    "None",
    "null",
    "true",
    "[]",
    "{}",
    "../../../etc/passwd",
    "/etc/passwd",
    "animatediff-webvid/adapter_model.safetensors",
    "mcm/animatediff-webvid",
    "\x00",
    "a" * 5000,
]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e308, -1e308, 1e-30]
HUGE_INTS = [2**63 - 1, 2**63, 2**64, 2**64 - 1, -(2**63) - 1, 10**30, -(10**30), 10**400]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def near_misses(choice: str) -> list[str]:
    return [choice.upper(), choice + " ", " " + choice, choice[:-1], choice.split(" ")[0], choice + "\n"]


#: the server's /object_info (filled by the ``host`` fixture)
INFO: dict = {}
#: (class type, input) -> the dropdown's choices, from the server's /object_info (filled by the ``host`` fixture;
#: the strategies draw them while the test runs)
CHOICES: dict[tuple[str, str], list] = {}


def choices_of(class_type: str, name: str) -> list:
    return CHOICES.get((class_type, name), [])


def combo_choices(info: dict) -> dict[tuple[str, str], list]:
    """The dropdowns of our nodes in /object_info: V1 ``[choices, opts]`` or V3 ``["COMBO", {"options": ...}]``."""
    found = {}
    for ct in OUR_INPUTS:
        for group in ("required", "optional"):
            for name, spec in (info[ct]["input"].get(group) or {}).items():
                kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
                if isinstance(kind, list):
                    found[(ct, name)] = list(kind)
                elif kind == "COMBO":
                    found[(ct, name)] = list(opts.get("options", []))
    return found


def wrong_value(kind: str, bounds, choices: list[str]):
    """Invalid (or borderline) values of a widget of ``kind``."""
    options = [
        st.sampled_from(NASTY_STRINGS),
        st.sampled_from(SPECIAL_FLOATS),
        st.sampled_from(HUGE_INTS),
        json_values,
    ]
    if bounds:
        lo, hi = bounds
        edge = [lo - 1, hi + 1, lo - 1e-9, hi + 1e-9, -hi, hi * 10]
        if kind == "int":
            edge += [lo + 0.5, str(lo), float(hi), [lo], {"__value__": hi + 1}]
        options.append(st.sampled_from(edge))
    if choices:
        options.append(st.sampled_from([m for c in choices for m in near_misses(c)]))
        options.append(st.sampled_from([0, 1, -1, True, None, choices]))
    return st.one_of(options)


def valid_value(kind: str, bounds, choices: list[str]):
    if kind == "combo":
        return st.sampled_from(choices or [""])
    if kind == "bool":
        return st.booleans()
    lo, hi = bounds
    if kind == "int":
        return st.integers(min_value=lo, max_value=min(hi, MAX_RUN_STEPS)) if hi <= 50 else st.integers(lo, hi)
    return st.one_of(st.floats(min_value=lo, max_value=hi), st.sampled_from([lo, hi, 1.0]))


def link_value(prompt: dict):
    """A link to a random output (slot 0-5) of a random node, of a node not in the graph, or malformed."""
    ids = sorted(prompt)
    return st.one_of(
        st.tuples(st.sampled_from(ids), st.integers(0, 5)).map(list),
        st.sampled_from(
            [["999", 0], [ids[0], -1], [ids[0], 99], [ids[0], "0"], [int(ids[0]), 0], [ids[0]], [], [ids[0], 0, 0]]
        ),
        st.tuples(st.sampled_from(ids), st.sampled_from([None, 1.5, True])).map(list),
    )


@st.composite
def requests(draw):
    """(graph name, prompt, the changes: (node id, input, the value or "<missing>"))."""
    graph = draw(st.sampled_from(sorted(GRAPHS)))
    prompt = copy.deepcopy(GRAPHS[graph])
    slots = [(nid, name) for g, nid, name in SLOTS if g == graph]
    bare = [(nid, "unexpected") for g, nid in BARE if g == graph]
    chosen = draw(st.lists(st.sampled_from(slots + bare), min_size=1, max_size=3, unique=True))
    changes = []
    for nid, name in chosen:
        ct = prompt[nid]["class_type"]
        kind = OUR_INPUTS[ct].get(name, "extra")
        bounds, choices = BOUNDS.get((ct, name)), choices_of(ct, name)
        how = draw(st.sampled_from(["wrong", "wrong", "wrong", "valid", "link", "missing"]))
        if kind == "link" and how in ("wrong", "valid"):
            how = draw(st.sampled_from(["link", "wrong", "missing"]))
        if kind == "extra":
            how = draw(st.sampled_from(["wrong", "link"]))
        if how == "missing":
            prompt[nid]["inputs"].pop(name, None)
            value = "<missing>"
        else:
            if how == "link":
                strategy = link_value(prompt)
            elif how == "valid" and kind != "extra":
                strategy = valid_value(kind, bounds, choices)
            elif kind == "extra":
                strategy = json_values
            else:
                strategy = wrong_value(kind, bounds, choices)
            value = draw(strategy)
            prompt[nid]["inputs"][name] = value
        changes.append((nid, name, value))
    return graph, prompt, changes


# --- the server -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """One server for the module, its client, and the node display names; the default graph runs once first."""
    skip_without_models()
    server_mod = _host_module("server")
    tmp = tmp_path_factory.mktemp("fuzz-host")
    adapters = make_adapters(tmp / "adapters")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    server = server_mod.Server(Path(COMFYUI_DIR), ROOT, adapters, Path(tempfile.mkdtemp(prefix="mcm-fuzz-")), python)
    try:
        server.start()
        client = server_mod.Client(server.port)
        _, info = client.request("GET", "/object_info", timeout=120)
        INFO.update(info)
        CHOICES.update(combo_choices(info))
        state = {"server": server, "client": client, "n": 0}
        outcome, detail, _ = run_request(state, GRAPHS["default"], [])
        assert outcome == "accepted", f"the unchanged default graph: {detail}\n{server.log_tail()}"
        yield state
    finally:
        server.stop()


def read_latent(path: Path) -> array.array:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    t = json.loads(data[8 : 8 + n])["latent_tensor"]
    start, end = t["data_offsets"]
    values = array.array("f")
    values.frombytes(data[8 + n + start : 8 + n + end])
    return values


def has_cycle(prompt: dict) -> bool:
    """Whether the links of ``prompt`` (well-formed ones, to nodes in it) form a cycle."""
    edges = {
        nid: {
            v[0]
            for v in node["inputs"].values()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in prompt
        }
        for nid, node in prompt.items()
    }
    state: dict[str, int] = {}

    def visit(nid: str) -> bool:
        if state.get(nid) == 1:
            return True
        if state.get(nid) == 2:
            return False
        state[nid] = 1
        found = any(visit(up) for up in edges[nid])
        state[nid] = 2
        return found

    return any(visit(nid) for nid in prompt)


def one_line(text) -> str:
    return " ".join(str(text).split())


def run_request(state: dict, prompt: dict, changes: list) -> tuple[str, str, list[str]]:
    """Submit one prompt and check what the server did; (outcome, message, what the message must name for the
    judge). Fails (AssertionError) on anything but a clear refusal or a finite result."""
    client, server = state["client"], state["server"]
    state["n"] += 1
    prompt = copy.deepcopy(prompt)
    prompt["90"]["inputs"]["filename_prefix"] = f"fuzz/{state['n']:05d}"
    status, body = client.submit(prompt)
    changed_ids = {nid for nid, *_ in changes}
    if status == 400:
        errors = (body or {}).get("node_errors") if isinstance(body, dict) else None
        if has_cycle(prompt):
            # ComfyUI's own answer to a cycle (its validation recurses along the links): a 400 that names no node,
            # or a RecursionError at whichever node the recursion limit was reached in
            return "refused", one_line(f"a cycle: {body['error']['message']}: {errors or ''}")[:500], ["cycle"]
        assert errors, f"HTTP 400 without node_errors: {str(body)[:2000]}"
        named = changed_ids & set(errors)
        assert named or not changes, f"node_errors name none of the changed nodes {changed_ids}: {errors}"
        nid = sorted(named)[0] if named else sorted(errors)[0]
        e = errors[nid]["errors"][0]
        name = (e.get("extra_info") or {}).get("input_name", "")
        message = one_line(f"node {nid} {errors[nid]['class_type']}: {e['message']}: {e['details']} ({name})")
        return "refused", message, [f"node {nid}" for nid in changed_ids] or ["node"]
    assert status == 200 and isinstance(body, dict) and "prompt_id" in body, f"HTTP {status}: {str(body)[:2000]}"
    entry = client.wait(body["prompt_id"], timeout=RUN_TIMEOUT_S)
    assert entry is not None, f"the prompt did not end within {RUN_TIMEOUT_S} s"
    messages = {m[0]: m[1] for m in entry.get("status", {}).get("messages", []) if isinstance(m, list) and m}
    if "execution_error" in messages or entry.get("status", {}).get("status_str") != "success":
        err = messages.get("execution_error") or {}
        node_type, message = err.get("node_type", "?"), str(err.get("exception_message", ""))
        if str(err.get("exception_type")).endswith("DependencyCycleError") and has_cycle(prompt):
            return "refused", one_line(f"a cycle: {message}"), ["cycle"]  # ComfyUI's own check, at execution
        assert node_type in OUR_INPUTS, (
            f"an execution error in {node_type} (node {err.get('node_id')}), not an MCM node: "
            f"{err.get('exception_type')}: {message}\n{''.join(err.get('traceback') or [])[-3000:]}"
        )
        changed_here = [name for nid, name, _ in changes if nid == err.get("node_id")]
        return "refused", message, [INFO[node_type]["display_name"], node_type, *OUR_INPUTS[node_type], *changed_here]
    for out in (entry.get("outputs") or {}).values():
        for item in out.get("latents", []):
            values = read_latent(server.output_dir / item.get("subfolder", "") / item["filename"])
            bad = sum(1 for v in values if not math.isfinite(v))
            assert not bad, f"the run succeeded but its latent holds {bad} NaN or infinite values: {changes}"
            return "accepted", "", []
    raise AssertionError(f"the run succeeded but saved no latent: {entry.get('outputs')}")


# --- the tests ----------------------------------------------------------------------------------------------------


def test_the_fuzzed_inputs_are_the_nodes_inputs(host):
    """OUR_INPUTS and BOUNDS (what the generator changes) match the nodes the server lists."""
    info = INFO
    for ct, inputs in OUR_INPUTS.items():
        listed = info[ct]["input"]
        assert set(inputs) == set(listed.get("required", {})) | set(listed.get("optional", {})), ct
    for (ct, name), (lo, hi) in BOUNDS.items():
        opts = info[ct]["input"]["required"][name][1]
        assert (opts["min"], opts["max"]) == (lo, hi), (ct, name, opts)


@fuzz_target()
@given(case=requests())
def test_random_prompts_are_answered_clearly(host, case):
    graph, prompt, changes = case
    outcome, message, names = run_request(host, prompt, changes)
    judge(TARGET, outcome, message, names)
    assert host["client"].alive(), f"the server stopped answering /system_stats after {graph}: {changes}"


# --- what the campaign found (fixed): each case once, with the message it now gets ------------------------------

REGRESSIONS = [
    # NaN passes ComfyUI's min/max validation: it sampled NaN silently, or failed naming neither node nor input
    ("default", [("10", "denoise", math.nan)], "MCM Scheduler: denoise = nan"),
    ("ksampler", [("10", "denoise", math.nan)], "MCM KSampler: denoise = nan"),
    ("ksampler", [("10", "cfg", math.nan)], "MCM KSampler: cfg = nan"),
    ("model sampling", [("80", "timestep_scaling", math.nan)], "MCM Model Sampling: timestep_scaling = nan"),
    # a valid denoise too low for the steps: the message spoke of strength and num_steps
    ("default", [("10", "denoise", 0.02), ("10", "steps", 2)], "MCM Scheduler: steps = 2 with denoise = 0.02"),
    # any JSON value on an input meant for a link: AttributeErrors naming neither node nor input
    ("default", [("4", "model", "")], "Load MCM LoRA: model must be a MODEL"),
    ("default", [("4", "motion_model", "x")], "Load MCM LoRA: motion_model must be a MOTION_MODEL_ADE"),
    ("default", [("10", "model", "")], "MCM Scheduler: model must be a MODEL"),
    ("model sampling", [("80", "model", 1.5)], "MCM Model Sampling: model must be a MODEL"),
    ("ksampler", [("10", "model", "m")], "MCM KSampler: model must be a MODEL"),
    ("ksampler", [("10", "positive", "p")], "MCM KSampler: positive must be a CONDITIONING"),
    ("ksampler", [("10", "negative", 0)], "MCM KSampler: negative must be a CONDITIONING"),
    ("ksampler", [("10", "latent_image", {"samples": 1})], "MCM KSampler: latent_image must be a LATENT"),
    # a link that closes a cycle (Load MCM LoRA fed by the MCM Model Sampling downstream of it): ComfyUI 0.8's
    # validation recursed to a RecursionError reported at another node (the judge took it for ours)
    ("model sampling", [("4", "model", ["80", 0])], "a cycle"),
    # a malformed link (a dict as the node id) in a refused prompt: the judge's cycle check raised TypeError
    ("default", [("4", "model", [{"a": 1}, 0])], "node 4"),
    # the largest seed the widgets accept overflowed ComfyUI's CPU noise sampler (seed + 1)
    ("ksampler", [("10", "seed", 2**64 - 1)], None),
    ("default", [("12", "noise_seed", 2**64 - 1)], None),
]


@pytest.mark.parametrize(
    "graph, edits, expected", REGRESSIONS, ids=[f"{g}:{e[0][1]}={e[0][2]!r}"[:60] for g, e, _ in REGRESSIONS]
)
def test_what_the_campaign_found_is_answered_clearly(host, graph, edits, expected):
    prompt = copy.deepcopy(GRAPHS[graph])
    for nid, name, value in edits:
        prompt[nid]["inputs"][name] = value
    outcome, message, _ = run_request(host, prompt, edits)
    if expected is None:
        assert outcome == "accepted", message
    else:
        assert outcome == "refused" and message.strip().startswith(expected), message
        assert "\n" not in message.strip() and "Traceback" not in message
