"""Fuzz targets for the adapter-file parsers (``mcm/weights``): safetensors bytes, ``mcm.*`` metadata, PEFT
``adapter_config.json`` and the ``python -m mcm.weights`` command line.

Every example builds its input in a fresh temporary folder, feeds it to the parser and hands the outcome to
the one judge (``tests/fuzz/judge.py``): accepted, or refused with :class:`~mcm.weights.AdapterError` whose
one-line message names the file (and the ``mcm.<key>`` or config field where the target says so), and the
input unchanged (``tree_hash``). A second parser fed the same input in the same example (``read_safetensors``
beside ``load_adapter``, ...) is judged under ``"<target> (<parser>)"``, so that a target's own row counts
examples. With ``MCM_FUZZ_SEED`` set, the examples are drawn from that seed (reproducible).

Inputs start from small valid adapters (rank 1-4, 8-wide, two or three layers) so that each example costs
milliseconds; the mutations are the ones that reach the parsers' branches: truncation at every offset class,
byte flips, header-length fields, header JSON of the wrong shape, unknown dtypes, absurd shapes and offsets,
NaN/inf values, metadata and config values of every JSON type (deep nesting and over-long integers
included), regular-expression keys, and CLI flag combinations.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import fields
from functools import cache
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as save_bytes

from mcm.weights import (
    OFFICIAL_TARGET_MODULES,
    Adapter,
    AdapterError,
    AdapterMeta,
    LoraWeights,
    check_mcm_marker,
    load_adapter,
    read_safetensors,
    read_safetensors_metadata,
    save_adapter,
)
from mcm.weights.__main__ import TARGETS, main
from mcm.weights.peft import read_peft_config
from tests.fuzz.judge import fuzz_target, judge, tree_hash
from tests.test_weights_bad_input import ADE_MOTION, MOTION, SPATIAL

CONV = "down_blocks.0.resnets.0.conv1"  # a conv layer: 4-D factors
WIDTH = 8
META_KEYS = ("format", *(f.name for f in fields(AdapterMeta)))


# --- running a parser -----------------------------------------------------------------------------------


def attempt(fn: Callable, *args, **kwargs) -> tuple[str, str]:
    """("accepted", "") or ("refused", message) for the project's error; anything else propagates (a failure)."""
    try:
        fn(*args, **kwargs)
    except AdapterError as exc:
        return "refused", str(exc)
    return "accepted", ""


def judged(target: str, fn: Callable, path: Path, names=(), *args, **kwargs) -> tuple[str, str]:
    """Run ``fn(path, ...)``, judge it under ``target`` (the message must name ``path`` and one of ``names``)
    and check that nothing under ``path`` changed."""
    before = tree_hash(path)
    outcome, message = attempt(fn, path, *args, **kwargs)
    if outcome == "refused":
        assert str(path) in message, f"{target}: the message does not name {path}: {message}"
    judge(target, outcome, message, names=list(names) or [str(path)])
    assert tree_hash(path) == before, f"{target}: {path} changed"
    return outcome, message


# --- valid inputs to start from -------------------------------------------------------------------------


def layer_tensors(rank: int, dtype: torch.dtype, conv: bool, prefix: str = "") -> dict[str, torch.Tensor]:
    """LoRA factors (PEFT names) of a spatial and a motion layer, and of a conv layer if asked."""
    g = torch.Generator().manual_seed(rank)
    out = {}
    for path in (SPATIAL, MOTION):
        out[f"{prefix}{path}.lora_A.weight"] = torch.randn(rank, WIDTH, generator=g).to(dtype)
        out[f"{prefix}{path}.lora_B.weight"] = torch.randn(WIDTH, rank, generator=g).to(dtype)
    if conv:
        out[f"{prefix}{CONV}.lora_A.weight"] = torch.randn(rank, 4, 3, 3, generator=g).to(dtype)
        out[f"{prefix}{CONV}.lora_B.weight"] = torch.randn(4, rank, 1, 1, generator=g).to(dtype)
    return out


def valid_adapter(rank: int, dtype: torch.dtype = torch.float32, conv: bool = False) -> Adapter:
    t = layer_tensors(rank, dtype, conv)
    paths = sorted({k.rsplit(".lora_", 1)[0] for k in t})
    layers = {p: LoraWeights(t[f"{p}.lora_A.weight"], t[f"{p}.lora_B.weight"], float(rank)) for p in paths}
    return Adapter(AdapterMeta(lora_rank=rank, lora_alpha=float(rank), style="fuzz"), layers)


