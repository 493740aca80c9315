"""What a user sees when the weights CLI gets bad input: exit 2, one ``error:`` line naming the file and
the layer or field, no traceback, and nothing written or changed (files hashed before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcm.weights import Adapter, AdapterError, AdapterMeta, LoraWeights, load_adapter, save_adapter
from mcm.weights.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SPATIAL = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
MOTION = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
ADE_MOTION = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q"


def tree_hash(path: Path) -> str:
    """Names, bytes and permission bits of a file or of everything in a folder."""
    h = hashlib.sha256()
    items = [path] + (sorted(path.rglob("*")) if path.is_dir() else [])
    for p in items:
        h.update(f"{p.relative_to(path.parent)}:{stat.S_IMODE(p.stat().st_mode):o}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def factors(rank: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for path in (SPATIAL, MOTION):
        out[f"{path}.lora_A.weight"] = torch.randn(rank, 8, generator=g)
        out[f"{path}.lora_B.weight"] = torch.randn(8, rank, generator=g)
    return out


def adapter(seed: int = 0) -> Adapter:
    t = factors(seed=seed)
    layers = {p: LoraWeights(t[f"{p}.lora_A.weight"], t[f"{p}.lora_B.weight"], 2.0) for p in (SPATIAL, MOTION)}
    return Adapter(AdapterMeta(lora_rank=2, lora_alpha=2.0, style="test"), layers)


# --- class 6: tensors that are not LoRA factors ----------------------------------------------------------


def _spoil(kind: str) -> dict[str, torch.Tensor]:
    t = factors()
    down, up = f"{MOTION}.lora_A.weight", f"{MOTION}.lora_B.weight"
    if kind == "int":
        t[down] = torch.ones(2, 8, dtype=torch.int64)
    elif kind == "bool":
        t[up] = torch.ones(8, 2, dtype=torch.bool)
    elif kind == "nan":
        t[down][0, 3] = float("nan")
    elif kind == "inf":
        t[up][1, 1] = float("inf")
    elif kind == "rank0":
        t[down], t[up] = torch.zeros(0, 8), torch.zeros(8, 0)
    elif kind == "rank-mismatch":
        t[up] = torch.randn(8, 3)
    else:  # an .alpha entry
        t[f"{MOTION}.alpha"] = {
            "alpha-vector": torch.ones(2),
            "alpha-zero": torch.tensor(0.0),
            "alpha-nan": torch.tensor(float("nan")),
            "alpha-negative": torch.tensor(-4.0),
            "alpha-bool": torch.tensor(True),
        }[kind]
    return t


BAD_FACTORS = {
    "int": "dtype int64; expected a floating-point",
    "bool": "dtype bool; expected a floating-point",
    "nan": "1 NaN/inf values",
    "inf": "1 NaN/inf values",
    "rank0": r"shape \(0, 8\)",
    "rank-mismatch": "rank mismatch",
    "alpha-vector": r"shape \(2,\); expected one number",
    "alpha-zero": "expected a finite positive number",
    "alpha-nan": "expected a finite positive number",
    "alpha-negative": "expected a finite positive number",
    "alpha-bool": "bool tensor",
}


@pytest.mark.parametrize("kind", sorted(BAD_FACTORS))
def test_bad_factors_are_refused_at_read_time_naming_file_and_layer(tmp_path, capsys, kind):
    src = tmp_path / "lora.safetensors"
    save_file(_spoil(kind), src)
    before = tree_hash(tmp_path)
    code, out, err = cli(capsys, "convert", src, tmp_path / "out.safetensors", "--to", "ade")
    assert code == 2 and out == ""
    assert re.search(rf"^error: {re.escape(str(src))}: layer '{re.escape(MOTION)}': .*{BAD_FACTORS[kind]}", err), err
    assert tree_hash(tmp_path) == before  # no output, no temp file, the source untouched


def test_a_good_file_still_converts(tmp_path, capsys):
    src = tmp_path / "lora.safetensors"
    save_file(factors(), src)
    code, _, err = cli(capsys, "convert", src, tmp_path / "out.safetensors", "--to", "ade")
    assert code == 0, err
    assert set(load_file(tmp_path / "out.safetensors")) == {
        f"{ADE_MOTION}_lora.down.weight",
        f"{ADE_MOTION}_lora.up.weight",
    }


# --- class 7: PEFT configs and our own metadata ------------------------------------------------------------


def _peft_folder(tmp_path: Path, config) -> Path:
    folder = tmp_path / "animatediff-webvid"
    folder.mkdir()
    save_file({f"base_model.model.{k}": v for k, v in factors().items()}, folder / "adapter_model.safetensors")
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    (folder / "adapter_config.json").write_bytes(data)
    return folder


GOOD_CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["to_q"]}
BAD_CONFIGS = {
    "list": ([GOOD_CONFIG], "holds a JSON list; expected a JSON object"),
    "string-r": ({**GOOD_CONFIG, "r": "2"}, "r = '2'; expected a positive whole number"),
    "negative-r": ({**GOOD_CONFIG, "r": -2}, "r = -2"),
    "bool-r": ({**GOOD_CONFIG, "r": True}, "r = True"),
    "string-alpha": ({**GOOD_CONFIG, "lora_alpha": "4"}, "lora_alpha = '4'; expected a finite positive number"),
    "not-utf8": (b'{"r": 2, "lora_alpha": "\xff\xfe"}', "not UTF-8 text"),
    "alpha-regex": (
        {**GOOD_CONFIG, "alpha_pattern": {"to_q[": 2}},
        r"alpha_pattern key 'to_q\[' is not a valid regular",
    ),
    "rank-regex": ({**GOOD_CONFIG, "rank_pattern": {"(to_q": 2}}, r"rank_pattern key '\(to_q' is not a valid regular"),
    "alpha-pattern-list": ({**GOOD_CONFIG, "alpha_pattern": [1]}, "alpha_pattern = \\[1\\]; expected an object"),
    "alpha-pattern-value": ({**GOOD_CONFIG, "alpha_pattern": {"to_q": "x"}}, r"alpha_pattern\['to_q'\] = 'x'"),
    "targets-int": ({**GOOD_CONFIG, "target_modules": 5}, "target_modules = 5; expected a module-name string"),
    "rslora-string": ({**GOOD_CONFIG, "use_rslora": "yes"}, "use_rslora = 'yes'; expected true or false"),
    "rank-disagrees": ({**GOOD_CONFIG, "r": 8}, "r = 8 but layer .* has rank 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_peft_configs_name_the_config_file_and_the_field(tmp_path, capsys, case):
    config, message = BAD_CONFIGS[case]
    folder = _peft_folder(tmp_path, config)
    before = tree_hash(tmp_path)
    code, _, err = cli(capsys, "convert", folder, tmp_path / "out.safetensors", "--to", "mcm")
    assert code == 2
    assert re.search(rf"^error: {re.escape(str(folder / 'adapter_config.json'))}: .*{message}", err), err
    assert tree_hash(tmp_path) == before


def test_peft_folder_without_weights_is_named(tmp_path, capsys):
    folder = _peft_folder(tmp_path, GOOD_CONFIG)
    (folder / "adapter_model.safetensors").unlink()
    code, out, _ = cli(capsys, "inspect", folder)
    assert code == 1 and f"{folder}: adapter_config.json is there but adapter_model.safetensors is missing" in out


BAD_METADATA = {
    "base": ("[]", "mcm.base = \\[\\]"),
    "recommended_steps": ("4", "mcm.recommended_steps = 4"),
    "lora_alpha": ("NaN", "mcm.lora_alpha = nan"),
    "lora_rank": ("true", "mcm.lora_rank = True"),
    "target_modules": ('"to_q"', "mcm.target_modules = 'to_q'"),
    "temporal_norm": ("[]", "mcm.temporal_norm = \\[\\]"),
    "recommended_cfg": ("Infinity", "mcm.recommended_cfg = inf"),
}


@pytest.mark.parametrize("entry", sorted(BAD_METADATA))
def test_mcm_metadata_of_the_wrong_type_names_the_entry(tmp_path, capsys, entry):
    good = save_adapter(adapter(), tmp_path / "good.safetensors")
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        metadata = dict(f.metadata())
    raw, message = BAD_METADATA[entry]
    metadata[f"mcm.{entry}"] = raw
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(good), bad, metadata=metadata)
    code, _, err = cli(capsys, "convert", bad, tmp_path / "out.safetensors", "--to", "peft")
    assert code == 2 and re.search(rf"^error: {re.escape(str(bad))}: {message}; expected", err), err
    assert not (tmp_path / "out.safetensors").exists()


# --- class 8: output paths ---------------------------------------------------------------------------------


def test_force_onto_a_path_of_the_other_kind_changes_nothing(tmp_path, capsys):
    src = save_adapter(adapter(), tmp_path / "a.safetensors")
    a_file, a_folder = tmp_path / "existing.safetensors", tmp_path / "existing_peft"
    a_file.write_bytes(b"keep me")
    a_folder.mkdir()
    (a_folder / "notes.txt").write_text("keep me too")
    before = tree_hash(tmp_path)
    code, _, err = cli(capsys, "convert", src, a_file, "--to", "peft", "--force")
    assert code == 2 and f"error: {a_file}: is a file, but --to peft writes a folder" in err
    code, _, err = cli(capsys, "convert", src, a_folder, "--to", "mcm", "--force")
    assert code == 2 and f"error: {a_folder}: is a folder, but --to mcm writes a file" in err
    assert tree_hash(tmp_path) == before


def test_replacing_a_peft_folder_keeps_its_mode_and_other_files(tmp_path, capsys):
    old = save_adapter(adapter(seed=0), tmp_path / "old.safetensors")
    new = save_adapter(adapter(seed=1), tmp_path / "new.safetensors")
    peft = tmp_path / "peft"
    assert cli(capsys, "convert", old, peft, "--to", "peft")[0] == 0
    os.chmod(peft, 0o750)
    (peft / "README.md").write_text("my notes")
    (peft / "samples").mkdir()
    (peft / "samples" / "a.txt").write_text("sample")
    code, _, err = cli(capsys, "convert", new, peft, "--to", "peft", "--force")
    assert code == 0, err
    assert stat.S_IMODE(peft.stat().st_mode) == 0o750
    assert (peft / "README.md").read_text() == "my notes" and (peft / "samples" / "a.txt").read_text() == "sample"
    assert sorted(p.name for p in peft.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "samples",
    ]
    assert torch.equal(load_adapter(peft).layers[MOTION].down, load_adapter(new).layers[MOTION].down)


def test_a_peft_folder_replaced_with_force_never_pairs_new_weights_with_an_old_config(tmp_path, monkeypatch):
    """The two adapter files change together: a failure between any two renames leaves the old pair."""
    import mcm.weights.atomic as atomic
    from mcm.weights import export_peft

    peft = export_peft(adapter(seed=0), tmp_path / "peft")
    (peft / "README.md").write_text("my notes")
    before = {p.name: p.read_bytes() for p in peft.iterdir()}
    newer = adapter(seed=1)
    newer.layers[MOTION] = type(newer.layers[MOTION])(
        newer.layers[MOTION].down, newer.layers[MOTION].up, 5.0
    )  # a new alpha
    real_replace = os.replace
    for fail_at in (1, 2):  # replacing two files takes two renames, however it is done
        calls = []

        def replace(src, dst, fail_at=fail_at, calls=calls):
            calls.append(dst)
            if len(calls) == fail_at:
                raise OSError("power cut")
            real_replace(src, dst)

        monkeypatch.setattr(atomic.os, "replace", replace)
        with pytest.raises(OSError, match="power cut"):
            export_peft(newer, peft, overwrite=True)
        monkeypatch.setattr(atomic.os, "replace", real_replace)
        assert {p.name: p.read_bytes() for p in peft.iterdir()} == before, fail_at
        assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"], fail_at  # nothing left beside it
    assert load_adapter(export_peft(newer, peft, overwrite=True)).layers[MOTION].alpha == 5.0
    assert (peft / "README.md").read_text() == "my notes"


def test_new_files_and_folders_get_the_usual_permissions(tmp_path, capsys):
    src = save_adapter(adapter(), tmp_path / "a.safetensors")
    assert cli(capsys, "convert", src, tmp_path / "p", "--to", "peft")[0] == 0
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE(src.stat().st_mode) == 0o666 & ~mask


def test_inspect_lists_the_good_adapters_and_names_each_bad_one(tmp_path, capsys):
    save_adapter(adapter(), tmp_path / "a_good.safetensors")
    (tmp_path / "b_cut.safetensors").write_bytes((tmp_path / "a_good.safetensors").read_bytes()[:100])
    save_file(_spoil("nan"), tmp_path / "c_nan.safetensors")
    _peft_folder(tmp_path, [GOOD_CONFIG])
    save_adapter(adapter(seed=2), tmp_path / "z_good.safetensors")
    before = tree_hash(tmp_path)
    code, out, err = cli(capsys, "inspect", tmp_path)
    assert code == 1 and "Traceback" not in out + err
    assert out.count("test [sd15-animatediff v2]") == 2  # both good ones, also the one after the bad ones
    for name, reason in (("b_cut", "truncated"), ("c_nan", "NaN/inf"), ("animatediff-webvid", "JSON list")):
        assert re.search(rf"{name}.*\n  ERROR: .*{reason}", out), name
    assert "error: 3 of 5 adapters could not be read" in err
    code, out, _ = cli(capsys, "inspect", tmp_path, "--json")
    assert code == 1 and sum("error" in d for d in json.loads(out)) == 3
    assert tree_hash(tmp_path) == before


def _motion_module() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {f"{ADE_MOTION}.weight": torch.randn(8, 8, generator=g), f"{ADE_MOTION}.bias": torch.zeros(8)}


def test_official_ckpt_motion_module_merges_with_allow_pickle(tmp_path, capsys):
    src = save_adapter(adapter(), tmp_path / "a.safetensors")
    ckpt = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save(_motion_module(), ckpt)
    out = tmp_path / "merged.safetensors"
    code, _, err = cli(capsys, "convert", src, out, "--to", "ade", "--base-motion-module", ckpt)
    assert code == 2 and not out.exists()
    suggested = re.search(r"`python -m mcm\.weights (.+?)`", err)[1].split()
    assert suggested[:2] == ["to-safetensors", str(ckpt)]
    converted = tmp_path / "mm_sd_v15_v2.safetensors"
    code, _, err2 = cli(capsys, *[str(converted) if a == "OUT.safetensors" else a for a in suggested])
    assert code == 0, err2
    assert torch.equal(load_file(converted)[f"{ADE_MOTION}.weight"], _motion_module()[f"{ADE_MOTION}.weight"])
    for base in (ckpt, converted):  # the flag the message names works, and so does the converted file
        extra = ["--allow-pickle"] if base == ckpt else []
        code, _, err = cli(capsys, "convert", src, out, "--to", "ade", "--base-motion-module", base, "--force", *extra)
        assert code == 0, err
        merged = load_file(out)[f"{ADE_MOTION}.weight"]
        w = adapter().layers[MOTION]
        assert torch.allclose(merged, _motion_module()[f"{ADE_MOTION}.weight"] + w.delta(), atol=1e-6)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_ckpt_runs_no_code_even_with_allow_pickle(tmp_path, capsys):
    src = save_adapter(adapter(), tmp_path / "a.safetensors")
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "mm.ckpt"
    torch.save({"x": _Marker(str(marker))}, ckpt)
    code, _, err = cli(
        capsys,
        "convert",
        src,
        tmp_path / "o.safetensors",
        "--to",
        "ade",
        "--base-motion-module",
        ckpt,
        "--allow-pickle",
    )
    assert code == 2 and f"{ckpt}: cannot be read as a tensors-only pickle" in err
    code, _, err = cli(capsys, "to-safetensors", ckpt, tmp_path / "o.safetensors")
    assert code == 2 and not marker.exists() and not (tmp_path / "o.safetensors").exists()


def test_the_suggested_command_for_a_pickled_adapter_works(tmp_path, capsys):
    lora = tmp_path / "lora.bin"
    torch.save(factors(), lora)
    code, out, _ = cli(capsys, "inspect", lora)
    assert code == 1
    suggested = re.search(r"`python -m mcm\.weights (.+?)`", out)[1].split()
    out = tmp_path / "lora.safetensors"
    code, _, err = cli(capsys, *[str(out) if a == "OUT.safetensors" else a for a in suggested])
    assert code == 0, err
    assert set(load_adapter(out).layers) == {SPATIAL, MOTION}


def test_real_cli_prints_one_error_line_and_no_traceback(tmp_path):
    folder = _peft_folder(tmp_path, {**GOOD_CONFIG, "alpha_pattern": {"[": 1}})
    proc = subprocess.run(
        [sys.executable, "-m", "mcm.weights", "convert", str(folder), str(tmp_path / "o"), "--to", "peft"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "alpha_pattern key '['" in proc.stderr


def test_a_peft_folder_with_a_pickled_adapter_suggests_converting_the_folder(tmp_path, capsys):
    folder = _peft_folder(tmp_path, GOOD_CONFIG)
    tensors = load_file(folder / "adapter_model.safetensors")
    (folder / "adapter_model.safetensors").unlink()
    torch.save(tensors, folder / "adapter_model.bin")
    code, out, _ = cli(capsys, "inspect", folder)
    assert code == 1
    suggested = re.search(r"`python -m mcm\.weights (.+?)`", out)[1].split()
    assert suggested[1] == str(folder)
    dst = tmp_path / "webvid.safetensors"
    code, _, err = cli(capsys, *[str(dst) if a == "OUT.safetensors" else a for a in suggested])
    assert code == 0, err
    assert all(w.alpha == 4.0 for w in load_adapter(dst).layers.values())  # the config's lora_alpha was used


def test_a_new_peft_folder_is_readable_by_others_and_float8_factors_are_checked(tmp_path):
    """A new PEFT export gets the usual modes (safetensors alone writes 0600), and a float8 factor is checked for
    NaN/inf like any other instead of failing inside torch (which has no CPU isfinite for float8)."""
    from mcm.weights import export_peft, parse_lora_tensors

    umask = os.umask(0o022)
    os.umask(umask)
    folder = export_peft(adapter(), tmp_path / "peft")
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {
        "adapter_config.json": 0o666 & ~umask,
        "adapter_model.safetensors": 0o666 & ~umask,
    }
    assert load_adapter(folder).layers.keys() == adapter().layers.keys()
    if not hasattr(torch, "float8_e4m3fn"):
        return
    good = {k: v.to(torch.float8_e4m3fn) for k, v in factors().items()}
    assert set(parse_lora_tensors(good, "f8.safetensors")) == {SPATIAL, MOTION}
    bad = {**good, f"{SPATIAL}.lora_A.weight": torch.full((2, 8), float("nan")).to(torch.float8_e4m3fn)}
    with pytest.raises(ValueError, match=f"f8.safetensors.*{SPATIAL}.*NaN/inf|NaN/inf.*{SPATIAL}"):
        parse_lora_tensors(bad, "f8.safetensors")


# --- found by the fuzz campaign (tests/fuzz/test_fuzz_weights.py): each minimal input, now a clear refusal ---


def _metadata_file(tmp_path: Path, changes: dict[str, str]) -> Path:
    """Our adapter file (as ``save_adapter`` writes it) with some header entries replaced or added."""
    from safetensors import safe_open

    good = save_adapter(adapter(), tmp_path / "good.safetensors")
    with safe_open(str(good), "pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(good)
    good.unlink()
    save_file(tensors, tmp_path / "bad.safetensors", metadata={**metadata, **changes})
    return tmp_path / "bad.safetensors"


def _refused(capsys, tmp_path: Path, *args) -> str:
    """The one ``error:`` line of a refused command; exit 2, nothing written or changed under ``tmp_path``."""
    before = tree_hash(tmp_path)
    code, out, err = cli(capsys, *args)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert tree_hash(tmp_path) == before
    return err.strip()


def test_a_file_without_tensors_is_refused_naming_the_file(tmp_path):
    """Was "adapter metadata: mcm.target_modules = (); expected …": a complaint about metadata the file does not
    have, naming no file (the defaults were made for zero layers)."""
    path = tmp_path / "adapter.safetensors"
    save_file({}, path, metadata={"format": "pt"})
    with pytest.raises(AdapterError, match=rf"^{re.escape(str(path))}: the adapter holds no LoRA layers$"):
        load_adapter(path)


FUZZ_METADATA = {  # entry changes -> what the one error line says (was: the exception or message noted)
    "deep": (  # was RecursionError
        {"mcm.style": "[" * 100_000 + "]" * 100_000},
        r"metadata entry mcm\.style = '\[\[.*characters\) is not valid JSON \(nested more than 64 levels deep\)",
    ),
    "long-integer": (  # was ValueError (not an AdapterError): a traceback from the CLI
        {"mcm.lora_rank": "9" * 5_000},
        r"metadata entry mcm\.lora_rank = .* is not valid JSON \(holds a number of more than 4300 digits\)",
    ),
    "key-with-newline": (  # was a message over two lines
        {"mcm.a\nb": ""},
        r"metadata entry 'mcm\.a\\nb' = '' is not valid JSON",
    ),
    "huge-alpha": (
        {"mcm.lora_alpha": str(10**400)},
        r"mcm\.lora_alpha = 1000.*; expected a positive number",
    ),  # was OverflowError
    "huge-rank": (  # was accepted, and then --to ade failed with OverflowError (float(rank))
        {"mcm.lora_rank": str(2**1024)},
        r"mcm\.lora_rank = 1797.*; expected a positive integer \(at most 2\*\*53\)",
    ),
    "base-of-other-tensors": (  # was "metadata says base 'modelscope-t2v' but …": no entry named
        {"mcm.base": '"modelscope-t2v"', "mcm.motion_module": "null"},
        r"metadata says base 'modelscope-t2v' \(mcm\.base\) but the tensors are those of a 'sd15-animatediff'",
    ),
}


@pytest.mark.parametrize("case", sorted(FUZZ_METADATA))
def test_fuzzed_metadata_is_one_line_naming_file_and_entry(tmp_path, capsys, case):
    changes, message = FUZZ_METADATA[case]
    bad = _metadata_file(tmp_path, changes)
    err = _refused(capsys, tmp_path, "convert", bad, tmp_path / "out.safetensors", "--to", "ade")
    assert re.search(rf"^error: {re.escape(str(bad))}: {message}", err), err
    assert len(err) < 1_000  # a megabyte of header text is not repeated in the message


@pytest.mark.parametrize(
    "raw", ["[" * 100_000 + "]" * 100_000, json.dumps({"lora_alpha": 2**1024})], ids=["deep", "huge-alpha"]
)
def test_an_unusable_diffusers_lora_config_in_the_header_is_ignored(tmp_path, raw):
    """diffusers' ``lora_adapter_metadata`` is a hint (alpha = rank without it); was RecursionError and
    OverflowError (float(2**1024))."""
    path = tmp_path / "lora.safetensors"
    save_file(factors(), path, metadata={"lora_adapter_metadata": raw})
    assert {w.alpha for w in load_adapter(path).layers.values()} == {2.0}


def test_the_mcm_marker_check_refuses_a_deep_entry(tmp_path):
    from mcm.weights import check_mcm_marker, is_mcm_file

    bad = _metadata_file(tmp_path, {"mcm.format": "[" * 100_000 + "]" * 100_000})  # was RecursionError
    with pytest.raises(AdapterError, match=r"mcm\.format = .* is not valid JSON \(nested more than 64"):
        check_mcm_marker(bad)
    assert not is_mcm_file(bad)  # "never raises"


FUZZ_CONFIGS = {  # adapter_config.json -> what the one error line says (was: the exception or message noted)
    "deep": (b"[" * 100_000 + b"]" * 100_000, r"not valid JSON \(nested more than 64 levels deep\)"),  # RecursionError
    "long-integer": (b'{"r": ' + b"9" * 5_000 + b"}", r"not valid JSON \(holds a number of more than 4300 digits\)"),
    "huge-alpha": ({**GOOD_CONFIG, "lora_alpha": 10**400}, r"lora_alpha = 1000.*; expected a finite positive"),
    "huge-pattern-alpha": ({**GOOD_CONFIG, "alpha_pattern": {"to_q": 10**400}}, r"alpha_pattern\['to_q'\] = 1000"),
    "repeat-count": (  # was OverflowError from re.compile
        {**GOOD_CONFIG, "alpha_pattern": {"a{4294967296}": 2}},
        r"alpha_pattern key 'a\{4294967296\}' is not a valid regular expression \(the repetition number",
    ),
    "inline-flags": (  # was re.error at load, matching '(.*\.)?((?i)TO_Q)$'
        {**GOOD_CONFIG, "alpha_pattern": {"(?i)TO_Q": 2}},
        r"alpha_pattern key '\(\?i\)TO_Q' is not a valid regular expression where PEFT uses it",
    ),
    "exponential-pattern": (  # was a hang: (.*)*x backtracks 2**n ways over a module name
        {**GOOD_CONFIG, "rank_pattern": {"(.*)*x": 2}},
        r"rank_pattern key '\(\.\*\)\*x' holds a repeat inside a repeat",
    ),
    "huge-r": (  # was accepted (rank_pattern gives every layer's rank); --to ade then failed with OverflowError
        {**GOOD_CONFIG, "r": 2**1024, "rank_pattern": {".*": 2}},
        r"r = 1797.*; expected a positive whole number \(the LoRA rank, at most 2\*\*53\)",
    ),
    "rslora-overflow": (  # was "…/adapter_model.safetensors: layer …: its alpha = inf": the weights blamed
        {**GOOD_CONFIG, "lora_alpha": 1.5e308, "use_rslora": True},
        r"lora_alpha = 1\.5e\+308 with use_rslora gives layer '.*' \(rank 2\) the scale alpha/sqrt\(r\)",
    ),
}


@pytest.mark.parametrize("case", sorted(FUZZ_CONFIGS))
def test_fuzzed_peft_configs_name_the_config_file_and_the_field(tmp_path, capsys, case):
    config, message = FUZZ_CONFIGS[case]
    folder = _peft_folder(tmp_path, config)
    err = _refused(capsys, tmp_path, "convert", folder, tmp_path / "out.safetensors", "--to", "ade")
    assert re.search(rf"^error: {re.escape(str(folder / 'adapter_config.json'))}: {message}", err), err


@pytest.mark.parametrize("alpha", [3.5e38, 1e-46])
@pytest.mark.parametrize("to", ["mcm", "comfy-lora"])
def test_an_alpha_past_float32_is_written_so_that_it_reads_back(tmp_path, capsys, alpha, to):
    """A per-layer .alpha was written as float32: inf (or 0) for a valid alpha, a file no reader accepts."""
    folder = _peft_folder(tmp_path, {**GOOD_CONFIG, "alpha_pattern": {"to_q": alpha}})
    out = tmp_path / "out.safetensors"
    code, _, err = cli(capsys, "convert", folder, out, "--to", to)
    assert code == 0, err
    assert load_adapter(out).layers[SPATIAL].alpha == alpha


def test_an_ade_export_whose_folded_scale_overflows_is_refused(tmp_path, capsys):
    """Was exit 0 and an ADE motion LoRA with inf up factors (the scale is folded in: alpha 1e308 / rank 2)."""
    bad = _metadata_file(tmp_path, {"mcm.lora_alpha": "1e308"})
    err = _refused(capsys, tmp_path, "convert", bad, tmp_path / "out.safetensors", "--to", "ade")
    assert f"error: {bad}: layer '{ADE_MOTION}': its scale 5e+307 (alpha / rank) folded into the up" in err
    assert "overflows float32" in err


def test_a_merge_that_overflows_is_refused(tmp_path, capsys):
    """Was exit 0 and a motion module with inf weights (--strength 1e308)."""
    src = save_adapter(adapter(), tmp_path / "a.safetensors")
    save_file(_motion_module(), tmp_path / "mm.safetensors")
    out = tmp_path / "merged.safetensors"
    err = _refused(
        capsys,
        tmp_path,
        "convert",
        src,
        out,
        "--to",
        "ade",
        "--base-motion-module",
        tmp_path / "mm.safetensors",
        "--strength",
        "1e308",
    )
    assert f"error: {src}: merged into {tmp_path / 'mm.safetensors'} at strength 1e+308, 1 weights overflow" in err


def test_a_refused_command_leaves_no_new_folders(tmp_path, capsys):
    """The missing parents of DST were made before the input was checked, and stayed after a refusal."""
    src = save_adapter(adapter(), tmp_path / "a.safetensors")
    save_file({"other.weight": torch.zeros(2, 2)}, tmp_path / "wrong.safetensors")
    (tmp_path / "bad.ckpt").write_bytes(b"not a pickle")
    nested = tmp_path / "out" / "x" / "y"
    err = _refused(
        capsys,
        tmp_path,
        "convert",
        src,
        nested / "o.safetensors",
        "--to",
        "ade",
        "--base-motion-module",
        tmp_path / "wrong.safetensors",
    )
    assert "is not the motion module this adapter fits" in err
    err = _refused(capsys, tmp_path, "to-safetensors", tmp_path / "bad.ckpt", nested / "o.safetensors")
    assert "cannot be read as a tensors-only pickle" in err
    assert not (tmp_path / "out").exists()
    for to, name in (("mcm", "o.safetensors"), ("peft", "o_peft")):  # a written output still gets its folders
        code, _, err = cli(capsys, "convert", src, nested / to / name, "--to", to)
        assert code == 0 and (nested / to / name).exists(), err


def test_a_set_that_fails_the_check_names_the_flag(tmp_path, capsys):
    """Was "error: adapter metadata: mcm.motion_module = 'v2'; …": neither the flag nor the file named."""
    src = save_adapter(adapter(), tmp_path / "a.safetensors")
    err = _refused(capsys, tmp_path, "convert", src, tmp_path / "o.safetensors", "--to", "mcm", "--set", 'base="sd15"')
    assert err.startswith("""error: --set 'base="sd15"': mcm.motion_module = 'v2'; expected null for base 'sd15'"""), (
        err
    )


@pytest.mark.parametrize("data", [b"P", b"", b"\x80\x04N."])
def test_an_unreadable_pickle_is_one_line_without_torchs_advice(tmp_path, capsys, data):
    """Was torch's message of six lines (which advises loading with weights_only=False), an empty reason for an
    empty file, and a UserWarning about pickle protocols printed above the error."""
    import warnings

    bad = tmp_path / "lora.bin"
    bad.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _refused(capsys, tmp_path, "convert", bad, tmp_path / "o.safetensors", "--to", "mcm", "--allow-pickle")
    assert re.fullmatch(rf"error: {re.escape(str(bad))}: cannot be read as a tensors-only pickle \(\w+Error: .+\)", err)
    assert "weights_only" not in err and not caught, (err, [str(w.message) for w in caught])
