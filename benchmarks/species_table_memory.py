"""Peak memory of embedding species media (``bfm.embeddings.embed_media``) at N and 10N species.

Writes, for N and 10N synthetic species, a zip of media files (small PNG images of a
species-coloured texture, one-second WAV tones at a species' pitch) and a media table in
the occurrence contract's columns (parquet) with those files plus inline barcodes (658 bp at
a species' GC content) and one description each; every tenth species also has a truncated
PNG and an MP3 stub, so failures are counted. Each size is then embedded in its own
subprocess, which reads the table, streams the media one at a time from the zip through
``embed_media`` and reports its own peak RSS (``ru_maxrss``) twice: once its imports are done
and the table is read ("before media"), and at the end.
Target: peak RSS at 10N <= 1.2 x at N (the media are never all in memory; only the media
table and the (S, D) means grow with S). Run by hand from the repository root, in the venv:

    python benchmarks/species_table_memory.py [--n 20] [--images 5] [--audio 3] [--edna 5]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import wave
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

MIB = 1 << 20
WORDS = (
    "bird woodland song trill canopy insect meadow fern frond rhizome limestone shade "
    "wetland reed nest migrant beetle larva flower pollen bark moss lichen dune"
).split()


def png(rng: np.random.Generator, colour: np.ndarray, size: tuple[int, int]) -> bytes:
    noise = rng.normal(0.0, 40.0, (size[0] // 8, size[1] // 8, 1))
    texture = np.kron(noise, np.ones((8, 8, 1)))
    pixels = np.clip(colour + texture + rng.normal(0.0, 5.0, (*size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def wav(freq: float, rng: np.random.Generator, rate: int = 22050, seconds: float = 1.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def generate(folder: Path, n: int, per: dict[str, int], seed: int = 1) -> int:
    """Media of ``n`` species in ``folder``: ``media.zip`` and ``media.parquet``; rows."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "media.zip", "w", zipfile.ZIP_STORED) as zf:
        for s in range(n):
            key = 1000 + s
            colour, pitch = rng.uniform(0, 255, 3), rng.uniform(300, 6000)
            gc = rng.uniform(0.3, 0.6)

            def add(kind: str, uri: str = "", content: str = "", key: int = key) -> None:
                rows.append({"record_id": f"bench:{len(rows)}", "species_key": key, "kind": kind,
                             "uri": uri, "content": content, "licence": "CC0-1.0",
                             "attribution": "synthetic"})  # fmt: skip

            for i in range(per["image"]):
                zf.writestr(f"{key}/image{i}.png", png(rng, colour, (96, 128)))
                add("image", f"{key}/image{i}.png")
            for i in range(per["audio"]):
                zf.writestr(f"{key}/audio{i}.wav", wav(pitch * rng.uniform(0.95, 1.05), rng))
                add("audio", f"{key}/audio{i}.wav")
            for _ in range(per["edna"]):
                p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
                add("edna", content="".join(rng.choice(list("ACGT"), size=658, p=p)))
            add("text", content=" ".join(rng.choice(WORDS, size=40)))
            if s % 10 == 0:  # deliberately bad media: counted, never fatal
                zf.writestr(f"{key}/broken.png", png(rng, colour, (96, 128))[:100])
                add("image", f"{key}/broken.png")
                zf.writestr(f"{key}/call.mp3", b"ID3\x04\x00" + bytes(500))
                add("audio", f"{key}/call.mp3")
    pd.DataFrame(rows).to_parquet(folder / "media.parquet")
    return len(rows)


def child(folder: Path) -> None:
    """Embed one size's media; print a JSON line with the peak RSS and the counts."""
    import PIL.Image  # noqa: F401  (the embedders import these lazily: count them as imports)
    import sklearn.feature_extraction.text  # noqa: F401

    import bfm.embeddings_audio  # noqa: F401
    from bfm.contracts.occurrence import conform_media
    from bfm.embeddings import embed_media

    media = conform_media(pd.read_parquet(folder / "media.parquet"), str(folder))
    keys = sorted(int(k) for k in media["species_key"].dropna().unique())
    import_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    with zipfile.ZipFile(folder / "media.zip") as zf:
        out = embed_media(media, zf.read, keys)
    wall = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"species": len(keys), "media": len(media), "wall_s": wall,
                      "import_mib": import_kib / 1024, "peak_mib": peak_kib / 1024,
                      "failures": dict(out.failures)}))  # fmt: skip


def run(folder: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(folder)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # stderr: log
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="species of the small size (default 20)")
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--audio", type=int, default=3)
    p.add_argument("--edna", type=int, default=5)
    p.add_argument("--workdir", type=Path, help="where the media go (default: tmp)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bfm-species-memory-"))
    per = {"image": args.images, "audio": args.audio, "edna": args.edna}
    results = []
    for n in (args.n, 10 * args.n):
        folder = workdir / f"n{n}"
        rows = generate(folder, n, per)
        size = (folder / "media.zip").stat().st_size / MIB
        print(f"wrote {rows} media of {n} species ({size:.1f} MiB of files) in {folder}")
        results.append(run(folder))
    print(f"\n{'species':>8} {'media':>7} {'wall s':>7} {'RSS before media':>17} "
          f"{'peak RSS':>9}  failures")  # fmt: skip
    for r in results:
        print(f"{r['species']:>8} {r['media']:>7} {r['wall_s']:>7.1f} {r['import_mib']:>13.0f} MiB"
              f" {r['peak_mib']:>5.0f} MiB  {r['failures']}")  # fmt: skip
    ratio = float(results[1]["peak_mib"]) / float(results[0]["peak_mib"])
    verdict = "ok" if ratio <= 1.2 else "over the 1.2x target"
    print(f"peak RSS {10 * args.n} / {args.n} species: {ratio:.3f}x ({verdict})")
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
