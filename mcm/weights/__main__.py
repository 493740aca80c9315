"""``python -m mcm.weights``: inspect and convert MCM adapters.

    python -m mcm.weights inspect PATH [--json] [--allow-pickle]
    python -m mcm.weights convert SRC DST --to {mcm,comfy-lora,ade,peft} [--variant NAME]
                                  [--set KEY=VALUE …] [--base-motion-module FILE] [--allow-pickle] [--force]
    python -m mcm.weights to-safetensors SRC.ckpt DST.safetensors [--prefix PREFIX] [--force]

Bad input is one ``error: …`` line naming the file, layer, field or flag, exit status 2, and nothing
written or changed. ``inspect`` lists every adapter it can read, names each one it cannot with the
reason, and then exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

from .export import EXPORTERS, ExportOptions, to_safetensors
from .format import AdapterError, loads_json
from .load import find_adapters, load_adapter, spatial_and_motion_counts

TARGETS = tuple(EXPORTERS)


def describe(adapter) -> dict:
    meta = adapter.meta
    ranks = Counter(w.rank for w in adapter.layers.values())
    dtypes = Counter(str(w.down.dtype).removeprefix("torch.") for w in adapter.layers.values())
    return {
        "source": adapter.source,
        "metadata": "from the file"
        if adapter.metadata_source == "file"
        else "none in the file; official defaults used",
        "summary": meta.summary(),
        "base": meta.base,
        "motion_module": meta.motion_module,
        "style": meta.style,
        "layers": spatial_and_motion_counts(adapter),
        "ranks": dict(sorted(ranks.items())),
        "dtypes": dict(dtypes),
        "parameters": adapter.num_parameters,
        "meta": dict(meta.__dict__),
    }


def _print_description(d: dict) -> None:
    print(f"{d['source']}")
    print(f"  {d['summary']}")
    print(f"  metadata: {d['metadata']}")
    layers = d["layers"]
    print(
        f"  layers: {layers['spatial']} spatial, {layers['motion']} motion-module"
        + (f", {layers['temporal']} ModelScope temporal" if layers["temporal"] else "")
        + f"; ranks {d['ranks']}; {d['parameters']:,} parameters ({', '.join(d['dtypes'])})"
    )
    training = d["meta"].get("training") or {}
    if training:
        print(f"  training: {json.dumps(training, sort_keys=True)}")


def cmd_inspect(args) -> int:
    found = find_adapters(args.path)
    if not found:
        print(f"{args.path}: no adapters found", file=sys.stderr)
        return 1
    out, failed = [], 0
    for path in found.values():
        try:
            out.append(describe(load_adapter(path, allow_pickle=args.allow_pickle)))
        except (AdapterError, OSError) as exc:
            failed += 1
            out.append({"source": str(path), "error": str(exc)})
    if args.json:
        print(json.dumps(out if len(out) > 1 else out[0], indent=2, default=list))
    else:
        for d in out:
            if "error" in d:
                print(f"{d['source']}\n  ERROR: {d['error']}")
            else:
                _print_description(d)
    if failed:
        bad = [Path(d["source"]).name for d in out if "error" in d]
        print(f"error: {failed} of {len(out)} adapters could not be read: {', '.join(bad)}", file=sys.stderr)
    return 1 if failed else 0


def _parse_set(items: list[str]) -> dict:
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise AdapterError(f"--set {item!r}: expected KEY=VALUE, e.g. --set style=anime")
        try:
            changes[key] = loads_json(value)
        except ValueError:  # not JSON (or too deep, too long): the text itself
            changes[key] = value
        if isinstance(changes[key], list):
            changes[key] = tuple(changes[key])
    return changes


def _check_convert_flags(args, exporter) -> None:
    if args.base_motion_module and exporter.name != "ade":
        raise AdapterError(f"--base-motion-module goes with --to ade (merge the motion LoRA), not --to {exporter.name}")
    if not math.isfinite(args.strength):
        raise AdapterError(f"--strength {args.strength}: expected a finite number")


def cmd_convert(args) -> int:
    exporter = EXPORTERS[args.to]
    _check_convert_flags(args, exporter)
    dst = Path(args.dst)
    if dst.exists() and not args.force:
        raise FileExistsError(f"{dst}: already exists; choose another name or pass --force")
    if dst.exists() and (exporter.target == "folder") != dst.is_dir():
        kind = "folder" if dst.is_dir() else "file"
        raise AdapterError(
            f"{dst}: is a {kind}, but --to {args.to} writes a {exporter.target}; give another DST "
            "(--force replaces only a DST of the same kind)"
        )
    adapter = load_adapter(args.src, args.variant, allow_pickle=args.allow_pickle)
    if args.set:
        changes = _parse_set(args.set)
        unknown = set(changes) - set(adapter.meta.__dict__)
        if unknown:
            raise AdapterError(
                f"--set: unknown metadata fields {sorted(unknown)}; known: {sorted(adapter.meta.__dict__)}"
            )
        try:
            adapter.meta = adapter.meta.replace(**changes)
        except AdapterError as exc:  # the check names the mcm.* entry; say which flags gave it
            given = ", ".join(f"--set {item!r}" for item in args.set)
            raise AdapterError(f"{given}: {str(exc).removeprefix('adapter metadata: ')}") from None
    options = ExportOptions(
        base_motion_module=args.base_motion_module, strength=args.strength, allow_pickle=args.allow_pickle
    )
    written = exporter.write(adapter, dst, args.force, options)
    note = exporter.leaves_out(adapter)
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {written}")
    return 0


def cmd_to_safetensors(args) -> int:
    print(f"wrote {to_safetensors(args.src, args.dst, overwrite=args.force, prefix=args.prefix)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcm.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show an adapter's metadata, layer counts and ranks")
    p.add_argument("path", help="an adapter file, a PEFT folder, or a folder of adapters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--allow-pickle", action="store_true", help="also read pickle-based files (trusted sources only)")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("convert", help="write an adapter in another format")
    p.add_argument("src", help="an adapter file, a PEFT folder, or a folder of adapters (with --variant)")
    p.add_argument("dst", help="output file (mcm, comfy-lora, ade) or folder (peft)")
    p.add_argument(
        "--to",
        required=True,
        choices=TARGETS,
        help="output format: " + "; ".join(f"{e.name}: {e.help} ({e.target})" for e in EXPORTERS.values()),
    )
    p.add_argument("--variant", help="which adapter of a folder holding several (e.g. animatediff-webvid)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a metadata field, e.g. --set style=anime --set beta_schedule=scaled_linear",
    )
    p.add_argument(
        "--base-motion-module",
        help="with --to ade: merge into this motion module instead of writing a LoRA "
        "(a .ckpt only with --allow-pickle)",
    )
    p.add_argument("--strength", type=float, default=1.0, help="merge strength for --base-motion-module")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a pickle-based SRC or --base-motion-module (.bin/.ckpt/.pt) with "
        "torch.load(weights_only=True), tensors only",
    )
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("to-safetensors", help="rewrite a tensors-only pickle (.ckpt/.bin/.pt) as .safetensors")
    p.add_argument("src", help="a pickle-based weights file, read with torch.load(weights_only=True)")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument(
        "--prefix",
        help="keep only the tensors named PREFIX… and drop PREFIX from their names (e.g. first_stage_model. for the "
        "VAE of an LDM checkpoint such as ModelScope's VQGAN_autoencoder.pth)",
    )
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_to_safetensors)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (AdapterError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
