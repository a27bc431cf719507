"""Fixed-length embeddings of species media, computed locally from the bytes (no model weights).

The species table (``bfm.contracts.species_table``) gives each species one vector per media
kind. Here each medium of the occurrence contract's media table (``bfm.contracts.occurrence``:
images and recordings as files, barcodes and descriptions inline in ``content``) becomes one
float32 vector of its kind's fixed length (:data:`DIMS`), and a species' vector is the mean
over its media of that kind (:class:`SpeciesMediaAccumulator`). Every number is defined below
so that it can be reproduced without this code.

**Image** (:func:`image_embedding`, :data:`IMAGE_DIM` = 47). Decoded with Pillow (first frame;
converted to RGB, alpha discarded; JPEGs drafted at no less than 256 px), then resized
(bilinear, antialiased) so that the longer side is 128 px, the shorter at least 8 px. With
RGB in [0, 1], Pillow's HSV (each channel 0..255, scaled to [0, 1]) and grey ``L`` (ITU-R 601
luma, 0..255), in this order:

- ``[0:6]`` mean and standard deviation of R, G, B (``r_mean, g_mean, b_mean, r_std, ...``);
- ``[6:14]`` hue histogram over 8 bins centred on hues ``0, 1/8, ..., 7/8`` (bin 0: red), each
  pixel's weight split linearly between the two nearest centres (circularly, so a red that
  wanders across hue 0 stays in bin 0); weighted by saturation and divided by the number of
  pixels (the bins sum to the mean saturation: a grey image has no hue, a near-grey one's
  unstable hues weigh almost nothing);
- ``[14:18]`` saturation and ``[18:22]`` value histograms, 4 equal bins, normalised to sum 1;
- ``[22:31]`` gradient-orientation histogram of the grey image (in [0, 1]) over the whole
  frame: central differences ``gx = (g[y, x+1] - g[y, x-1]) / 2``, ``gy`` likewise along rows
  (downward) at interior pixels, orientation ``atan2(gy, gx) mod pi`` in 9 bins centred on
  ``0, pi/9, ..., 8 pi/9`` (split linearly between the two nearest, circularly, as the hue),
  weighted by the magnitude ``hypot(gx, gy)``, divided by ``sum(magnitude) + 0.02 *
  n_pixels`` (the bins sum to ``m / (m + 0.02)`` at a mean magnitude ``m``: towards 1 for
  strong texture, towards 0 for a flat image and its noise);
- ``[31]`` the mean gradient magnitude;
- ``[32:42]`` rotation-invariant uniform local binary patterns (LBP riu2, 8 neighbours at
  radius 1 on the 0..255 grey image, bit set where neighbour >= centre - 4, so that noise of a
  few grey levels in a flat region reads as flat): a pattern with at most 2 circular 0/1
  transitions is labelled by its number of set bits (0..8), any other 9; the histogram of
  labels over interior pixels, normalised to sum 1;
- ``[42:47]`` grey-level co-occurrence statistics: grey quantised to 8 levels (``L * 8 //
  256``), one symmetric normalised matrix ``P`` per offset (0, 1), (1, 1), (1, 0), (1, -1)
  (row, column) at distance 1; contrast ``sum P (i-j)^2 / 49``, homogeneity ``sum P / (1 +
  (i-j)^2)``, energy ``sum P^2``, correlation ``sum (i-mu)(j-mu) P / var`` (1 when ``var`` is
  0) and entropy ``-sum P ln P / ln 64``, each averaged over the four offsets.

scikit-image is not installed, and these few statistics take a few lines of numpy each.

**Audio** (:func:`audio_embedding`, :data:`AUDIO_DIM` = 44): mean and standard deviation over
frames of 20 MFCCs of the recording's first 60 s at 22 050 Hz, then the means of spectral
centroid, bandwidth, 85 % rolloff and zero-crossing rate. Decoding and the exact definitions:
``bfm.embeddings_audio``. WAV decodes with scipy, FLAC and Ogg with ``soundfile`` when it is
installed; MP3, MP4/M4A (and FLAC/Ogg without ``soundfile``) raise :class:`UnsupportedMedia`.

**eDNA** (:func:`edna_embedding`, :data:`EDNA_DIM` = 4**4 = 256): relative frequencies (sum
1) of the overlapping k-mers (k = 4) over A, C, G, T, indexed in base 4 with A=0, C=1, G=2,
T=3 and the first letter most significant (``AAAA, AAAC, ..., TTTT``). Letters are upper-cased,
U read as T, whitespace and alignment gaps (``-``, ``.``) removed; a k-mer holding any other
IUPAC code (N, R, Y, ...) is skipped. Strand-specific, not reverse-complement canonical:
barcode libraries (BOLD's COI-5P, ITS, rbcL, matK) store each marker in its reading
direction, and folding a k-mer onto its reverse complement would discard that signal. A letter
outside the IUPAC nucleotide codes, or no countable k-mer, raises :class:`CorruptMedia`.

**Text** (:func:`text_embedding`, :data:`TEXT_DIM` = 256): scikit-learn's
``HashingVectorizer(n_features=256, alternate_sign=True, norm=None, lowercase=True,
strip_accents="unicode", stop_words="english")`` (tokens of 2+ word characters, signed
MurmurHash3 buckets), sublinear tf ``sign(x) * (1 + ln|x|)`` on every non-zero bucket, then
l2-normalised. No IDF: an IDF fitted over the table would change every species' vector when
a species is added (the table is meant to take new species without refitting anything), and
with 256 buckets nearly every long description touches every bucket, so the IDF would be
almost flat anyway; the stop words do the down-weighting of function words IDF would do. A
text with no word left raises :class:`CorruptMedia`.

**Failures**: a medium that does not decode raises :class:`CorruptMedia` (``reason``
``corrupt_media``); one in a format this module cannot decode, :class:`UnsupportedMedia`
(``unsupported_media``), and an image over Pillow's decompression-bomb limit
:class:`TooLargeMedia` (``too_large_media``), both subclasses of ``CorruptMedia``.
:func:`embed_media` counts them by ``reason``; nothing is dropped uncounted.
"""

