"""The Xeno-canto source's native formats: the API v3 page, the raw file
``recordings.jsonl.gz``, audio magic bytes, and deterministic samples of recordings and of
tiny WAV files (``bfm.sources.xenocanto`` documents the layouts and the rules)."""

from __future__ import annotations

import gzip
import io
import json
import wave
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bfm.contracts.grid import Grid
from bfm.contracts.occurrence import match_species
from bfm.fileio import atomic_path
from bfm.sources import manifest

GRADES = ("A", "B", "C", "D", "E")  # Xeno-canto quality, best first; else "no score"
LICENCES = (
    "//creativecommons.org/licenses/by-nc-sa/4.0/", "//creativecommons.org/licenses/by-nc-nd/4.0/",
    "//creativecommons.org/licenses/by-sa/4.0/", "//creativecommons.org/licenses/by/4.0/",
    "//creativecommons.org/publicdomain/zero/1.0/",
)  # fmt: skip
WAV_RATE = 8000  # Hz: the samples' tiny WAV files


# --- the API v3 page ---------------------------------------------------------------------
def error_of(body: Any) -> str | None:
    """The ``code: message`` of a v3 error answer ``{"error": {"code", "message"}}``."""
    if isinstance(body, dict) and "error" in body:
        err = body["error"]
        if isinstance(err, dict):
            return f"{err.get('code', '?')}: {err.get('message', '')}"
        return str(err)
    return None


