"""Per-gridpoint RMSE maps of the headline lines: ``error_maps.nc`` beside ``scores.jsonl``.

Written by ``bfm evaluate``; the report reads it. Format (CF-1.10 NetCDF):

- dimensions ``lead`` (int32 coordinate 1..N, ``long_name`` "forecast lead", ``units`` "1",
  attribute ``step``, e.g. "1D"), ``latitude`` and ``longitude`` (the batch grid's cell
  centres, degrees_north / degrees_east);
- for each headline line the model's layout has (z500, t850, q700, t2m, u10, v10, msl) and
  each forecast (model, persistence, climatology) a float32 variable
  ``rmse_{forecast}_{short}`` (short: the variable's name and level, ``rmse_model_z500``,
  ``rmse_persistence_t2m``), dims (lead, latitude, longitude): the root of the mean over the
  forecast times of the squared error at that cell, over the same valid points as the
  scores (NaN where a cell has none); attributes ``units``, ``long_name`` ("RMSE of the
  model forecast of geopotential at 500 hPa"), ``bfm_variable`` ("atmospheric/z"),
  ``bfm_channel`` ("500", or "" for a single-level variable) and ``forecast``;
  a layout without a headline line gives a file with the coordinates only;
- global attributes: Conventions, title, institution, provenance (bfm_version, git_commit,
  config_hash, settings_hash), ``run`` (the model directory) and ``climatology_kind``.

Memory: per lead and headline channel, one squared-error sum per forecast and one count of
valid points, ``(lat, lon)`` each; never whole fields per time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import netCDF4
import numpy as np

from bfm.contracts.catalogue import DimsKind
from bfm.contracts.grid import Grid
from bfm.contracts.layout import Layout
from bfm.evaluation import cf
from bfm.fileio import atomic_path

TITLE = "BFM per-gridpoint RMSE of the headline lines, per forecast lead"
FILENAME = "error_maps.nc"


@dataclass
class ErrorMaps:
    """Per-cell squared-error sums and valid counts of some channels, per lead.

    Attributes:
        layout: the model's layout.
        channels: ``(group, channel index)`` of the mapped lines.
        forecasts: the forecasts mapped (a name ``add`` is given and this lacks is ignored).
        grid, step: of the batches scored (set by the first ``add``).
    """

    layout: Layout
    channels: Sequence[tuple[str, int]]
    forecasts: Sequence[str] = ("model", "persistence", "climatology")
    grid: Grid | None = None
    step: str = ""
    sq: dict[tuple[int, str, int, str], np.ndarray] = field(default_factory=dict)
    n: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)  # the leads added

    def add(self, lead: int, group: str, forecasts: Mapping[str, np.ndarray],
            target: np.ndarray, valid: np.ndarray, grid: Grid, step: str) -> None:  # fmt: skip
        """One forecast time of ``group``: ``forecasts[name]``, ``target`` and ``valid``
        ``(C_g, H, W)``."""
        if self.grid is None:
            self.grid, self.step = grid, step
        elif grid != self.grid:
            raise ValueError(f"error maps: grid {grid} differs from {self.grid}")
        self.seen.add(lead)
        for g, c in self.channels:
            if g != group:
                continue
            ok = valid[c]
            key = (lead, g, c)
            self.n[key] = self.n.get(key, 0) + ok.astype(np.int64)
            for name in self.forecasts:
                err = np.where(ok, forecasts[name][c].astype(np.float64) - target[c], 0.0)
                self.sq[(*key, name)] = self.sq.get((*key, name), 0.0) + err * err

    @property
    def leads(self) -> list[int]:
        return sorted(self.seen)

    def rmse(self, lead: int, group: str, channel: int, forecast: str) -> np.ndarray:
        """``(H, W)`` float32; NaN where the cell had no valid point."""
        n = self.n[(lead, group, channel)]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.sqrt(self.sq[(lead, group, channel, forecast)] / n)
        return np.where(n > 0, out, np.nan).astype(np.float32)

    def names(self) -> list[tuple[str, int, str, str]]:
        """``(group, channel, short, variable name)`` of each mapped line."""
        out = []
        for g, c in self.channels:
            var, label = self.layout.channel_labels(g)[c]
            out.append((g, c, var + (label or ""), var))
        return out

    def write(self, path: str | Path, attrs: Mapping[str, object]) -> Path:
        """Write the maps (atomically); ``attrs`` are the provenance, ``run`` and
        ``climatology_kind``."""
        if self.grid is None:
            raise ValueError(f"{path}: no forecast was scored, so no error map to write")
        leads = self.leads
        with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
            ds.createDimension("lead", len(leads))
            lead = ds.createVariable("lead", "i4", ("lead",))
            lead[:] = np.asarray(leads, np.int32)
            lead.setncatts({"long_name": "forecast lead", "units": "1", "step": self.step})
            cf.add_grid(ds, self.grid)
            for g, c, short, var in self.names():
                meta = cf.variable_attrs(g, var)
                level = self.layout.channel_labels(g)[c][1]
                at = f" at {level} hPa" if level and self.layout.kind(g) == DimsKind.LEVEL else ""
                for name in self.forecasts:
                    v = cf.data_variable(ds, f"rmse_{name}_{short}", ("lead", "latitude",
                                         "longitude"), {
                        "units": meta["units"],
                        "long_name": f"RMSE of the {name} forecast of {meta['long_name']}{at}",
                        "bfm_variable": f"{g}/{var}", "bfm_channel": level or "",
                        "forecast": name})  # fmt: skip
                    v[:] = np.stack([self.rmse(k, g, c, name) for k in leads])
            ds.setncatts(cf.global_attrs(TITLE, {}, history="bfm evaluate",
                                         **{k: str(v) for k, v in attrs.items()}))  # fmt: skip
        return Path(path)
