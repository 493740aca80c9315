"""``python -m mcm.weights``: inspect and convert MCM adapters.

    python -m mcm.weights inspect PATH [--json]
    python -m mcm.weights convert SRC DST --to {mcm,comfy-lora,ade,peft} [--variant NAME]
                                  [--set KEY=VALUE …] [--base-motion-module FILE] [--allow-pickle] [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from .format import AdapterError
from .io import (
    export_ade_motion_lora,
    export_comfy_lora,
    export_peft,
    find_adapters,
    load_adapter,
    merge_motion_module,
    save_adapter,
    spatial_and_motion_counts,
)

TARGETS = ("mcm", "comfy-lora", "ade", "peft")


def describe(adapter) -> dict:
    meta = adapter.meta
    ranks = Counter(w.rank for w in adapter.layers.values())
    dtypes = Counter(str(w.down.dtype).removeprefix("torch.") for w in adapter.layers.values())
    return {
        "source": adapter.source,
        "metadata": "from the file" if adapter.metadata_source == "file" else "none in the file; official defaults used",
        "summary": meta.summary(),
        "base": meta.base,
        "motion_module": meta.motion_module,
        "style": meta.style,
        "layers": spatial_and_motion_counts(adapter),
        "ranks": dict(sorted(ranks.items())),
        "dtypes": dict(dtypes),
        "parameters": adapter.num_parameters,
        "meta": {k: v for k, v in meta.__dict__.items()},
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
        except AdapterError as exc:
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
    return 1 if failed else 0


def _parse_set(items: list[str]) -> dict:
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set style=anime")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
        if isinstance(changes[key], list):
            changes[key] = tuple(changes[key])
    return changes


def cmd_convert(args) -> int:
    adapter = load_adapter(args.src, args.variant, allow_pickle=args.allow_pickle)
    if args.set:
        changes = _parse_set(args.set)
        unknown = set(changes) - set(adapter.meta.__dict__)
        if unknown:
            raise AdapterError(f"--set: unknown metadata fields {sorted(unknown)}; known: {sorted(adapter.meta.__dict__)}")
        adapter.meta = adapter.meta.replace(**changes)
    dst = Path(args.dst)
    if args.to == "mcm":
        written = save_adapter(adapter, dst, overwrite=args.force)
    elif args.to == "peft":
        written = export_peft(adapter, dst, overwrite=args.force)
    elif args.to == "comfy-lora":
        written = export_comfy_lora(adapter, dst, overwrite=args.force)
        if adapter.motion_layers():
            print(f"note: the {len(adapter.motion_layers())} motion-module layers are not in a ComfyUI LoRA; "
                  "write them with --to ade", file=sys.stderr)  # fmt: skip
    else:
        if args.base_motion_module:
            written = merge_motion_module(adapter, args.base_motion_module, dst, strength=args.strength, overwrite=args.force)
        else:
            written = export_ade_motion_lora(adapter, dst, overwrite=args.force)
        if adapter.spatial_layers():
            print(f"note: the {len(adapter.spatial_layers())} spatial layers are not in this file; "
                  "write them with --to comfy-lora", file=sys.stderr)  # fmt: skip
    print(f"wrote {written}")
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
    p.add_argument("--to", required=True, choices=TARGETS, help="output format")
    p.add_argument("--variant", help="which adapter of a folder holding several (e.g. animatediff-webvid)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a metadata field, e.g. --set style=anime --set beta_schedule=scaled_linear")  # fmt: skip
    p.add_argument("--base-motion-module", help="with --to ade: merge into this motion module instead of writing a LoRA")
    p.add_argument("--strength", type=float, default=1.0, help="merge strength for --base-motion-module")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a pickle-based SRC (.bin/.ckpt/.pt) with torch.load(weights_only=True); trusted files only")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_convert)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (AdapterError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
