"""Typed records that cross the data -> model border (torch tensors).

Shapes (B leading for a collated batch; absent for one sample), C_g the channels of group g
in the ``Layout`` order, H x W the grid:

- ``ModelInput.inputs[g]``: ``(B, 2, C_g, H, W)`` for time/level/species groups, ``(B, C_g,
  H, W)`` for static ones, normalised, finite (missing values filled with 0; a categorical
  channel holds its category code); ``missing[g]``, the same shape, 1 where the value was
  missing (None: nothing missing);
  ``lat`` ``(H,)`` and ``lon`` ``(W,)`` in degrees (a leading batch axis is allowed: all
  samples share one grid); ``time`` ``(B, 2)``: day of year and hour of t0.
- ``Sample.target[g]``: ``(B, C_g, H, W)`` normalised next time of each dynamic group, 0 where
  missing, and ``mask[g]`` (bool, True where the target is known); ``t0`` ``(B,)`` int64
  seconds since 1970.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate


@dataclass
class ModelInput:
    """What ``BFM.forward`` reads (see the module docstring)."""

    inputs: dict[str, Tensor]
    lat: Tensor
    lon: Tensor
    time: Tensor
    missing: dict[str, Tensor] | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ModelInput:
        """On ``device``, field values in ``dtype`` (the engine's parameter dtype)."""
        missing = (
            None
            if self.missing is None
            else {g: t.to(device, dtype) for g, t in self.missing.items()}
        )
        return ModelInput({g: t.to(device, dtype) for g, t in self.inputs.items()},
                          self.lat.to(device), self.lon.to(device), self.time.to(device),
                          missing)  # fmt: skip

    def batched(self) -> ModelInput:
        """A single sample as a batch of one."""
        missing = None if self.missing is None else {g: t[None] for g, t in self.missing.items()}
        return ModelInput({g: t[None] for g, t in self.inputs.items()}, self.lat, self.lon,
                          self.time[None], missing)  # fmt: skip


@dataclass
class Sample:
    """One training or evaluation sample: the model input and the target it should predict."""

    input: ModelInput
    target: dict[str, Tensor]
    mask: dict[str, Tensor]
    t0: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Sample:
        return Sample(
            self.input.to(device, dtype),
            {g: t.to(device) for g, t in self.target.items()},
            {g: t.to(device) for g, t in self.mask.items()},
            self.t0.to(device),
        )

    @staticmethod
    def collate(samples: Sequence[Sample]) -> Sample:
        """Stack samples along a new leading axis (lat/lon too: the model takes row 0)."""

        def stack(get: Callable[[Sample], Any]) -> Any:
            return default_collate([get(s) for s in samples])

        missing = None
        if all(s.input.missing is not None for s in samples):
            missing = stack(lambda s: s.input.missing)
        x = ModelInput(
            stack(lambda s: s.input.inputs),
            stack(lambda s: s.input.lat),
            stack(lambda s: s.input.lon),
            stack(lambda s: s.input.time),
            missing,
        )
        return Sample(x, stack(lambda s: s.target), stack(lambda s: s.mask), stack(lambda s: s.t0))
