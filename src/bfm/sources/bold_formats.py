"""The BOLD source's native file: BCDM JSON Lines, gzipped and sorted by ``processid``, and
deterministic samples of it (``bfm.sources.bold`` documents the wire format and the rules)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.contracts.grid import Grid
from bfm.fileio import atomic_path


def binomial(name: str) -> str:
    return " ".join(str(name).split()[:2])


def _sort_key(line: str) -> tuple[int, str, str]:
    try:
        record = json.loads(line)
    except ValueError:
        return (1, "", line)
    pid = record.get("processid") if isinstance(record, dict) else None
    return (0, str(pid), line) if pid is not None else (1, "", line)


def write_lines(path: Path, lines: list[str]) -> Path:
    """The raw file: ``lines`` sorted by processid, gzip with no name or time in its header."""
    text = "".join(line + "\n" for line in sorted(lines, key=_sort_key))
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(text.encode("utf-8"))
    return path


def read_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a raw file (gzip or plain JSON Lines)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such BOLD records file")
    with open(path, "rb") as f:
        zipped = f.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if zipped else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


# --- sample ----------------------------------------------------------------------------------
BARCODE_BP = 658  # the COI-5P (Folmer) barcode region
BASES = np.array(list("ACGT"))
INSTITUTIONS = ("BFM Sample Lab North", "BFM Sample Lab South", "BFM Sample Museum")
ACCURACY = (None, 5, 30, 250, 1000)  # coord_accuracy (m) of the sample records


def reference(key: int, seed: int) -> str:
    """A species' synthetic barcode: a first-order Markov chain of its own, AT-rich as COI,
    so that its k-mer profile differs from the other species'."""
    rng = np.random.default_rng([seed, 11, key])
    composition = rng.dirichlet(np.array([28.0, 18.0, 16.0, 38.0]))  # A, C, G, T
    cum = np.cumsum(rng.dirichlet(12.0 * composition, size=4), axis=1)  # row: the base before
    u = rng.random(BARCODE_BP)
    bases = np.empty(BARCODE_BP, dtype=np.int64)
    bases[0] = np.searchsorted(np.cumsum(composition), u[0])
    for i in range(1, BARCODE_BP):
        bases[i] = np.searchsorted(cum[bases[i - 1]], u[i])
    return "".join(BASES[np.minimum(bases, 3)])


def _variant(ref: str, rng: np.random.Generator) -> str:
    """A specimen's sequence: 1.5 % substitutions, up to 8 bp trimmed at either end."""
    seq = np.array(list(ref))
    sub = rng.random(seq.size) < 0.015
    seq[sub] = rng.choice(BASES, int(sub.sum()))
    head, tail = rng.integers(0, 9, 2)
    return "".join(seq[head : seq.size - tail])


def species_records(index: int, key: int, name: str, higher: dict[str, str],
                    days: pd.DatetimeIndex, grid: Grid,
                    seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """One species' BCDM records; the first species carries the deliberately bad ones."""
    rng = np.random.default_rng([seed, 12, key])
    ref, genus = reference(key, seed), binomial(name).split()[0]
    lat_e, lon_e = grid.lat_edges(), grid.lon_edges()
    out: list[dict[str, Any]] = []
    for j in range(int(rng.integers(10, 21))):
        day = days[int(rng.integers(len(days)))]
        kind = rng.random()
        last = min(day + pd.Timedelta(days=int(rng.integers(1, 15))), days[-1])
        end = day if kind < 0.7 else (last if kind < 0.9 else None)
        u = rng.uniform(0.01, 0.99, 2)
        coord: list[float] | None = [
            round(float(lat_e[-1] + u[0] * (lat_e[0] - lat_e[-1])), 5),
            round(float(lon_e[0] + u[1] * (lon_e[-1] - lon_e[0])), 5),
        ]
        seq = _variant(ref, rng)
        start_text = f"{day:%Y-%m-%d}"
        if rng.random() < 0.06 or (index == 0 and j == 1):
            coord = None  # no coordinates
        if index == 0 and j == 2:
            seq = seq[:300] + "XJ7*" + seq[304:]  # not nucleotides
        if j == 3:
            seq = (seq[:100] + "--" + seq[100:400] + "-" + seq[400:]).lower()  # gaps, lowercase
        if index == 0 and j == 4:
            start_text, end = f"{day.year}-02-30", None  # an impossible date
        pid, taxon = f"BFM{index + 1:02d}{j + 1:03d}-{day.year % 100:02d}", binomial(name)
        record: dict[str, Any] = {
            "processid": pid,
            "sampleid": f"BFM-S-{key}-{j + 1}",
            "bin_uri": f"BOLD:BFM{index + 1:04d}",
            "inst": INSTITUTIONS[rng.integers(3)],
        }
        record |= higher | {"genus": genus, "species": taxon, "identification": taxon}
        record |= {"collection_date_start": start_text,
                   "collection_date_end": None if end is None else f"{end:%Y-%m-%d}",
                   "coord": coord, "coord_accuracy": ACCURACY[rng.integers(len(ACCURACY))],
                   "nuc": seq, "nuc_basecount": len(seq.replace("-", "")),
                   "marker_code": "COI-5P"}  # fmt: skip
        out.append(record)
    return out
