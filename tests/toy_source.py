"""A toy source with one toy modality, in one module: what adding a source takes.

Named in a config's ``plugins`` (``plugins: [toy_source.py]``), it registers the modality
``toy_field`` (batch group ``toy``, one variable ``greenness`` in [0, 1], daily) and the
source ``toy``, whose raw files are one netCDF per month on a 0.25 deg native grid. Nothing
else in the repository names it: the workflow tiles it, every batch carries its group and
the model trains on it (tests/test_e2e_configs.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bfm.contracts import catalogue, timeaxis
from bfm.contracts.catalogue import Cadence, DimsKind, Modality, Variable
from bfm.fileio import atomic_path
from bfm.sources import manifest, tiling
from bfm.sources.base import Source, Study, register
from bfm.sources.era5 import native_grid

TOY = catalogue.register(
    Modality(
        "toy_field", "toy", "toy", DimsKind.TIME, Cadence.DAILY,
        (Variable("greenness", "1", "toy greenness index", None, (0.0, 1.0)),),
        "a toy daily field",
    )
)  # fmt: skip


class Toy(Source):
    name = "toy"
    licence = "CC0 1.0"
    citation = "The BFM tests' toy source"

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        return [f"{period}.nc"]

    def sample(self, name: str, out: Path, study: Study) -> Path:
        period = timeaxis.check_period(name.removesuffix(".nc"))
        start, end = timeaxis.period_bounds(period)
        days = pd.date_range(start, end, freq="D", inclusive="left")
        native = native_grid(study.grid)
        seed = int(study.settings(self.name).get("seed", 0))
        doy = days.dayofyear.to_numpy()[:, None, None]
        lat = native.latitudes[None, :, None]
        lon = native.longitudes[None, None, :]
        phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
        values = 0.5 + 0.3 * np.sin(2 * np.pi * doy / 365.25 + lat / 10 + phase) * np.cos(lon / 7)
        ds = xr.Dataset(
            {"greenness": (("day", "lat", "lon"), values.astype(np.float32))},
            coords={"day": days, "lat": native.latitudes, "lon": native.longitudes},
        )
        with atomic_path(out) as tmp:
            ds.to_netcdf(tmp)
        manifest.write_manifest(out, source=self.name, request={"period": period},
                                url=f"sample:toy?seed={seed}", licence=self.licence,
                                citation=self.citation)  # fmt: skip
        return out

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        (path,) = files
        with xr.open_dataset(path) as raw:
            ds = raw.load().rename({"day": "time", "lat": "latitude", "lon": "longitude"})
        ds.encoding["source"] = str(path)
        return ds

    def to_tile(self, native: xr.Dataset, modality: Modality, study: Study, period: str,
                prov: Mapping[str, str]) -> xr.Dataset:  # fmt: skip
        attrs = {"source": "toy", "licence": self.licence, "citation": self.citation}
        return tiling.gridded_tile(native, modality, study.grid, study.times_in(period),
                                   study.step, period, attrs, prov)  # fmt: skip


register(Toy())