from __future__ import annotations

import io
import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from bfm.contracts.occurrence import MEDIA_KINDS, Reason

log = logging.getLogger(__name__)

KINDS = MEDIA_KINDS  # = species_table.MEDIA
FILE_KINDS = ("image", "audio")  # read from ``uri``; the others from ``content``

IMAGE_SIDE, HUE_BINS, SV_BINS, ORIENT_BINS, GLCM_LEVELS = 128, 8, 4, 9, 8
LBP_LABELS, LBP_TOLERANCE, GRADIENT_FLOOR = 10, 4.0, 0.02
IMAGE_DIM = 6 + HUE_BINS + 2 * SV_BINS + ORIENT_BINS + 1 + LBP_LABELS + 5
N_MFCC = 20
AUDIO_DIM = 2 * N_MFCC + 4
EDNA_K = 4
EDNA_DIM = 4**EDNA_K
TEXT_DIM = 256
DIMS: dict[str, int] = {"image": IMAGE_DIM, "audio": AUDIO_DIM, "edna": EDNA_DIM,
                        "text": TEXT_DIM}  # fmt: skip
NOT_A_STUDY_SPECIES = Reason.NOT_A_STUDY_SPECIES.value


class CorruptMedia(ValueError):
    """The medium's bytes (or content) do not decode into what its kind needs."""

    reason = Reason.CORRUPT_MEDIA.value


class UnsupportedMedia(CorruptMedia):
    """A well-formed medium in a format this module cannot decode (MP3, M4A, ...)."""

    reason = "unsupported_media"  # not (yet) a Reason of the occurrence contract


class TooLargeMedia(CorruptMedia):
    """An image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` * 2)."""

    reason = Reason.TOO_LARGE_MEDIA.value


# --- image -------------------------------------------------------------------------------


def image_embedding(data: bytes) -> np.ndarray:
    """``(IMAGE_DIM,)`` float32 colour and texture statistics of one image file's bytes."""
    rgb, hsv, grey = _decode_image(data)
    colour = np.concatenate([rgb.mean(axis=(0, 1)), rgb.std(axis=(0, 1))])
    hue = _circular_histogram(hsv[..., 0], HUE_BINS, hsv[..., 1], total=hsv[..., 1].size)
    sat, val = _histogram(hsv[..., 1], SV_BINS), _histogram(hsv[..., 2], SV_BINS)
    out = np.concatenate([colour, hue, sat, val, _orientations(grey / 255.0), _lbp(grey),
                          _glcm(grey)])  # fmt: skip
    assert out.shape == (IMAGE_DIM,), out.shape
    return out.astype(np.float32)


