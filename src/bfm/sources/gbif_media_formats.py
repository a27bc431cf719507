"""GBIF media zip (``media.zip``): its index, its members, media magic bytes and a deterministic
sample (``bfm.sources.gbif_media`` documents the layout and the rules).

The index ``multimedia.txt`` is written as GBIF writes a DwC-A member: tab-separated, unquoted,
UTF-8, a header row, ``\\n`` line ends; a tab or a line break inside a value becomes a space
(the format has no quoting to hold one).
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.fileio import atomic_path
from bfm.sources.gbif_dwca import KINDS, MULTIMEDIA_COLUMNS
from bfm.sources.inaturalist_formats import PNG_MAGIC
from bfm.sources.xenocanto_formats import audio_kind, pcm16_wav

MEDIA_NAME = "media.zip"
DWCA_NAME = "occurrences_dwca.zip"  # the DwC-A download the media are taken from
INDEX_NAME = "multimedia.txt"
INDEX_COLUMNS = (*MULTIMEDIA_COLUMNS, "speciesKey", "member")
FOLDERS = {"image": "images", "audio": "audio"}  # kind -> folder of the members
TYPES = {kind: dc_type for dc_type, kind in KINDS.items()}  # image -> StillImage, ...
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same media, the same bytes


# --- magic bytes ----------------------------------------------------------------------------
def image_ext(head: bytes) -> str | None:
    """The extension of an image by its first bytes (jpg, png, gif, webp, tif), else None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == PNG_MAGIC:
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return None


def media_ext(kind: str, head: bytes) -> str | None:
    """The extension of a medium of ``kind`` by its first bytes; None when the bytes are not
    a file of that kind (an HTML error page, a sound where an image was announced)."""
    if kind == "image":
        return image_ext(head)
    if kind == "audio":
        return audio_kind(head) or ("m4a" if head[4:8] == b"ftyp" else None)
    raise ValueError(f"gbif media: kind {kind!r} is not one of {list(FOLDERS)}")


def member(kind: str, gbif_id: str, n: int, ext: str) -> str:
    """``images/<gbifID>_<n>.<ext>`` or ``audio/<gbifID>_<n>.<ext>``."""
    return f"{FOLDERS[kind]}/{gbif_id}_{n}.{ext}"


