"""Image and audio embeddings from a pretrained encoder the user brings as a local file.

The config option ``species_table.encoders.<kind>`` (kind ``image`` or ``audio``) names a
weights file, or a mapping ``{path: ..., <option>: ...}``; :func:`pretrained_embedders`
turns it into callables that replace :data:`bfm.embeddings.EMBEDDERS` entries of those kinds.
eDNA and text keep their descriptors. Nothing is downloaded: a missing file is an error.

**Weights format**: TorchScript (``torch.jit.save`` of a scripted or traced module), so
that any exported architecture loads without its model code. It is loaded on the CPU in eval
mode and run under ``torch.inference_mode()``, one medium at a time (memory is one medium's
tensors and the model's); the number of torch threads is left as the process has it.

**Image input** ``(1, 3, S, S)`` float32: decoded with Pillow (first frame, RGB, alpha
discarded; JPEGs drafted at no less than ``2 S`` px), resized to ``S x S`` (option ``size``,
default 224; bilinear, antialiased, aspect not kept), scaled to [0, 1] and normalised per
channel ``(x - mean) / std`` (options ``mean``, ``std``; default ImageNet's ``(0.485, 0.456,
0.406)``, ``(0.229, 0.224, 0.225)``). Pillow's decompression-bomb guard and the failures are
those of :mod:`bfm.embeddings` (:class:`~bfm.embeddings.TooLargeMedia`,
:class:`~bfm.embeddings.CorruptMedia`).

**Audio input** ``(1, n)`` float32: :func:`bfm.embeddings_audio.decode_audio` (mono in
[-1, 1], the first ``MAX_SECONDS`` = 60 s; its failures), resampled to ``rate`` Hz (option,
default 16 000; ``scipy.signal.resample_poly`` with the ratio as a fraction of denominator
<= 4000), cut to ``rate * MAX_SECONDS`` samples and zero-padded at the end to at least
``min_seconds`` (option, default 1.0 s: the probe's length, so that no recording is shorter
than an input the model is known to take).

**Output**: the module's output must be one tensor ``(1, D)`` or ``(1, D, ...)``; trailing
axes are mean-pooled, giving ``(D,)`` float32. ``D`` (:attr:`PretrainedEncoder.dim`) is found
at load time by one forward pass on a zero input (``(1, 3, S, S)``, or ``min_seconds`` of
silence): an output of another shape, or not finite, is a :class:`ValueError` naming the file.
A medium whose output is not finite raises :class:`~bfm.embeddings.CorruptMedia` (counted
by ``embed_media``); one whose feature axis is not ``D`` long (a ``(1, T, D)`` layout whose
``T`` follows the recording's length) is a :class:`ValueError`: re-export the model with the
features on axis 1. :meth:`PretrainedEncoder.describe` gives the kind, path, SHA-256 of the
file, ``D`` and the options, for the species table's provenance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.signal

from bfm.embeddings import CorruptMedia, open_rgb
from bfm.embeddings_audio import MAX_SECONDS, decode_audio

if TYPE_CHECKING:
    import torch

OPTION = "species_table.encoders"
DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {"size": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "audio": {"rate": 16000, "min_seconds": 1.0},
}
ENCODER_KINDS = tuple(DEFAULTS)


class PretrainedEncoder:
    """``encoder(data: bytes) -> (dim,) float32``: one image or recording through the model.

    Built by :func:`load_encoder`; ``kind``, ``path``, ``sha256``, ``dim`` and ``options``
    say what it is (:meth:`describe`).
    """

    def __init__(self, kind: str, path: Path, module: torch.jit.ScriptModule,
                 options: Mapping[str, Any], sha256: str) -> None:  # fmt: skip
        self.kind, self.path, self.sha256 = kind, path, sha256
        self.options = dict(options)
        self._module = module
        self.dim = self._probe()

    def __call__(self, data: bytes) -> np.ndarray:
        prepare = image_input if self.kind == "image" else audio_input
        out = self._forward(prepare(data, **self.options))
        if out.shape != (self.dim,):
            raise ValueError(f"{self.kind} encoder {self.path} gave {out.shape[0]} features for "
                             f"a medium, {self.dim} for the probe: its output's axis 1 must "
                             "be the features, the same for every input")  # fmt: skip
        if not np.isfinite(out).all():
            raise CorruptMedia(f"{self.kind} encoder {self.path} gave a non-finite embedding")
        return out

    def describe(self) -> dict[str, Any]:
        """Kind, path, SHA-256, dim and options (JSON-ready) for the table's provenance."""
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256,
                "dim": self.dim, "options": options}  # fmt: skip

    def __repr__(self) -> str:
        return f"PretrainedEncoder({self.kind!r}, {str(self.path)!r}, dim={self.dim})"

    def _forward(self, inputs: np.ndarray) -> np.ndarray:
        """The module's output on ``inputs``, trailing axes mean-pooled: ``(D,)`` float32."""
        import torch

        try:
            with torch.inference_mode():
                out = self._module(torch.from_numpy(inputs))
        except RuntimeError as err:
            err.add_note(f"running the {self.kind} encoder {self.path} on input "
                         f"{tuple(inputs.shape)}")  # fmt: skip
            raise
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{self.kind} encoder {self.path} gave {shape} for one input: "
                             "expected one tensor (1, D) or (1, D, ...)")  # fmt: skip
        array = out.detach().to(device="cpu", dtype=torch.float64).numpy()
        return array.reshape(array.shape[0], array.shape[1], -1).mean(axis=2)[0].astype(
            np.float32)  # fmt: skip

    def _probe(self) -> int:
        if self.kind == "image":
            size = self.options["size"]
            blank = np.zeros((1, 3, size, size), dtype=np.float32)
        else:
            n = _min_samples(self.options["rate"], self.options["min_seconds"])
            blank = np.zeros((1, n), dtype=np.float32)
        out = self._forward(blank)
        if out.size == 0 or not np.isfinite(out).all():
            raise ValueError(f"{self.kind} encoder {self.path} gives no finite features on a "
                             f"blank input {blank.shape}: {out[:5]}")  # fmt: skip
        return int(out.shape[0])


