"""The Living Planet Index source (``lpi``): the Living Planet Database read from your file,
the index per grid cell by the chain method, on the model times.

No download: the LPD's data-use agreement forbids redistributing the raw data, so the user
requests the CSV from the LPI data portal (www.livingplanetindex.org/data_portal) and points
``sources.lpi.path`` at it (mode ``file``; a folder holding ``LPD.csv`` also works); tests and
the demo use ``sample``. One raw file, ``LPD.csv``, serves every tile of the window. The file
format, ``open`` and the sample are in ``bfm.sources.lpd``; the method in
``bfm.sources.lpi_index`` (read its docstring for every rule).

``to_tile`` assigns each population to the grid cell holding its (Latitude, Longitude), chains
the index over the window's years and puts it on the model times by the yearly rule
(``tiling.yearly_at``: the value of the year a step falls in, never another year's). Index
values outside the catalogue range are set missing and counted (``n_out_of_range``, in
cell-years) without refusing the tile. It counts the populations outside the grid, of zeros
only, whose span misses the window, and used (``n_populations`` = their sum), and the capped
ratios; every count (``open``'s too) is in the tile's history and in the attributes of its
variable ``lpi``.

Options (``sources.lpi.options``):

- ``encoding`` (``latin-1``): the CSV's text encoding;
- ``gaps`` (``interpolate`` | ``skip``), ``cap`` (1.0, |log10 ratio| per year),
  ``zero_offset`` (0.01), ``weighting`` (``species`` | ``populations``), ``empty_years``
  (``missing`` | ``carry``), ``base_year`` (the year of ``time.start``; earlier is allowed):
  the method, see ``bfm.sources.lpi_index``;
- ``sample_populations`` (300): how many populations ``sample`` writes.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bfm import __version__
from bfm.contracts import tile as contract
from bfm.contracts.catalogue import Modality, Variable
from bfm.sources import lpd, lpi_index, tiling
from bfm.sources.base import NotOffered, Source, Study, register

if TYPE_CHECKING:
    import xarray as xr

RAW_NAME = "LPD.csv"


# --- the source -----------------------------------------------------------------------------
def _history(counts: Mapping[str, int], method: lpi_index.Method) -> str:
    told = ", ".join(f"{k} {v}" for k, v in counts.items())
    return (
        f"bfm {__version__} tile lpi: Living Planet Index per cell by the chain method "
        f"(gaps {method.gaps}, |log10 ratio| <= {method.cap}, zero offset {method.zero_offset}, "
        f"weighting {method.weighting}, empty years {method.empty_years}); the value of the year "
        f"each step falls in; counts: {told}"
    )


def _mask_range(
    yearly: np.ndarray, years: np.ndarray, times: pd.DatetimeIndex, var: Variable
) -> tuple[np.ndarray, int]:
    """Index values outside ``var``'s valid range set missing; the count of those in the years
    of ``times`` (cell-years). A computed index is never refused for them (the 1 % rule of
    ``tiling.mask_out_of_range`` guards native units and fill values, not long chains)."""
    lo, hi = var.valid_range
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(yearly) & ((yearly < lo) | (yearly > hi))
    in_tile = np.isin(years, pd.DatetimeIndex(times).year.unique())
    return np.where(bad, np.nan, yearly), int(bad[in_tile].sum())


class LPI(Source):
    """The Living Planet Database: one raw file ``LPD.csv`` for the whole window."""

    name = "lpi"
    licence = lpd.LICENCE
    citation = lpd.CITATION

    def raw_names(self, modality: Modality, period: str, study: Study) -> list[str]:
        return [RAW_NAME]

    def raw_settings(self, name: str, study: Study) -> dict[str, Any]:
        return {**super().raw_settings(name, study), "start": study.start, "end": study.end}

    def user_file(self, path: str, name: str) -> str:
        return path if path.lower().endswith(".csv") else super().user_file(path, name)

    def options(self, study: Study) -> tuple[lpi_index.Method, str, int]:
        """The method, the encoding and the sample size of ``sources.lpi.options``, checked."""
        options = study.options(self.name)
        method = lpi_index.Method.from_options(options)
        encoding, n = options.get("encoding", "latin-1"), options.get("sample_populations", 300)
        try:
            codecs.lookup(str(encoding))
        except LookupError as err:
            raise ValueError(
                f"config: key 'sources.lpi.options.encoding': unknown encoding {encoding!r}"
            ) from err
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"config: key 'sources.lpi.options.sample_populations' must be a whole number "
                f">= 1, got {n!r}"
            )
        return method, str(encoding), n

    def sample(self, name: str, out: Path, study: Study) -> Path:
        if name != RAW_NAME:
            raise ValueError(f"lpi: raw file {name!r} is not {RAW_NAME!r}")
        n = self.options(study)[2]
        seed = int(study.settings(self.name).get("seed", 0))
        return lpd.sample(out, study.grid, study.start, study.end, seed, n)

    def download(self, name: str, out: Path, study: Study) -> Path:
        raise NotOffered(
            "lpi: mode 'download' is not offered: the Living Planet Database's data-use "
            "agreement forbids redistributing its raw data, so it cannot be fetched for you. "
            "Request the CSV at www.livingplanetindex.org/data_portal, then set "
            "sources.lpi.mode to 'file' and sources.lpi.path to the CSV (or use 'sample')"
        )

    def open(self, files: Sequence[str | Path], modality: Modality, study: Study) -> xr.Dataset:
        if len(files) != 1:
            raise ValueError(f"lpi: expected one file ({RAW_NAME}), got {list(files)}")
        return lpd.open(files[0], self.options(study)[1])

    def window(self, study: Study, method: lpi_index.Method) -> tuple[int, int]:
        first, last = pd.Timestamp(study.start).year, pd.Timestamp(study.end).year
        base = first if method.base_year is None else method.base_year
        if base > first:
            raise ValueError(
                f"config: key 'sources.lpi.options.base_year' ({base}) is after the "
                f"window's first year {first}"
            )
        return base, last

    def to_tile(
        self,
        native: xr.Dataset,
        modality: Modality,
        study: Study,
        period: str,
        prov: Mapping[str, str],
    ) -> xr.Dataset:
        """The chained index per cell on the model times of ``period`` (pure)."""
        import xarray as xr

        where = native.encoding.get("source", "<lpi dataset>")
        method = self.options(study)[0]
        times = study.times_in(period)
        if len(times) == 0:
            raise ValueError(f"{where}: time: no step of the window falls in period {period}")
        grid = study.grid
        lat, lon = native["latitude"].values, native["longitude"].values
        inside = grid.contains(lat, lon)
        row, col = grid.index_of(lat[inside], lon[inside])
        result = lpi_index.cell_index(
            native["value"].values[inside],
            native["year"].values,
            row * grid.n_lon + col,
            native["binomial"].values[inside],
            self.window(study, method),
            method,
        )
        (var,) = modality.variables
        yearly, n_bad = _mask_range(lpi_index.on_grid(result, grid.shape), result.years, times, var)
        values = tiling.yearly_at(result.years, yearly, times)
        counts = {k: int(native.attrs.get(k, 0)) for k in lpd.COUNT_NAMES}
        counts["n_outside_grid"] = int((~inside).sum())
        counts.update({f"n_{k}": v for k, v in result.counts.items()})
        attrs_var = {"n_out_of_range": n_bad, "n_incomplete": 0, **counts}
        ds = xr.Dataset(
            {var.name: (modality.tile_dims, values.astype(np.float32), attrs_var)},
            coords={"time": times},
        )
        attrs = {
            "source": f"Living Planet Database ({Path(where).name})",
            "licence": lpd.LICENCE,
            "citation": lpd.CITATION,
            "history": _history(counts, method),
            "step": study.step,
            "time_rule": contract.YEARLY_RULE,
        }
        return contract.finish(ds, modality, grid, period, attrs, prov, "time: point")


register(LPI())