# --- the zip --------------------------------------------------------------------------------
def _text(value: object) -> str:
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def index_text(rows: Sequence[dict[str, Any]]) -> str:
    """The ``multimedia.txt`` of ``rows`` (dicts with the :data:`INDEX_COLUMNS`)."""
    lines = ["\t".join(INDEX_COLUMNS)]
    lines += ["\t".join(_text(row.get(c, "")) for c in INDEX_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def write_media_zip(out: Path, rows: Sequence[dict[str, Any]],
                    data: Sequence[bytes | Path]) -> Path:  # fmt: skip
    """``multimedia.txt`` (deflated), then each row's ``member`` with its bytes (stored:
    media are compressed already) in row order, at fixed times; written atomically."""
    if len(rows) != len(data):
        raise ValueError(f"{out}: {len(rows)} index rows for {len(data)} files")
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        info = zipfile.ZipInfo(INDEX_NAME, FIXED_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, index_text(rows))
        for row, body in zip(rows, data, strict=True):
            payload = body if isinstance(body, bytes) else body.read_bytes()
            zf.writestr(zipfile.ZipInfo(str(row["member"]), FIXED_TIME), payload)
    return out


def kind_of(dc_type: object) -> str | None:
    """``image`` or ``audio`` of a Dublin Core type, bare (``StillImage``) or as its URI
    (``http://purl.org/dc/dcmitype/Sound``); None for any other type."""
    return KINDS.get(str(dc_type).strip().rsplit("/", 1)[-1])


def kind_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Media per kind (``{"image": n, "audio": m}``) of index rows."""
    found = Counter(kind_of(r["type"]) for r in rows)
    return {kind: int(found.get(kind, 0)) for kind in FOLDERS}


def licence_summary(licences: Iterable[object]) -> str:
    """``N media, licence per item: CC-BY-4.0 3, CC0-1.0 1`` (multimedia.txt: each one's)."""
    counts = Counter(str(v) or "unknown" for v in licences)
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return (f"{sum(counts.values())} media, licence per item: {parts or 'none'} "
            f"({INDEX_NAME}: licence, creator and rights holder of each)")  # fmt: skip


# --- the sample -----------------------------------------------------------------------------
SAMPLE_ID = 4_800_000_000  # sample gbifIDs: 4.8e9 + 1e6 * (seed % 1000) + 1000 * species + i
SAMPLE_HOST = "https://media.sample.bfm.invalid/gbif"  # .invalid: never resolves
SAMPLE_LICENCES = ("CC-BY-4.0", "CC0-1.0", "CC-BY-NC-4.0", "CC-BY-SA-4.0")
SAMPLE_SIDE = 64  # pixels of a sample image
WAV_RATE = 16_000  # Hz
WAV_SECONDS = 2.0


def sample_png(index: int, seed: int, k: int) -> bytes:
    """A 64 x 64 PNG of the ``index``-th species: its hue (golden-ratio steps around the
    colour wheel), stripes at its angle and spatial frequency, a seeded noise of image ``k``."""
    from PIL import Image

    rng = np.random.default_rng([seed, index, k, 11])
    y, x = np.mgrid[0:SAMPLE_SIDE, 0:SAMPLE_SIDE].astype(np.float64)
    angle = np.pi * ((index * 0.381966) % 1.0)
    period = 4.0 + 3.0 * (index % 4)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period
                                 + phase)  # fmt: skip
    hue = np.full(stripes.shape, ((index * 0.618034) % 1.0) * 255.0)
    sat = 120.0 + 100.0 * stripes
    val = 90.0 + 140.0 * stripes + rng.normal(0.0, 8.0, stripes.shape)
    hsv = np.clip(np.stack([hue, sat, val], axis=-1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(hsv, "HSV").convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def sample_wav(index: int, seed: int, k: int) -> bytes:
    """A 2 s, 16 kHz, 16-bit mono WAV of the ``index``-th species: a tone at its pitch (1.2 +
    0.7 * index kHz) in five 0.25 s calls, and seeded noise of recording ``k``."""
    n = int(WAV_RATE * WAV_SECONDS)
    t = np.arange(n) / WAV_RATE
    pitch = 1200.0 + 700.0 * index
    calls = (np.sin(np.pi * ((t * 2.5) % 1.0)) ** 2) * ((t * 2.5) % 1.0 < 0.625)
    noise = np.random.default_rng([seed, index, k, 13]).normal(0.0, 0.03, n)
    return pcm16_wav(0.6 * np.sin(2 * np.pi * pitch * t) * calls + noise, WAV_RATE)


def corrupt_image(seed: int) -> bytes:
    """Bytes that announce a PNG and are none (a broken download kept on purpose)."""
    return PNG_MAGIC + np.random.default_rng([seed, 17]).bytes(200)


def audio_species(species: pd.DataFrame) -> list[bool]:
    """Which species get recordings: those of class Aves when the list has a ``class``
    column, else every other species (the first, the third, ...)."""
    if "class" in species.columns:
        return [str(c).strip().lower() == "aves" for c in species["class"]]
    return [i % 2 == 0 for i in range(len(species))]


def _sample_row(gid: int, key: int, kind: str, n: int, ext: str, rng: np.random.Generator
                ) -> dict[str, Any]:  # fmt: skip
    name = member(kind, str(gid), n, ext)
    creator = f"sample observer {int(rng.integers(1, 500))}"
    holder = creator if rng.random() < 0.7 else "BFM Sample Society"
    return {**dict.fromkeys(INDEX_COLUMNS, ""),
            "gbifID": str(gid), "type": TYPES[kind],
            "format": "image/png" if kind == "image" else "audio/wav",
            "identifier": f"{SAMPLE_HOST}/{name.split('/', 1)[1]}",
            "references": f"https://www.gbif.org/occurrence/{gid}",
            "created": f"20{10 + int(rng.integers(0, 10))}-0{int(rng.integers(1, 10))}-1{n}",
            "creator": creator, "publisher": "BFM sample", "rightsHolder": holder,
            "license": SAMPLE_LICENCES[int(rng.integers(0, len(SAMPLE_LICENCES)))],
            "speciesKey": str(key), "member": name}  # fmt: skip


def sample_media_rows(species: pd.DataFrame, seed: int, per_species: int
                      ) -> tuple[list[dict[str, Any]], list[bytes]]:  # fmt: skip
    """Index rows and bytes of the sample: per species ``per_species`` images (two per
    record), recordings for the species of :func:`audio_species` (one per record), and one
    more record of the first species whose image is corrupt."""
    if per_species < 1:
        raise ValueError(f"gbif media sample: per_species must be >= 1, got {per_species}")
    rng = np.random.default_rng([seed, 19])
    rows: list[dict[str, Any]] = []
    data: list[bytes] = []
    base = SAMPLE_ID + 1_000_000 * (seed % 1000)
    keys = [int(k) for k in species["gbif_key"]]
    for i, (key, audio) in enumerate(zip(keys, audio_species(species), strict=True)):
        first = base + 1000 * i
        for k in range(per_species):
            rows.append(_sample_row(first + k // 2, key, "image", k % 2 + 1, "png", rng))
            data.append(sample_png(i, seed, k))
        if i == 0:
            rows.append(_sample_row(first + 999, key, "image", 1, "png", rng))
            data.append(corrupt_image(seed))
        for k in range(per_species if audio else 0):
            rows.append(_sample_row(first + 500 + k, key, "audio", 1, "wav", rng))
            data.append(sample_wav(i, seed, k))
    return rows, data