def open_rgb(data: bytes, side: int) -> Any:
    """The first frame of an image file as an RGB ``PIL.Image`` (a JPEG decoded at no less
    than ``2 side`` pixels); TooLargeMedia for a decompression bomb, CorruptMedia otherwise."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (2 * side, 2 * side))  # JPEG: decode at reduced size
            return img.convert("RGB")
    except Image.DecompressionBombError as err:
        raise TooLargeMedia(f"image too large to decode: {err}") from err
    except MemoryError:
        raise
    except Exception as err:  # Pillow's plugins raise OSError, SyntaxError, ValueError, ...
        raise CorruptMedia(f"image does not decode: {type(err).__name__}: {err}") from err


def _decode_image(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB in [0, 1], HSV in [0, 1] and grey 0..255 (float64) of the resized first frame."""
    from PIL import Image

    frame = open_rgb(data, IMAGE_SIDE)
    w, h = frame.size
    scale = IMAGE_SIDE / max(w, h)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    frame = frame.resize(size, Image.Resampling.BILINEAR)
    rgb = np.asarray(frame, dtype=np.float64) / 255.0
    hsv = np.asarray(frame.convert("HSV"), dtype=np.float64) / 255.0
    grey = np.asarray(frame.convert("L"), dtype=np.float64)
    return rgb, hsv, grey


def _histogram(values: np.ndarray, bins: int, weights: np.ndarray | None = None,
               total: float | None = None) -> np.ndarray:  # fmt: skip
    """Histogram of ``values`` in [0, 1] over ``bins`` equal bins, divided by ``total``
    (default: its own sum, so that it sums to 1)."""
    index = np.minimum((values * bins).astype(np.int64), bins - 1).ravel()
    w = None if weights is None else weights.ravel()
    counts = np.bincount(index, weights=w, minlength=bins).astype(np.float64)
    total = counts.sum() if total is None else total
    return counts / total if total > 0 else counts


def _circular_histogram(values: np.ndarray, bins: int, weights: np.ndarray,
                        total: float) -> np.ndarray:  # fmt: skip
    """``values`` in [0, 1] (circular) over bins centred on ``k / bins``, each weight split
    linearly between the two nearest centres, divided by ``total``."""
    pos = np.mod(values.ravel() * bins, bins)
    lo = np.floor(pos).astype(np.int64)
    frac, w = pos - lo, weights.ravel()
    counts = np.bincount(lo % bins, weights=w * (1 - frac), minlength=bins)
    counts += np.bincount((lo + 1) % bins, weights=w * frac, minlength=bins)
    return counts / total if total > 0 else counts


def _orientations(grey: np.ndarray) -> np.ndarray:
    """Magnitude-weighted orientation histogram (ORIENT_BINS) and the mean magnitude."""
    gx = (grey[1:-1, 2:] - grey[1:-1, :-2]) / 2.0
    gy = (grey[2:, 1:-1] - grey[:-2, 1:-1]) / 2.0
    magnitude = np.hypot(gx, gy)
    angle = np.arctan2(gy, gx) / np.pi  # [-1, 1]: orientation mod pi is this mod 1
    floor = GRADIENT_FLOOR * magnitude.size
    hist = _circular_histogram(angle, ORIENT_BINS, magnitude, total=magnitude.sum() + floor)
    return np.append(hist, magnitude.mean())


# Neighbours of a pixel in circular order, (row, column) offsets.
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _lbp(grey: np.ndarray) -> np.ndarray:
    """Histogram of LBP riu2 labels (0..9) over interior pixels, normalised to sum 1."""
    h, w = grey.shape
    centre = grey[1:-1, 1:-1]
    bits = np.stack([grey[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] >= centre - LBP_TOLERANCE
                     for dy, dx in _RING]).astype(np.int64)  # fmt: skip
    ones = bits.sum(axis=0)
    transitions = np.abs(bits - np.roll(bits, -1, axis=0)).sum(axis=0)
    labels = np.where(transitions <= 2, ones, LBP_LABELS - 1)
    counts = np.bincount(labels.ravel(), minlength=LBP_LABELS).astype(np.float64)
    return counts / counts.sum()


def _glcm(grey: np.ndarray) -> np.ndarray:
    """Contrast, homogeneity, energy, correlation, entropy of the co-occurrence matrices."""
    n = GLCM_LEVELS
    q = (grey.astype(np.int64) * n) // 256
    h, w = q.shape
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    stats = []
    for dy, dx in ((0, 1), (1, 1), (1, 0), (1, -1)):
        x0, x1 = max(0, -dx), w - max(0, dx)  # columns where both x and x + dx lie
        a, b = q[: h - dy, x0:x1], q[dy:, x0 + dx : x1 + dx]
        p = np.bincount((a * n + b).ravel(), minlength=n * n).reshape(n, n).astype(np.float64)
        p = p + p.T
        p /= p.sum()
        mu = (i * p).sum()
        var = ((i - mu) ** 2 * p).sum()
        corr = ((i - mu) * (j - mu) * p).sum() / var if var > 0 else 1.0
        nz = p[p > 0]
        stats.append([(p * (i - j) ** 2).sum() / (n - 1) ** 2, (p / (1.0 + (i - j) ** 2)).sum(),
                      (p**2).sum(), corr, -(nz * np.log(nz)).sum() / np.log(n * n)])  # fmt: skip
    return np.asarray(stats).mean(axis=0)