@cache
def base_file(kind: str, rank: int, dtype_name: str, conv: bool) -> bytes:
    """The bytes of a small valid file: our adapter (``save_adapter``), a plain LoRA, or one with no tensors."""
    dtype = getattr(torch, dtype_name)
    if kind == "mcm":
        with tempfile.TemporaryDirectory() as tmp:
            return save_adapter(valid_adapter(rank, dtype, conv), Path(tmp) / "a.safetensors").read_bytes()
    if kind == "lora":
        return save_bytes(layer_tensors(rank, dtype, conv))
    return save_bytes({}, metadata={"format": "pt"})


def split(data: bytes) -> tuple[int, bytes, bytes]:
    """(header length, header, tensor data) of a valid safetensors file."""
    n = struct.unpack("<Q", data[:8])[0]
    return n, data[8 : 8 + n], data[8 + n :]


def join(header: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + body


# --- values of every JSON type ----------------------------------------------------------------------------

SPECIAL_NUMBERS = [0, -1, 1, 2, 3, 7, 50, 1000, 2**31, 2**53 + 1, 2**63, 2**64, 10**30, 10**400, -(10**400)]
SPECIAL_NUMBERS += [0.0, -0.0, 0.5, 1e-320, 1e-45, 1e38, 3.5e38, 1e308, float("nan"), float("inf"), float("-inf")]
BIG_NUMBERS = [1e38, 3.5e38, 1e308, 2**64, 2**1024, 10**400]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_NUMBERS),
    st.text(max_size=16),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
#: JSON text that ``json.loads`` cannot turn into a value, or turns into one only with trouble
BAD_JSON_TEXTS = [
    "",
    " ",
    "{",
    "[1,]",
    "'x'",
    "nan",
    "None",
    "True",
    '"unterminated',
    "\ufeff{}",
    "[" * 100_000 + "]" * 100_000,  # nested deeper than the parser's recursion limit
    '{"a":' * 5_000 + "1" + "}" * 5_000,
    "9" * 5_000,  # an integer longer than Python converts from text (4300 digits)
    "-" + "1" * 4_301,
]


