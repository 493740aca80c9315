"""Checks a saved UI workflow (what ComfyUI's Save writes) against a running ComfyUI's /object_info.

`validate_ui(workflow, object_info)` lists the problems: unknown node types, inputs and links that do not fit,
saved outputs that are not the node's (by slot; outputs a newer ComfyUI appended are fine), and widgets_values
that do not match the node's widgets in order, type, range and options. `broken_copies` makes workflows with one
known defect each, so a test can see the validator catch them.
"""

from __future__ import annotations

import copy

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: Combos that list files on the user's machine: a workflow only needs a string there.
FILE_COMBOS = {
    "ckpt_name",
    "model_name",
    "adapter",
    "file",
    "image",
    "video",
    "vae_name",
    "lora_name",
    "control_net_name",
    "cnet",
    "unet_name",
    "clip_name",
}
#: A V3 dynamic combo (0.33: Save Video's format): a combo whose chosen option brings its own inputs, whose
#: widgets follow the combo's in widgets_values.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")


def input_specs(info: dict) -> list[dict]:
    """A node's inputs in declaration order: name, type, opts, combo options, required, widget."""
    specs = []
    sections = info.get("input", {})
    order = info.get("input_order") or {sec: list(sections.get(sec, {})) for sec in ("required", "optional")}
    for sec in ("required", "optional"):
        for name in order.get(sec, []):
            spec = sections.get(sec, {}).get(name)
            if spec is None:
                continue
            type_ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            options = dynamic = None
            if isinstance(type_, list):
                type_, options = "COMBO", type_
            elif type_ == "COMBO":
                options = opts.get("options", [])
            elif type_ == DYNAMIC_COMBO:
                dynamic = opts.get("options", [])
                type_, options = "COMBO", [o["key"] for o in dynamic]
            widget = type_ in WIDGET_TYPES and not opts.get("forceInput")
            specs.append(
                {
                    "name": name,
                    "type": type_,
                    "opts": opts,
                    "options": options,
                    "required": sec == "required",
                    "widget": widget,
                    "dynamic": dynamic,
                }
            )
    return specs


def expected_widgets(specs: list[dict]) -> list[tuple[dict, str]]:
    """(spec, role) per widgets_values entry: role value, control (control_after_generate) or upload."""
    seq = []
    for spec in specs:
        if not spec["widget"]:
            continue
        seq.append((spec, "value"))
        if spec["type"] == "INT" and spec["opts"].get("control_after_generate"):
            seq.append((spec, "control"))
        if any(spec["opts"].get(flag) for flag in UPLOAD_FLAGS):
            seq.append((spec, "upload"))
    return seq


