"""The layout of a method's trainable params: CLIP's under one key, the method's modules beside.

`{"clip": <CLIP params>, **extras}` (extras: MulCLIP's `calibration`, FineLIP's `aggregation`),
so regex param groups read `clip/text/...`, `calibration/...`, a trainer checkpoint keeps CLIP
at `params/clip`, and a model directory stores the two parts apart. Code that needs one part
asks here (or the `Method`, which builds the tree) instead of spelling the key.
"""
from __future__ import annotations

from typing import Any

CLIP = "clip"


def merge(clip_params: Any, extras: dict) -> dict:
  """The whole tree from CLIP's params and the method's own."""
  return {CLIP: clip_params, **extras}


def clip_of(params: dict) -> Any:
  return params[CLIP]


def extras_of(params: dict) -> dict:
  """The method's own modules (`{}` for a method that adds none)."""
  return {k: v for k, v in params.items() if k != CLIP}