@st.composite
def json_texts(draw, values=json_values) -> str:
    """A JSON document (NaN/Infinity included) or text that is not one."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.one_of(st.sampled_from(BAD_JSON_TEXTS), st.text(max_size=30)))
    return json.dumps(draw(values), allow_nan=True)


# --- target 1: safetensors bytes ------------------------------------------------------------------------

DTYPE_NAMES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"]
DTYPE_NAMES += ["C64", "U64", "F4", "XX", "f32", "", "float32"]
ABSURD_SHAPES = [[2**40, 1], [2**40, 2**40], [2**63, 2], [2**64], [-1, 8], [], [0, 8], [1], [8, 0, 2], [1.5, 8]]
ABSURD_SHAPES += [["8", 1], "8", None, [2**32, 2**32, 2**32]]


def _nan_bytes(dtype: str, value: float) -> bytes:
    t = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    return torch.tensor([value], dtype=t).view(torch.uint8).numpy().tobytes()


@st.composite
def header_mutation(draw, header: dict, body_len: int):
    """A header of the wrong shape: the JSON is rewritten, the tensor data stays."""
    tensors = sorted(k for k in header if k != "__metadata__")
    kind = draw(
        st.sampled_from(["whole", "drop", "dtype", "shape", "offsets", "rename", "metadata", "extra", "padding"])
    )
    header = json.loads(json.dumps(header))
    if kind == "whole" or not tensors:
        return json.dumps(draw(json_values), allow_nan=True).encode()
    name = draw(st.sampled_from(tensors))
    entry = header[name]
    if kind == "drop":
        del entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    elif kind == "dtype":
        entry["dtype"] = draw(st.one_of(st.sampled_from(DTYPE_NAMES), json_values))
    elif kind == "shape":
        entry["shape"] = draw(st.one_of(st.sampled_from(ABSURD_SHAPES), st.lists(st.integers(-2, 2**64), max_size=4)))
    elif kind == "offsets":
        begin, end = entry["data_offsets"]
        other = header[draw(st.sampled_from(tensors))]["data_offsets"]
        choices = [[-1, end], [end, begin], list(other), [begin, body_len + 4], [0, 2**64 - 1], [begin, end, end]]
        choices += [[begin], [str(begin), end], [begin + 0.5, end], None, [begin + 1, end + 1], [0, 0]]
        entry["data_offsets"] = draw(st.one_of(st.sampled_from(choices), json_values))
    elif kind == "rename":
        header[draw(st.text(max_size=40))] = header.pop(name)
    elif kind == "metadata":
        header["__metadata__"] = draw(
            st.one_of(json_values, st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        )
    elif kind == "extra":
        entry[draw(st.text(max_size=8))] = draw(json_values)
    text = json.dumps(header, allow_nan=True).encode()
    if kind == "padding":
        text += draw(st.sampled_from([b" " * 7, b"\x00", b"\n", b"}", b"\xff", b"garbage"]))
    return text


@st.composite
def safetensors_bytes(draw) -> bytes:
    """Random bytes, or a small valid file (our adapter, a plain LoRA, no tensors) damaged in one way."""
    how = draw(st.sampled_from(["random", "truncate", "flip", "length", "header", "header-text", "values", "valid"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    kind = draw(st.sampled_from(["mcm", "mcm", "lora", "empty"]))
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    data = base_file(kind, draw(st.integers(1, 4)), dtype, draw(st.booleans()))
    n, header, body = split(data)
    regions = {"length": (0, 8), "header": (8, 8 + n), "data": (8 + n, len(data))}
    if how == "truncate":
        where = draw(st.sampled_from(["length", "header", "data", "end"]))
        if where == "end" or regions[where][0] >= regions[where][1]:
            return data
        return data[: draw(st.integers(regions[where][0], regions[where][1] - 1))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            lo, hi = regions[draw(st.sampled_from(sorted(regions)))]
            if lo < hi:
                out[draw(st.integers(lo, hi - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "length":
        length = draw(st.sampled_from([n + 1, n - 1, len(data), len(data) - 7, 2**64 - 1, 2**63, 100_000_001, 0, 2]))
        return struct.pack("<Q", length) + data[8:]
    if how == "header":
        return join(draw(header_mutation(json.loads(header), len(body))), body)
    if how == "header-text":
        text = draw(st.one_of(st.binary(max_size=40), st.sampled_from(BAD_JSON_TEXTS).map(str.encode)))
        return join(text, body)
    if how == "values" and kind != "empty":
        entries = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
        name = draw(st.sampled_from(sorted(entries)))
        begin, end = entries[name]["data_offsets"]
        size = {"F32": 4, "F16": 2, "BF16": 2}[entries[name]["dtype"]]
        at = draw(st.integers(0, (end - begin) // size - 1)) * size + begin
        value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        patch = _nan_bytes(entries[name]["dtype"], value)
        return join(header, body[:at] + patch + body[at + size :])
    return data


@fuzz_target()
@given(data=safetensors_bytes(), name=st.sampled_from(["adapter", "animatediff-webvid", "mcm lora ü"]))
def test_fuzz_safetensors_bytes(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.safetensors"
        path.write_bytes(data)
        loaded, _ = judged("safetensors bytes", load_adapter, path)
        read, _ = judged("safetensors bytes (read_safetensors)", read_safetensors, path)
        header, _ = judged("safetensors bytes (read_safetensors_metadata)", read_safetensors_metadata, path)
        judged("safetensors bytes (check_mcm_marker)", check_mcm_marker, path)
        assert loaded == "refused" or read == "accepted", "load_adapter read a file that read_safetensors refuses"
        assert read == "refused" or header == "accepted", "the tensors were read but not the header"


# --- target 2: mcm metadata --------------------------------------------------------------------------------

#: values an entry is often given (some valid, some near misses), beside values of every JSON type
TYPICAL = {
    "format": ["mcm-adapter", "MCM-adapter", "peft"],
    "format_version": [1, 0, 2, 1.0, True, "1"],
    "base": ["sd15-animatediff", "sd15", "modelscope-t2v", "sdxl", "SD15"],
    "motion_module": ["v2", "v3", None, ""],
    "lora_rank": [1, 2, 4, 64, 0, 2.0, 2**64, 10**400],
    "lora_alpha": [1, 2.0, 0.5, 0, -1, 1e38, 1e308, 10**400],
    "target_modules": [["to_q"], list(OFFICIAL_TARGET_MODULES), [], [""], "to_q"],
    "beta_schedule": ["linear", "scaled_linear", "sqrt_linear"],
    "timestep_scaling": [4, 10.0, 0, 1e308, 10**400],
    "num_ddim_timesteps": [50, 1, 1000, 3, 7, 2000, 10**400],
    "prediction_type": ["epsilon", "v_prediction", "sample", "flow"],
    "recommended_steps": [[1, 2, 4, 8], [1], [50], [60], [0], [], [10**400]],
    "default_steps": [1, 4, 50, 51, 0, 10**400],
    "recommended_cfg": [0, 1.0, 7.5, -1, 1e308, 10**400],
    "temporal_norm": ["frames", "per_frame", "video", "frame", "x"],
    "style": ["webvid", "my style", "-x", "", "a/b"],
    "name": ["", "x"],
    "description": ["", "d"],
    "training": [{}, {"a": 1}, []],
}
#: entries whose check also looks at another one: a change to the key may be reported under these
DEPENDS = {"base": ["motion_module"], "num_ddim_timesteps": ["recommended_steps", "default_steps"]}


@st.composite
def metadata_changes(draw) -> tuple[dict[str, str | None], dict[str, str]]:
    """({mcm key: new JSON text, or None to remove it}, other header entries to add)."""
    if draw(st.integers(0, 2)) == 0:  # one entry, a typical value: mostly a readable file, for the CLI to convert
        key = draw(st.sampled_from(sorted(TYPICAL)))
        return {key: json.dumps(draw(st.sampled_from(TYPICAL[key])))}, {}
    keys = draw(st.lists(st.sampled_from(META_KEYS), max_size=4, unique=True))
    changes: dict[str, str | None] = {}
    for key in keys:
        changes[key] = draw(
            st.one_of(
                st.none(),
                st.sampled_from(TYPICAL[key]).map(lambda v: json.dumps(v)),
                json_texts(),
            )
        )
    for key in draw(st.lists(st.text(min_size=1, max_size=10), max_size=2)):
        changes[key] = draw(json_texts())
    if draw(st.integers(0, 9)) == 0:  # every mcm.* entry removed: the file is read as a plain LoRA
        changes = dict.fromkeys(META_KEYS)
    other = {}
    if draw(st.booleans()):  # where diffusers >= 0.33 keeps its LoraConfig (read for files without mcm.*)
        other["lora_adapter_metadata"] = draw(
            st.one_of(
                json_texts(),
                st.dictionaries(st.sampled_from(["lora_alpha", "unet.lora_alpha", "r"]), json_values).map(json.dumps),
            )
        )
    return changes, other


@fuzz_target()
@given(
    change=metadata_changes(),
    rank=st.integers(1, 4),
    spatial_only=st.booleans(),
)
def test_fuzz_mcm_metadata(change, rank, spatial_only):
    changes, other = change
    tensors, metadata = read_safetensors_bytes(base_file("mcm", rank, "float32", False))
    if spatial_only:
        tensors = {k: v for k, v in tensors.items() if k.startswith(SPATIAL)}
        metadata["mcm.base"] = json.dumps("sd15")
        metadata["mcm.motion_module"] = "null"
    for key, raw in changes.items():
        if raw is None:
            metadata.pop(f"mcm.{key}", None)
        else:
            metadata[f"mcm.{key}"] = raw
    metadata.update(other)
    touched = [*changes, *(d for k in changes for d in DEPENDS.get(k, []))]
    names = {spelling for k in touched for spelling in spelled(f"mcm.{k}")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter.safetensors"
        path.write_bytes(save_bytes(tensors, metadata=metadata))
        has_mcm = any(k.startswith("mcm.") for k in metadata)
        judged("mcm metadata", load_adapter, path, sorted(names) if has_mcm else [str(path)])
        judged("mcm metadata (check_mcm_marker)", check_mcm_marker, path, sorted(names) or [str(path)])


def spelled(name: str) -> list[str]:
    """A name as a message may spell it: as is, or inside a ``repr`` (a list of names, a quoted key)."""
    return [name, repr(name)[1:-1]]


def read_safetensors_bytes(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        path.write_bytes(data)
        return read_safetensors(path)


# --- target 3: peft adapter_config.json -------------------------------------------------------------------

PATTERN_KEYS = [
    "to_q",
    "attn1.to_q",
    SPATIAL,
    MOTION,
    "motion_modules.*",
    ".*",
    "to_(q|k)",
    "down_blocks\\.0\\..*to_q",
    "(?i)TO_Q",  # inline flags: valid alone, not inside PEFT's (.*\.)?(key)$
    "(?x) to_q",
    "[",
    "(",
    "\\1",
    "(a)\\2",
    "(?P<x>to_q)",
    "a{4294967296}",  # a repeat count past re's limit
    "x{2,1}",
    "(" * 150 + "to_q" + ")" * 150,
    "(.*)*x",  # exponential backtracking on a module name: a config that would hang the host
    "(.|.)*x",
    "(\\w+\\.)+y",
    ".*.*.*.*.*.*.*.*x",  # polynomial, of degree 8
    "",
]
pattern_keys = st.one_of(st.sampled_from(PATTERN_KEYS), st.text(max_size=12))
CONFIG_FIELDS = {
    "r": st.one_of(st.integers(0, 5), st.sampled_from([2**63, 10**400, -1, 2.0, "2", True, None])),
    "lora_alpha": st.one_of(st.integers(-1, 16), st.sampled_from(SPECIAL_NUMBERS + ["4", True, None])),
    "alpha_pattern": st.dictionaries(
        pattern_keys, st.one_of(st.integers(-1, 8), st.sampled_from(SPECIAL_NUMBERS)), max_size=3
    ),
    "rank_pattern": st.dictionaries(
        pattern_keys, st.one_of(st.integers(0, 5), st.sampled_from([2**63, 2.0, "2", True])), max_size=3
    ),
    "target_modules": st.one_of(st.lists(st.sampled_from(["to_q", "conv1", "", "*"]), max_size=3), st.text(max_size=8)),
    "use_rslora": st.sampled_from([True, False, None, "yes", 1]),
    "use_dora": st.sampled_from([False, None, True, "no", 0]),
    "lora_bias": st.sampled_from([False, None, True, 0]),
    "fan_in_fan_out": st.sampled_from([False, None, True, "false"]),
    "inference_mode": st.sampled_from([True, False, None, 1]),
    "bias": st.sampled_from(["none", None, "all", "lora_only", 0, []]),
    "modules_to_save": st.sampled_from([None, [], ["conv_out"], "conv_out", 0]),
    "peft_type": st.sampled_from(["LORA", "LOHA", "lora", None, 1]),
    "base_model_name_or_path": st.one_of(st.none(), st.text(max_size=20), st.integers()),
    "task_type": st.sampled_from([None, "CAUSAL_LM", 3]),
    "lora_dropout": st.sampled_from([0.0, 0.1, -1, "x"]),
    "layers_to_transform": st.sampled_from([None, [0, 1], 3]),
}


@st.composite
def peft_configs(draw, rank: int) -> bytes:
    """An adapter_config.json: LoraConfig-shaped JSON with fields of random types and values, or not JSON."""
    how = draw(st.integers(0, 9))
    if how == 0:
        return draw(st.one_of(st.binary(max_size=60), st.sampled_from(BAD_JSON_TEXTS).map(str.encode)))
    if how == 1:
        return json.dumps(draw(json_values), allow_nan=True).encode()  # a JSON non-object (mostly)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["to_q"], "bias": "none"}
    if how in (4, 5):  # the numbers that scale the layers, at their extremes: mostly a readable folder
        numbers = st.sampled_from([1, 2, 0.5, *BIG_NUMBERS])
        field = draw(st.sampled_from(["lora_alpha", "alpha_pattern", "rank_pattern", "r"]))
        if field == "lora_alpha":
            config[field] = draw(numbers)
        elif field == "r":
            config["rank_pattern"] = {".*": rank}
            config[field] = draw(st.sampled_from([1, rank + 1, *BIG_NUMBERS]))
        else:
            key = draw(st.sampled_from(["to_q", ".*", "attentions.*", "motion_modules.*"]))
            config[field] = {key: draw(numbers) if field == "alpha_pattern" else rank}
        config["use_rslora"] = draw(st.booleans())
        return json.dumps(config, allow_nan=True).encode()
    for key in draw(st.lists(st.sampled_from(sorted(CONFIG_FIELDS)), max_size=4, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            config.pop(key, None)
        else:
            config[key] = draw(st.one_of(CONFIG_FIELDS[key], json_values) if how == 2 else CONFIG_FIELDS[key])
    text = json.dumps(config, allow_nan=True, indent=draw(st.sampled_from([None, 2])))
    encoded = text.encode()
    if how == 3:  # a byte that is not UTF-8, or a UTF-16 file
        encoded = draw(st.sampled_from([encoded + b"\xff", b"\xfe" + encoded, text.encode("utf-16")]))
    return encoded


@st.composite
def peft_folders(draw) -> tuple[bytes, bytes]:
    """(adapter_config.json bytes, adapter_model.safetensors bytes): valid LoRA tensors (PEFT names, rank 1-4),
    sometimes with our metadata in the header (as ``export_peft`` writes it)."""
    rank = draw(st.integers(1, 4))
    conv = draw(st.booleans())
    tensors = layer_tensors(rank, torch.float32, conv, prefix="base_model.model.")
    metadata = {"format": "pt"}
    if draw(st.integers(0, 3)) == 0:
        metadata.update(valid_adapter(rank, conv=conv).meta.to_metadata())
    return draw(peft_configs(rank)), save_bytes(tensors, metadata=metadata)


def write_peft(folder: Path, config: bytes, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_bytes(config)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


@fuzz_target()
@given(peft=peft_folders())
def test_fuzz_peft_adapter_config(peft):
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_peft(Path(tmp) / "animatediff-webvid", *peft)
        config = folder / "adapter_config.json"
        loaded, _ = judged("peft adapter_config.json", load_adapter, folder, [str(config)])
        read, _ = judged("peft adapter_config.json (read_peft_config)", read_peft_config, config)
        assert read == "accepted" or loaded == "refused", "a folder loaded although its config was refused"


# --- target 4: weights cli -------------------------------------------------------------------------------

NAMES = ["a", "animatediff-webvid", "my lora", "ü"]


@st.composite
def cli_inputs(draw):
    """What ``SRC`` is: ("file", name, bytes), ("peft", name, config, weights), ("folder", [inputs]) or
    ("missing", name)."""
    kind = draw(
        st.sampled_from(["file", "metadata", "metadata", "peft", "peft", "valid", "folder", "pickle", "missing"])
    )
    name = draw(st.sampled_from(NAMES))
    if kind == "file":
        return ("file", f"{name}.safetensors", draw(safetensors_bytes()))
    if kind == "metadata":
        changes, other = draw(metadata_changes())
        tensors, metadata = read_safetensors_bytes(base_file("mcm", draw(st.integers(1, 4)), "float32", False))
        for key, raw in changes.items():
            if raw is None:
                metadata.pop(f"mcm.{key}", None)
            else:
                metadata[f"mcm.{key}"] = raw
        return ("file", f"{name}.safetensors", save_bytes(tensors, metadata={**metadata, **other}))
    if kind == "peft":
        return ("peft", name, *draw(peft_folders()))
    if kind == "valid":
        how = draw(st.sampled_from(["mcm", "lora"]))
        return ("file", f"{name}.safetensors", base_file(how, draw(st.integers(1, 4)), "float32", draw(st.booleans())))
    if kind == "pickle":  # read only with --allow-pickle: a tensors-only pickle, cut short, or other bytes
        buf = io.BytesIO()
        torch.save(layer_tensors(draw(st.integers(1, 2)), torch.float32, False), buf)
        data = buf.getvalue()
        data = draw(
            st.one_of(
                st.just(data),
                st.integers(0, len(data) - 1).map(lambda n: data[:n]),
                st.binary(max_size=64),
                st.sampled_from([b"not a pickle", b"\x80\x04N.", b"\x80\x02}q\x00."]),
            )
        )
        return ("file", f"{name}.{draw(st.sampled_from(['bin', 'ckpt', 'pt']))}", data)
    if kind == "folder":
        children = draw(st.lists(cli_inputs().filter(lambda c: c[0] in ("file", "peft")), max_size=3))
        unique = {c[1]: c for c in children}  # one child per name
        return ("folder", f"{name}s", list(unique.values()))
    return ("missing", f"{name}.safetensors")


def materialize(spec, parent: Path) -> Path:
    kind, name = spec[0], spec[1]
    path = parent / name
    if kind == "file":
        path.write_bytes(spec[2])
    elif kind == "peft":
        write_peft(path, spec[2], spec[3])
    elif kind == "folder":
        path.mkdir()
        for child in spec[2]:
            materialize(child, path)
    return path


def motion_module_file(parent: Path, how: str) -> Path:
    """A ``--base-motion-module``: the tiny AnimateDiff module MOTION fits, damaged bytes, a pickle, or none."""
    g = torch.Generator().manual_seed(5)
    module = {f"{ADE_MOTION}.weight": torch.randn(WIDTH, WIDTH, generator=g), f"{ADE_MOTION}.bias": torch.zeros(WIDTH)}
    path = parent / ("mm.ckpt" if how == "pickle" else "mm.safetensors")
    if how == "valid":
        path.write_bytes(save_bytes(module))
    elif how == "wrong":
        path.write_bytes(save_bytes({"other.weight": torch.zeros(2, 2)}))
    elif how == "int":
        path.write_bytes(save_bytes({f"{ADE_MOTION}.weight": torch.zeros(WIDTH, WIDTH, dtype=torch.int32)}))
    elif how == "cut":
        path.write_bytes(save_bytes(module)[:50])
    elif how == "pickle":
        torch.save(module, path)
    return path


@st.composite
def cli_commands(draw):
    """(src spec, command, flags): ``inspect`` or ``convert``; half the time with the plain flags (so that the
    conversions themselves are exercised), else with a random combination of all of them."""
    src = draw(cli_inputs())
    command = draw(st.sampled_from(["inspect", "convert", "convert", "convert"]))
    to = draw(st.sampled_from(TARGETS))
    flags = {
        "json": draw(st.booleans()),
        "allow_pickle": draw(st.booleans()),
        "to": to,
        "dst": "new-folder" if to == "peft" else "new-file",
        "force": False,
        "variant": None,
        "set": [],
        "base": None,
        "strength": None,
        "junk": None,
    }
    if draw(st.booleans()):
        return src, command, flags
    set_items = st.one_of(
        st.sampled_from(sorted(TYPICAL)).flatmap(
            lambda k: st.sampled_from(TYPICAL[k]).map(lambda v: (k, json.dumps(v)))
        ),
        st.tuples(st.sampled_from([*META_KEYS, "bogus"]), json_texts()),
        st.tuples(st.sampled_from(sorted(TYPICAL)), st.text(max_size=8)),
    )
    flags |= {
        "to": draw(st.sampled_from([*TARGETS, *TARGETS, "onnx"])),
        "dst": draw(st.sampled_from(["new-file", "new-folder", "nested", "existing-file", "existing-folder"])),
        "force": draw(st.booleans()),
        "variant": draw(st.one_of(st.none(), st.sampled_from(NAMES), st.text(max_size=6))),
        "set": draw(st.lists(st.one_of(set_items.map("=".join), st.text(max_size=8)), max_size=2)),
        "base": draw(st.sampled_from([None, "valid", "wrong", "int", "cut", "pickle", "missing"])),
        "strength": draw(st.one_of(st.none(), st.sampled_from(["0.5", "-1", "nan", "inf", "1e999", "x", "1e308"]))),
        "junk": draw(st.sampled_from([None] * 8 + ["--bogus", "--to", "-x"])),
    }
    if flags["base"] and draw(st.integers(0, 3)):  # --base-motion-module goes with --to ade
        flags["to"] = "ade"
    return src, command, flags


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``python -m mcm.weights ARGV`` in this process: (exit status, stdout, stderr); a warning is printed to
    stderr as it would be from the shell (pytest would otherwise record it out of sight)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _print_warning
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refuses a flag: usage and one "error:" line, status 2
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def build_argv(command: str, flags: dict, src: Path, work: Path) -> tuple[list[str], Path | None, Path | None]:
    """(argv, DST, --base-motion-module)."""
    if command == "inspect":
        argv = ["inspect", str(src)] + ["--json"] * flags["json"] + ["--allow-pickle"] * flags["allow_pickle"]
        return argv + ([flags["junk"]] if flags["junk"] else []), None, None
    out = work / "out"
    dst = {
        "new-file": out / "o.safetensors",
        "new-folder": out / "o_peft",
        "nested": out / "x" / "y" / "o.safetensors",
        "existing-file": out / "old.safetensors",
        "existing-folder": out / "old_peft",
    }[flags["dst"]]
    argv = ["convert", str(src), str(dst), "--to", flags["to"]]
    if flags["variant"] is not None:
        argv += ["--variant", flags["variant"]]
    for item in flags["set"]:
        argv += [f"--set={item}"]
    base = motion_module_file(work, flags["base"]) if flags["base"] else None
    if base:
        argv += ["--base-motion-module", str(base)]
    if flags["strength"] is not None:
        argv += [f"--strength={flags['strength']}"]
    argv += ["--allow-pickle"] * flags["allow_pickle"] + ["--force"] * flags["force"]
    return argv + ([flags["junk"]] if flags["junk"] else []), dst, base


def _names(argv: list[str], src: Path, dst: Path | None, base: Path | None) -> list[str]:
    """What a refusal may name: the input (or a file in it), the output, the motion module, a flag, or the
    ``mcm.*`` entry a ``--set`` gives."""
    names = [str(src), str(dst), str(base)] + [a.split("=", 1)[0] for a in argv if a.startswith("-")]
    return names + [s for a in argv if a.startswith("--set=") for s in spelled(f"mcm.{a[6:].split('=', 1)[0]}")]


def _check_inspect_listing(out: str, json_mode: bool, failed: int) -> None:
    """Exit 1 of ``inspect``: every unreadable adapter listed once, its reason on one line naming it."""
    if json_mode:
        data = json.loads(out)
        entries = [d for d in (data if isinstance(data, list) else [data]) if "error" in d]
        assert len(entries) == failed, out
        for d in entries:
            assert "\n" not in d["error"] and "Traceback" not in d["error"], d["error"]
            assert d["source"] in d["error"], f"the reason does not name {d['source']}: {d['error']}"
    else:
        assert out.count("\n  ERROR: ") == failed, out


@fuzz_target()
@given(cmd=cli_commands())
def test_fuzz_weights_cli(cmd):
    spec, command, flags = cmd
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "in").mkdir()
        (work / "out").mkdir()
        (work / "out" / "old.safetensors").write_bytes(b"keep me")
        (work / "out" / "old_peft").mkdir()
        (work / "out" / "old_peft" / "notes.txt").write_text("keep me too")
        src = materialize(spec, work / "in")
        argv, dst, base = build_argv(command, flags, src, work)
        before, before_src = tree_hash(work), tree_hash(work / "in")
        code, out, err = cli(argv)
        assert "Traceback" not in out + err, f"a traceback:\n{out}{err}"
        lines = err.strip().splitlines()
        if code == 0:
            assert not any(line.startswith("error") for line in lines), err
            assert tree_hash(work / "in") == before_src, "the input changed"
            if command == "inspect":
                assert tree_hash(work) == before, "inspect wrote something"
                if flags["json"]:
                    json.loads(out)
            else:
                assert dst.exists() and lines == [line for line in lines if line.startswith("note: ")], err
                if not flags["base"]:  # what convert writes reads back (a merged motion module is no adapter)
                    outcome, message = judged("weights cli (output reads back)", load_adapter, dst)
                    assert outcome == "accepted", f"convert wrote a file that does not read back: {message}"
                else:  # a merged motion module: the tiny base is finite, so must the merged weights be
                    merged = read_safetensors(dst)[0]
                    assert all(bool(torch.isfinite(t).all()) for t in merged.values()), "NaN/inf merged in"
            judge("weights cli", "accepted")
            return
        assert tree_hash(work) == before, f"exit {code}: something was written or changed\n{err}"
        names = _names(argv, src, dst, base)
        if "usage:" in err:  # argparse refused the command line: usage, then one "error:" line
            assert code == 2, err
            errors = [line for line in lines if ": error: " in line]
            assert len(errors) == 1, err
            judge("weights cli", "refused", errors[0], names=[a.split("=", 1)[0] for a in argv if a.startswith("-")])
            return
        if code == 1:  # inspect: the unreadable adapters listed, one summary line
            assert command == "inspect" and len(lines) == 1, err
            failed = int(lines[0].split()[1]) if lines[0].startswith("error: ") else 0
            assert failed or lines[0] == f"{src}: no adapters found", err
            if failed:
                _check_inspect_listing(out, flags["json"], failed)
            listed = [src.name] + ([p.name for p in src.iterdir()] if src.is_dir() else [])
            judge("weights cli", "refused", lines[0], names=listed)
            return
        assert code == 2 and out == "", f"exit {code}:\n{out}{err}"
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        judge("weights cli", "refused", lines[0], names=names)