# --- audio, eDNA, text -------------------------------------------------------------------


def audio_embedding(data: bytes) -> np.ndarray:
    """``(AUDIO_DIM,)`` float32 MFCC and spectral statistics of one recording's bytes."""
    from bfm.embeddings_audio import embed_audio  # it imports this module's errors

    return embed_audio(data)


_CODES = np.full(256, -1, dtype=np.int64)  # byte -> 0..3 for A, C, G, T/U; -1 otherwise
_CODES[np.frombuffer(b"ACGTU", dtype=np.uint8)] = [0, 1, 2, 3, 3]
_IUPAC = frozenset("ACGTURYSWKMBDHVN")


def edna_embedding(sequence: str, k: int = EDNA_K) -> np.ndarray:
    """``(4**k,)`` float32 relative frequencies of the sequence's k-mers over ACGT."""
    if not 1 <= k <= 8:
        raise ValueError(f"k-mer length {k=} is not in 1..8")
    text = "".join(str(sequence).split()).upper().replace("-", "").replace(".", "")
    unknown = sorted(set(text) - _IUPAC)
    if unknown:
        raise CorruptMedia(f"not a nucleotide sequence: letter(s) {unknown[:5]}")
    codes = _CODES[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    n = len(codes) - k + 1
    if n <= 0:
        raise CorruptMedia(f"sequence of {len(codes)} letters holds no {k}-mer")
    bad = np.concatenate([[0], np.cumsum(codes < 0)])
    whole = (bad[k:] - bad[:-k]) == 0  # no ambiguity code within the k-mer
    index = np.zeros(n, dtype=np.int64)
    for j in range(k):
        index = index * 4 + np.maximum(codes[j : j + n], 0)
    counts = np.bincount(index[whole], minlength=4**k).astype(np.float64)
    if counts.sum() == 0:
        raise CorruptMedia(f"sequence of {len(codes)} letters holds no unambiguous {k}-mer")
    return (counts / counts.sum()).astype(np.float32)


@cache
def _vectorizer() -> Any:
    from sklearn.feature_extraction.text import (
        HashingVectorizer,
    )

    return HashingVectorizer(
        n_features=TEXT_DIM,
        alternate_sign=True,
        norm=None,
        lowercase=True,
        strip_accents="unicode",
        stop_words="english",
    )


def text_embedding(text: str) -> np.ndarray:
    """``(TEXT_DIM,)`` float32 l2-normalised hashed sublinear term frequencies of a text."""
    x = _vectorizer().transform([str(text)]).toarray()[0].astype(np.float64)
    nz = x != 0
    x[nz] = np.sign(x[nz]) * (1.0 + np.log(np.abs(x[nz])))
    norm = float(np.sqrt((x**2).sum()))
    if norm == 0:
        raise CorruptMedia("description holds no word (after stop words)")
    return (x / norm).astype(np.float32)


# --- species aggregation -----------------------------------------------------------------


class SpeciesMediaAccumulator:
    """Running mean (and count) of media vectors per (species, kind), one vector at a time.

    Holds ``(S, D)`` float64 sums per kind, never the media: memory is that of the result.
    """

    def __init__(self, species_keys: Sequence[int], dims: Mapping[str, int] = DIMS) -> None:
        self.keys = np.asarray([int(k) for k in species_keys], dtype=np.int64)
        self.index = {int(k): r for r, k in enumerate(self.keys)}
        if len(self.index) != len(self.keys):
            raise ValueError(f"species keys repeat: {len(self.keys)} keys, {len(self.index)} "
                             "distinct")  # fmt: skip
        self.dims = dict(dims)
        s = len(self.keys)
        self._mean = {m: np.zeros((s, d), dtype=np.float64) for m, d in self.dims.items()}
        self._count = {m: np.zeros(s, dtype=np.int64) for m in self.dims}

    def add(self, species_key: int, kind: str, vector: np.ndarray) -> None:
        """Fold one medium's vector into its species' mean of ``kind``."""
        if kind not in self.dims:
            raise ValueError(f"media kind {kind!r} is not one of {list(self.dims)}")
        row = self.index.get(int(species_key))
        if row is None:
            raise ValueError(f"species key {species_key} is not one of the table's species")
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (self.dims[kind],) or not np.isfinite(v).all():
            raise ValueError(f"{kind} vector of shape {v.shape} is not {self.dims[kind]} "
                             "finite values")  # fmt: skip
        self._count[kind][row] += 1
        self._mean[kind][row] += (v - self._mean[kind][row]) / self._count[kind][row]

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(embeddings (S, D) float32, present (S,) bool, counts (S,) int64)`` per kind,
        in the order of ``species_keys``; zeros and False where a species has no medium."""
        embeddings = {m: v.astype(np.float32) for m, v in self._mean.items()}
        present = {m: c > 0 for m, c in self._count.items()}
        return embeddings, present, {m: c.copy() for m, c in self._count.items()}


class MediaEmbeddings(NamedTuple):
    """What :func:`embed_media` gives: per kind the species' vectors, presence and counts,
    and the media that gave none, counted by reason."""

    embeddings: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    failures: Counter[str]


EMBEDDERS: dict[str, Callable[[Any], np.ndarray]] = {
    "image": image_embedding, "audio": audio_embedding, "edna": edna_embedding,
    "text": text_embedding,
}  # fmt: skip


def embed_media(media: pd.DataFrame, read_bytes: Callable[[str], bytes],
                species_keys: Sequence[int],
                encoders: Mapping[str, Any] | None = None) -> MediaEmbeddings:  # fmt: skip
    """Embed every row of a media table (occurrence contract) and average per species.

    Images and recordings are read with ``read_bytes(uri)`` (a path, a zip member: the
    caller's choice) one at a time; barcodes and descriptions come from ``content``. A
    medium that does not embed (:class:`CorruptMedia` and its subclasses, also when
    ``read_bytes`` raises one) and a row whose species is not in ``species_keys`` are counted
    in ``failures`` by reason; other errors of ``read_bytes`` (a missing file: the raw folder
    is not what the media table says) propagate, with a note naming the row.

    ``encoders`` replace the descriptors of some kinds (``bfm.embeddings_pretrained``: each
    a callable with a ``dim``).
    """
    missing = [c for c in ("record_id", "species_key", "kind", "uri", "content")
               if c not in media.columns]  # fmt: skip
    if missing:
        raise ValueError(f"media table lacks column(s) {missing}")
    unknown = sorted(set(media["kind"].astype(str).unique()) - set(KINDS))
    if unknown:
        raise ValueError(f"media kind(s) {unknown} are not one of {list(KINDS)}")
    embedders = {**EMBEDDERS, **(encoders or {})}
    dims = {**DIMS, **{k: int(e.dim) for k, e in (encoders or {}).items()}}
    acc = SpeciesMediaAccumulator(species_keys, dims)
    failures: Counter[str] = Counter()
    # Row by row from the columns' own iterators: no copy of the table's strings is made.
    rows = zip(*(media[c] for c in ("record_id", "species_key", "kind", "uri", "content")),
               strict=True)  # fmt: skip
    bar = tqdm(rows, total=len(media), desc="embed media", unit="medium", file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip
    for rid, key, kind, uri, content in bar:
        if pd.isna(key) or int(key) not in acc.index:
            failures[NOT_A_STUDY_SPECIES] += 1
            continue
        uri, content = (v if isinstance(v, str) else "" for v in (uri, content))
        try:
            vector = _embed_row(embedders[kind], kind, uri, content, read_bytes)
        except CorruptMedia as err:
            level = logging.DEBUG if failures[err.reason] else logging.WARNING
            log.log(level, "media %s (%s): %s: %s", rid, kind, err.reason, err)
            failures[err.reason] += 1
            continue
        except Exception as err:
            err.add_note(f"reading media {rid} ({kind}) from {uri!r}")
            raise
        acc.add(int(key), kind, vector)
    return MediaEmbeddings(*acc.result(), failures)


def _embed_row(embed: Callable[[Any], np.ndarray], kind: str, uri: str, content: str,
               read_bytes: Callable[[str], bytes]) -> np.ndarray:  # fmt: skip
    if kind in FILE_KINDS:
        if not uri:
            raise CorruptMedia(f"{kind} has no uri")
        return embed(read_bytes(uri))
    return embed(content)