def page_of(body: Any, where: str) -> tuple[int, int, list[dict[str, Any]]]:
    """``(numRecordings, numPages, recordings)`` of a v3 page (counts as strings or ints)."""
    if not isinstance(body, dict) or not isinstance(body.get("recordings"), list):
        raise ValueError(f"{where}: not a Xeno-canto API v3 page (no 'recordings' list)")
    try:
        total, pages = int(body["numRecordings"]), int(body["numPages"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: numRecordings/numPages missing or not whole numbers "
                         f"({err})") from None  # fmt: skip
    recs = body["recordings"]
    bad = [i for i, r in enumerate(recs) if not _is_recording(r)]
    if bad:
        raise ValueError(f"{where}: recording {bad[0]} has no numeric 'id'")
    return total, pages, recs


def _is_recording(obj: Any) -> bool:
    return isinstance(obj, dict) and str(obj.get("id", "")).strip().isdigit()


# --- the raw file ------------------------------------------------------------------------
def write_lines(path: Path, recordings: Iterable[dict[str, Any]]) -> Path:
    """Write gzip JSON Lines sorted by numeric id; fixed gzip header: same data, same bytes."""
    ordered = sorted(recordings, key=lambda r: int(r["id"]))
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            for rec in ordered:
                line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
                gz.write(line.encode("utf-8"))
    return path


def read_lines(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The recording objects of a raw file and the (1-based) numbers of unreadable lines:
    not JSON, or not an object with a numeric ``id``. Empty lines are skipped."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Xeno-canto raw file")
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a gzip JSON Lines file ({err})") from None
    good, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        (good.append(obj) if _is_recording(obj) else bad.append(number))
    return good, bad


def https_url(value: object) -> str:
    """A scheme-relative URL as https (``//creativecommons.org/...`` of ``lic``, ``//xeno-
    canto.org/...``); "" if none."""
    text = "" if value is None else str(value).strip()
    if text.startswith("//"):
        return "https:" + text
    if text.startswith("http://creativecommons.org"):
        return "https://" + text[len("http://") :]
    return text


def grade_rank(q: object) -> int:
    """0 for A .. 4 for E; 5 for "no score" or anything else."""
    text = str(q or "").strip().upper()
    return GRADES.index(text) if text in GRADES else len(GRADES)


# --- audio -------------------------------------------------------------------------------
def audio_kind(head: bytes) -> str | None:
    """The extension of an audio file by its first bytes (wav, mp3, flac, ogg), else None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
        if version != 1 and layer != 0:  # 01 and 00 are reserved: not an MPEG frame
            return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    return None


def tone_wav(pitch: float, seed: int, seconds: float = 0.3) -> bytes:
    """A 16-bit mono WAV: a chirp from ``pitch`` to 1.4 x ``pitch`` Hz under a Hann envelope,
    a little seeded noise. Same arguments, same bytes."""
    n = int(WAV_RATE * seconds)
    t = np.arange(n) / WAV_RATE
    sweep = pitch * (t + 0.2 * t**2 / seconds)  # phase / 2 pi of a linear chirp to 1.4 pitch
    noise = np.random.default_rng([seed, int(pitch)]).normal(0.0, 0.02, n)
    return pcm16_wav(np.sin(2 * np.pi * sweep) * np.hanning(n) * 0.6 + noise, WAV_RATE)


def pcm16_wav(signal: np.ndarray, rate: int) -> bytes:
    """A mono 16-bit WAV file of ``signal`` (full scale +-1, clipped)."""
    pcm = np.clip(signal * 32767, -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


# --- the audio zip -----------------------------------------------------------------------
INDEX_COLUMNS = ("member", "record_id", "species_key", "licence", "attribution", "bytes")


def attribution(rec: dict[str, Any]) -> str:
    """``<recordist>, XC<id>``: how Xeno-canto asks a recording to be credited."""
    return f"{str(rec.get('rec') or '').strip() or 'unknown recordist'}, XC{rec['id']}"


def index_row(member: str, rec: dict[str, Any], key: int, size: int) -> dict[str, Any]:
    return {"member": member, "record_id": f"xenocanto:{rec['id']}", "species_key": key,
            "licence": https_url(rec.get("lic")), "attribution": attribution(rec),
            "bytes": size}  # fmt: skip


def write_zip(out_zip: Path, files: Sequence[tuple[str, Path | bytes]],
              index: list[dict[str, Any]]) -> None:  # fmt: skip
    """Members in name order with a fixed time, then ``index.csv``: same input, same bytes."""
    table = pd.DataFrame(index, columns=list(INDEX_COLUMNS)).sort_values("member")
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for member, data in sorted(files, key=lambda f: f[0]):
            info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, data if isinstance(data, bytes) else data.read_bytes())
        info = zipfile.ZipInfo("index.csv", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, table.to_csv(index=False, lineterminator="\n"))


def species_of_manifest(recordings: Path) -> pd.DataFrame:
    """The species list (gbif_key, scientific_name) of a raw file's manifest."""
    record = manifest.read_manifest(recordings)
    queries = (record.get("request") or {}).get("queries")
    if not queries:
        raise ValueError(f"{manifest.manifest_path(recordings)}: request.queries is missing: "
                         "cannot tell the species keys of the recordings")  # fmt: skip
    keys = [int(e["species_key"]) for e in queries]
    names = [str(e["scientific_name"]) for e in queries]
    return pd.DataFrame({"gbif_key": keys, "scientific_name": names})


def choose(recordings: Path, per_species: int, quality: str) -> dict[int, list[dict[str, Any]]]:
    """Per species key (of the raw file's manifest), the recordings with a ``file`` of grade
    ``quality`` or better, best grade first, then by id."""
    if quality not in GRADES:
        raise ValueError(f"xenocanto: quality must be one of {list(GRADES)}, got {quality!r}")
    if per_species < 1:
        raise ValueError(f"xenocanto: per_species must be >= 1, got {per_species}")
    recs, _ = read_lines(recordings)
    names = pd.Series([f"{r.get('gen', '')} {r.get('sp', '')}" for r in recs], dtype=str)
    keys = match_species(names, species_of_manifest(recordings))
    worst = GRADES.index(quality)
    chosen: dict[int, list[dict[str, Any]]] = {}
    for rec, key in zip(recs, keys, strict=True):
        if pd.notna(key) and grade_rank(rec.get("q")) <= worst and str(rec.get("file") or ""):
            chosen.setdefault(int(key), []).append(rec)
    for group in chosen.values():
        group.sort(key=lambda r: (grade_rank(r.get("q")), int(r["id"])))
    return dict(sorted(chosen.items()))


# --- samples -----------------------------------------------------------------------------
COUNTRIES = (("Spain", 36.0, 43.8, -9.3, 3.3), ("France", 42.3, 51.1, -4.8, 8.2),
             ("Germany", 47.3, 55.1, 5.9, 15.0), ("Poland", 49.0, 54.9, 14.1, 24.2),
             ("Italy", 36.6, 47.1, 6.6, 18.5))  # fmt: skip
DEFECTS = ("year_only", "month_only", "question_mark", "no_coordinates", "null_coordinates",
           "impossible_date", "zero_date", "before_window")  # fmt: skip


def _country(lat: float, lon: float) -> str:
    for name, la0, la1, lo0, lo1 in COUNTRIES:
        if la0 <= lat <= la1 and lo0 <= lon <= lo1:
            return name
    return ""


def _recording(rid: int, gen: str, sp: str, common: str, birds: bool, day: pd.Timestamp,
               lat: float, lon: float, rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    """One v3 recording object (field names and order of the API, counts as strings)."""
    seconds = int(rng.integers(5, 180))
    hour, minute = int(rng.integers(4, 22)), int(rng.integers(0, 60))
    time = "?" if rng.random() < 0.15 else f"{hour:02d}:{minute:02d}"
    sono = {s: f"//xeno-canto.org/sounds/uploaded/BFM/ffts/XC{rid}-{s}.png"
            for s in ("small", "med", "large", "full")}  # fmt: skip
    osci = {s: f"//xeno-canto.org/sounds/uploaded/BFM/wave/XC{rid}-{s}.png"
            for s in ("small", "med", "large")}  # fmt: skip
    return {
        "id": str(rid), "gen": gen, "sp": sp, "ssp": "",
        "grp": "birds" if birds else "land mammals", "en": common,
        "rec": f"Recordist {int(rng.integers(1, 60))}", "cnt": _country(lat, lon),
        "loc": "sample site", "lat": f"{lat:.4f}", "lon": f"{lon:.4f}",
        "alt": str(int(rng.integers(0, 1500))), "type": "song" if birds else "call", "sex": "",
        "stage": "adult", "method": "field recording", "url": f"//xeno-canto.org/{rid}",
        "file": f"https://xeno-canto.org/{rid}/download",
        "file-name": f"XC{rid}-{gen}-{sp}.mp3", "sono": sono, "osci": osci,
        "lic": LICENCES[int(rng.integers(0, len(LICENCES)))],
        "q": str(rng.choice([*GRADES, "no score"], p=[0.4, 0.25, 0.15, 0.08, 0.04, 0.08])),
        "length": f"{seconds // 60}:{seconds % 60:02d}", "time": time,
        "date": f"{day:%Y-%m-%d}", "uploaded": f"{day + pd.Timedelta(days=30):%Y-%m-%d}",
        "also": [], "rmk": "", "animal-seen": str(rng.choice(["yes", "no", "unknown"])),
        "playback-used": "no", "temp": "", "regnr": "", "auto": "no", "dvc": "", "mic": "",
        "smp": "48000",
    }  # fmt: skip


def _defect(rec: dict[str, Any], defect: str, t0: pd.Timestamp) -> None:
    """Spoil ``rec`` the way real recordings are spoilt (cleaning must count them)."""
    if defect == "year_only":
        rec["date"] = f"{t0.year}-00-00"
    elif defect == "month_only":
        rec["date"] = f"{t0:%Y-%m}-00"
    elif defect == "question_mark":
        rec["date"], rec["time"] = "?", "?"
    elif defect == "no_coordinates":
        rec["lat"], rec["lon"] = "", ""
    elif defect == "null_coordinates":
        rec["lat"], rec["lon"] = None, None
    elif defect == "impossible_date":
        rec["date"] = f"{t0.year}-02-30"
    elif defect == "zero_date":
        rec["date"] = "0000-00-00"
    elif defect == "before_window":
        rec["date"] = f"{t0.year - 3}-{t0:%m-%d}"


def sample_recordings(species: pd.DataFrame, start: str, end: str, grid: Grid,
                      seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """Deterministic v3 recordings of every species, dated in [start, end], inside the grid;
    one of each :data:`DEFECTS` spread over the species."""
    t0, t1 = pd.Timestamp(start), pd.Timestamp(end)
    if t1 < t0:
        raise ValueError(f"xenocanto: --end {end} is before --start {start}")
    rng = np.random.default_rng([seed, 11])
    lat_e, lon_e = grid.lat_edges(), grid.lon_edges()
    inset = min(0.01, grid.res / 4)
    days = (t1 - t0).days + 1
    rid = 700_000 + 10_000 * (zlib.crc32(str(seed).encode()) % 50)
    out: list[dict[str, Any]] = []
    for name, common, cls in zip(species["scientific_name"], species["common_name"],
                                 species["class"], strict=True):  # fmt: skip
        gen, sp = str(name).split()[:2]
        for _ in range(int(rng.integers(12, 24))):
            rid += int(rng.integers(1, 40))
            day = t0 + pd.Timedelta(days=int(rng.integers(0, days)))
            lat = float(rng.uniform(lat_e[-1] + inset, lat_e[0] - inset))
            lon = float(rng.uniform(lon_e[0] + inset, lon_e[-1] - inset))
            out.append(_recording(rid, gen, sp.lower(), str(common), cls == "Aves", day, lat,
                                   lon, rng))  # fmt: skip
    for k, defect in enumerate(DEFECTS):
        _defect(out[(5 * k + 2) % len(out)], defect, t0)
    return out
