"""Headless MCM distillation: ``python training/distill.py`` (embedded toy default) or with flags.

The trainer is being built on the numerics core in ``mcm/`` (schedule, DDIM solver, boundary
conditions, sampler) so that what is trained is what the ComfyUI nodes sample. Until it lands this
script states what it will do and exits with status 2, so nobody mistakes it for a finished run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from mcm.boundary import MCM_TIMESTEP_SCALING  # noqa: E402
from mcm.schedule import NUM_DDIM_TIMESTEPS, lcm_timesteps  # noqa: E402

PLAN = f"""\
MCM distillation (Motion Consistency Model, arXiv 2406.06890)

What the default run will do, on a 2-core CPU in minutes, with no downloads:
  1. build the toy world: captioned clips of moving shapes (degraded like web video) and clean images;
  2. load the shipped toy teacher (diffusers UNetMotionModel + AutoencoderKL + CLIP text encoder);
  3. distil it with the full method: consistency distillation on the {NUM_DDIM_TIMESTEPS}-step DDIM grid with
     timestep scaling {MCM_TIMESTEP_SCALING:g}, the disentangled motion loss through a learnable motion head,
     a frame discriminator on the clean images, and mixed trajectories;
  4. write a run folder with the node-compatible adapter, previews of teacher vs MCM
     {", ".join(f"{n}-step ({', '.join(map(str, lcm_timesteps(n).tolist()))})" for n in (1, 2, 4))}, and metrics.json.
"""

NOT_READY = (
    "error: the distillation trainer is not implemented yet in this version of comfyui-mcm; "
    "only the numerics core (mcm/) and its tests are. Nothing was written."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print what the default run does and exit 0")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(PLAN)
    if args.plan:
        return 0
    print(NOT_READY, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