def check_value(spec: dict, value) -> str | None:
    name, type_, opts = spec["name"], spec["type"], spec["opts"]
    if type_ == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name}: {value!r} is not an INT"
    elif type_ == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name}: {value!r} is not a FLOAT"
    elif type_ == "BOOLEAN":
        if not isinstance(value, bool):
            return f"{name}: {value!r} is not a BOOLEAN"
    elif type_ == "STRING":
        if not isinstance(value, str):
            return f"{name}: {value!r} is not a STRING"
    elif type_ == "COMBO":
        if not isinstance(value, str):
            return f"{name}: {value!r} is not a string"
        if name not in FILE_COMBOS and value not in (spec["options"] or []):
            return f"{name}: {value!r} not in {spec['options']}"
    if type_ in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{name}: {value} < min {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{name}: {value} > max {opts['max']}"
    return None


def output_problems(outputs: list[dict], info: dict) -> list[str]:
    """A saved node's outputs against /object_info: slot i must be output i (same type and name) of the node.

    Links name the output by slot, so a saved output must stay where it was; a newer ComfyUI may append outputs
    to a core node (0.33: SaveAnimatedWEBP gained IMAGE, GetVideoComponents bit_depth and color_space), and
    its frontend loads such a file unchanged, so outputs the file does not list are fine.
    """
    types, names = list(info.get("output", [])), list(info.get("output_name", []))
    if len(outputs) > len(types):
        return [f"{len(outputs)} outputs saved, the node has {len(types)} ({names})"]
    return [
        f"output {i} is {o.get('name')!r} ({o.get('type')}), the node's is {names[i]!r} ({types[i]})"
        for i, o in enumerate(outputs)
        if (o.get("type"), o.get("name")) != (types[i], names[i])
    ]


TOP_LEVEL_KEYS = ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version")


def input_problems(where: str, node: dict, specs: list[dict]) -> list[str]:
    """A saved node's inputs: each one exists and has the input's type; every required link input is connected."""
    problems = []
    by_name = {s["name"]: s for s in specs}
    ui_inputs = {i["name"]: i for i in node.get("inputs", [])}
    for name, inp in ui_inputs.items():
        spec = by_name.get(name)
        if spec is None:
            problems.append(f"{where}: input {name!r} does not exist")
        elif not spec["widget"] and inp.get("type") != spec["type"] and "*" not in (inp.get("type"), spec["type"]):
            problems.append(f"{where}: input {name!r} is {inp.get('type')}, node takes {spec['type']}")
    for spec in specs:
        if spec["required"] and not spec["widget"] and ui_inputs.get(spec["name"], {}).get("link") is None:
            problems.append(f"{where}: required input {spec['name']!r} is not connected")
    return problems


def widget_value_problem(spec: dict, role: str, value) -> str | None:
    """One widgets_values entry against its widget (role value, control or upload)."""
    if role == "control":
        if value not in CONTROL_VALUES:
            return f"control_after_generate of {spec['name']} is {value!r}"
        return None
    if role == "upload":
        if not isinstance(value, str):
            return f"upload widget of {spec['name']} is {value!r}"
        return None
    return check_value(spec, value)


def _label(seq: list[tuple[dict, str]]) -> list[str]:
    return [s["name"] + ("" if r == "value" else ":" + r) for s, r in seq]


def widget_problems(where: str, node: dict, specs: list[dict]) -> list[str]:
    """A saved node's widgets_values against the node's widgets in order, type, range and options.

    A dynamic combo's chosen option brings its widgets right after it. Optional widgets may be missing at the end
    (inputs a newer ComfyUI added, such as 0.33's Create Video bit_depth or Save Video's encoding and hidden
    codec): its frontend loads such a file unchanged and fills in their defaults after the saved values.
    """
    values = node.get("widgets_values", [])
    if isinstance(values, dict):
        return [f"{where}: widgets_values is a dict"]
    queue, done, problems = expected_widgets(specs), [], []
    while queue and len(done) < len(values):
        spec, role = queue.pop(0)
        value = values[len(done)]
        done.append((spec, role))
        err = widget_value_problem(spec, role, value)
        if err:
            problems.append(f"{where}: {err}")
        elif role == "value" and spec["dynamic"] is not None:
            chosen = next(o for o in spec["dynamic"] if o["key"] == value)
            queue = expected_widgets(input_specs({"input": chosen["inputs"]})) + queue
    missing = [(s, r) for s, r in queue if s["required"]]
    if len(values) > len(done) or missing:
        problems.append(
            f"{where}: {len(values)} widgets_values, the node has {_label(done + queue)}"
            + (f" (required {_label(missing)} missing)" if missing else "")
        )
    return problems


def node_problems(nid, node: dict, object_info: dict) -> list[str]:
    """One saved node against /object_info: its type, inputs, outputs and widgets_values."""
    where = f"node {nid} ({node.get('type')})"
    info = object_info.get(node.get("type"))
    if info is None:
        return [f"{where}: node type not registered"]
    specs = input_specs(info)
    problems = input_problems(where, node, specs)
    problems += [f"{where}: {p}" for p in output_problems(node.get("outputs", []), info)]
    problems += widget_problems(where, node, specs)
    return problems


def link_problems(link, nodes: dict, object_info: dict) -> list[str]:
    """One saved link: its form, its nodes and slots, both ends listing it, and the types it joins."""
    if not (isinstance(link, list) and len(link) == 6):
        return [f"malformed link {link!r}"]
    lid, src, sslot, dst, dslot, type_ = link
    if src not in nodes or dst not in nodes:
        return [f"link {lid}: unknown node {src if src not in nodes else dst}"]
    s_info, d_info = object_info.get(nodes[src]["type"]), object_info.get(nodes[dst]["type"])
    if s_info is None or d_info is None:
        return []
    outs, ins = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
    if sslot >= len(outs) or sslot >= len(s_info.get("output", [])) or dslot >= len(ins):
        return [f"link {lid}: slot out of range"]
    problems = []
    if lid not in (outs[sslot].get("links") or []):
        problems.append(f"link {lid}: not listed on node {src} output {sslot}")
    if ins[dslot].get("link") != lid:
        problems.append(f"link {lid}: node {dst} input {dslot} holds link {ins[dslot].get('link')}")
    from_type = s_info["output"][sslot]
    spec = {s["name"]: s for s in input_specs(d_info)}.get(ins[dslot].get("name"))
    to_type = spec["type"] if spec else None
    if "*" not in (from_type, to_type) and from_type != to_type:
        problems.append(
            f"link {lid}: {nodes[src]['type']} output {sslot} is {from_type}, "
            f"{nodes[dst]['type']}.{ins[dslot].get('name')} takes {to_type}"
        )
    if type_ != from_type:
        problems.append(f"link {lid}: type {type_!r}, the output is {from_type}")
    return problems


def validate_ui(wf: dict, object_info: dict) -> list[str]:
    problems = [f"missing top-level key {key!r}" for key in TOP_LEVEL_KEYS if key not in wf]
    nodes = {n["id"]: n for n in wf.get("nodes", [])}
    for nid, node in nodes.items():
        problems += node_problems(nid, node, object_info)
    link_ids = set()
    for link in wf.get("links", []):
        if isinstance(link, list) and len(link) == 6:
            link_ids.add(link[0])
        problems += link_problems(link, nodes, object_info)
    if nodes and wf.get("last_node_id", 0) < max(nodes):
        problems.append("last_node_id below the largest node id")
    if link_ids and wf.get("last_link_id", 0) < max(link_ids):
        problems.append("last_link_id below the largest link id")
    return problems


def broken_copies(wf: dict) -> dict[str, dict]:
    """Copies of a UI workflow with one known defect each: the validator must report every one."""

    def node(copy_, type_):
        return next(n for n in copy_["nodes"] if n["type"] == type_)

    cases = {}
    c = copy.deepcopy(wf)
    node(c, "SamplerCustom")["widgets_values"].remove("fixed")  # control_after_generate missing
    cases["missing_control_after_generate"] = c
    c = copy.deepcopy(wf)
    node(c, "ADE_UseEvolvedSampling")["widgets_values"][0] = "no such schedule"
    cases["combo_value_not_in_list"] = c
    c = copy.deepcopy(wf)
    node(c, "EmptyLatentImage")["widgets_values"][0] = 8  # width below min 16
    cases["number_below_min"] = c
    c = copy.deepcopy(wf)
    node(c, "MCM_LoraLoader")["widgets_values"].reverse()  # BOOLEAN where a FLOAT goes
    cases["widgets_out_of_order"] = c
    c = copy.deepcopy(wf)
    node(c, "MCM_Sampler")["type"] = "MCM_NoSuchNode"
    cases["unknown_node_type"] = c
    c = copy.deepcopy(wf)
    sampler = node(c, "SamplerCustom")
    link = next(ln for ln in c["links"] if ln[3] == sampler["id"] and ln[5] == "CONDITIONING")
    sigmas_slot = [i["name"] for i in sampler["inputs"]].index("sigmas")
    sampler["inputs"][link[4]]["link"], sampler["inputs"][sigmas_slot]["link"] = None, link[0]
    link[4] = sigmas_slot  # a CONDITIONING wire into the SIGMAS input
    cases["link_type_mismatch"] = c
    c = copy.deepcopy(wf)
    node(c, "VAEDecode")["outputs"][0]["type"] = "LATENT"  # a saved output that is not the node's
    cases["output_type_changed"] = c
    return cases


def with_appended_output(object_info: dict, class_type: str) -> dict:
    """/object_info as a newer ComfyUI would give it: one more output at the end of a node (must still validate)."""
    info = copy.deepcopy(object_info)
    node = info[class_type]
    node["output"] = [*node["output"], "IMAGE"]
    node["output_name"] = [*node["output_name"], "NEW_OUTPUT"]
    return info