def load_encoder(kind: str, path: str | Path, **options: Any) -> PretrainedEncoder:
    """The TorchScript encoder at ``path`` for media of ``kind`` (``image`` or ``audio``),
    with the kind's options (:data:`DEFAULTS`) overridden by ``options``."""
    if kind not in DEFAULTS:
        raise ValueError(f"media kind {kind!r} takes no pretrained encoder: only "
                         f"{list(ENCODER_KINDS)} do (eDNA and text keep their "
                         "descriptors)")  # fmt: skip
    where = f"{OPTION}.{kind}"
    settings = _options(kind, options, where)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no pretrained {kind} encoder at {path} (the weights "
                                "are a local TorchScript file; none is downloaded)")  # fmt: skip
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError for a non-TorchScript archive
        raise ValueError(f"{where}: {path} is not a TorchScript file (torch.jit.save): "
                         f"{str(err).splitlines()[0][:200]}") from err  # fmt: skip
    module.eval()
    return PretrainedEncoder(kind, path, module, settings, sha256_of(path))


def pretrained_embedders(encoders: Mapping[str, str | Path | Mapping[str, Any] | None]
                         ) -> dict[str, PretrainedEncoder]:  # fmt: skip
    """Encoders from the config value ``species_table.encoders``: kind -> path, or kind ->
    ``{path: ..., <option>: ...}``; a kind set to ``None`` keeps its descriptor."""
    out = {}
    for kind, value in encoders.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            options = dict(value)
            if not options.get("path"):
                raise ValueError(f"{OPTION}.{kind}.path: a mapping needs the weights' path")
            path = options.pop("path")
        else:
            path, options = value, {}
        out[kind] = load_encoder(kind, path, **options)
    return out


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _options(kind: str, given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The kind's defaults overridden by ``given``, each checked; errors name the key."""
    unknown = sorted(set(given) - set(DEFAULTS[kind]))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown option for the {kind} encoder "
                         f"(known: path, {', '.join(DEFAULTS[kind])})")  # fmt: skip
    out = {**DEFAULTS[kind], **given}
    for key in ("size", "rate"):
        if key in out and not (isinstance(out[key], int) and out[key] >= 1):
            raise ValueError(f"{where}.{key}: expected a positive integer, got {out[key]!r}")
    for key in ("mean", "std"):
        if key in out:
            values = out[key]
            ok = isinstance(values, list | tuple) and len(values) == 3
            values = tuple(float(v) for v in values) if ok else values
            if not ok or not np.isfinite(values).all() or (key == "std" and min(values) <= 0):
                raise ValueError(f"{where}.{key}: expected 3 finite numbers (RGB)"
                                 f"{', each > 0' if key == 'std' else ''}, got "
                                 f"{out[key]!r}")  # fmt: skip
            out[key] = values
    if "min_seconds" in out:
        value = out["min_seconds"]
        if not isinstance(value, int | float) or not 0 < value <= MAX_SECONDS:
            raise ValueError(f"{where}.min_seconds: expected a number in (0, "
                             f"{MAX_SECONDS}], got {value!r}")  # fmt: skip
        out["min_seconds"] = float(value)
    return out


# --- inputs (pure: bytes in, arrays out) -------------------------------------------------


def image_input(data: bytes, size: int, mean: tuple[float, ...],
                std: tuple[float, ...]) -> np.ndarray:  # fmt: skip
    """``(1, 3, size, size)`` float32 normalised RGB of one image file's bytes."""
    from PIL import Image

    frame = open_rgb(data, size).resize((size, size), Image.Resampling.BILINEAR)
    rgb = np.asarray(frame, dtype=np.float32) / np.float32(255.0)
    norm = (rgb - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(norm.transpose(2, 0, 1)[None])


def audio_input(data: bytes, rate: int, min_seconds: float) -> np.ndarray:
    """``(1, n)`` float32 mono samples at ``rate`` of one recording's bytes."""
    samples, source_rate = decode_audio(data)
    samples = resample_to(samples, source_rate, rate)[: rate * MAX_SECONDS]
    n = _min_samples(rate, min_seconds)
    if len(samples) < n:
        samples = np.pad(samples, (0, n - len(samples)))
    return samples.astype(np.float32)[None]


def resample_to(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``samples`` at ``rate`` resampled to ``target`` Hz (polyphase, scipy's Kaiser filter)."""
    if rate == target:
        return np.asarray(samples, dtype=np.float64)
    ratio = Fraction(int(target), int(rate)).limit_denominator(4000)
    return np.asarray(scipy.signal.resample_poly(samples, ratio.numerator, ratio.denominator))


def _min_samples(rate: int, min_seconds: float) -> int:
    return max(1, round(rate * min_seconds))
