"""Compatibility names: the weights I/O now lives in modules named by what they do.

``read`` (files), ``layers`` (LoRA keys → checked layers), ``peft`` (PEFT configs), ``guess``
(metadata for files without it), ``load`` (adapters from any source), ``atomic`` (safe writes) and
``export`` (the writers and their registry). Import from those, or from :mod:`mcm.weights`.
"""

from __future__ import annotations

# ruff: noqa: F401, F403 - a compatibility shim: everything the earlier io.py offered
from .atomic import *
from .export import *
from .layers import *
from .load import *
from .peft import *
from .read import *
from .atomic import atomic_file as _atomic_file, prepare_destination as _prepare_destination
from .read import read_tensors as _read_tensors
