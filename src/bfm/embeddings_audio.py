"""Audio embeddings: decoding a recording's bytes, MFCCs and spectral statistics (numpy/scipy).

**Decoding** (:func:`decode_audio`), by the file's first bytes: ``RIFF....WAVE`` with
``scipy.io.wavfile`` (PCM 8/16/24/32/64-bit integers, 32/64-bit floats; a file that ends
before its header's data size is corrupt; other codecs inside a WAV, e.g. mu-law or ADPCM,
are unsupported); ``fLaC`` and ``OggS`` with ``soundfile`` (libsndfile) when it is installed,
unsupported otherwise; ``ID3`` or an MPEG frame sync (``0xFFE``: MP3, ADTS AAC) and ``ftyp`` at
byte 4 (MP4/M4A) are unsupported: decoding them needs libraries this project does not carry.
Anything else is not audio (:class:`~bfm.embeddings.CorruptMedia`), as is a file with no
samples or a sample rate <= 0. Samples become floats in [-1, 1] (unsigned 8-bit: ``(x - 128)
/ 128``; signed n-bit: ``x / 2**(n-1)``; floats as they are), channels are averaged, and only
the first ``MAX_SECONDS`` = 60 s are kept (a species' call, and a bounded cost per file).

**Features** (:func:`audio_features`), from the mono samples:

1. resampled to ``SR`` = 22 050 Hz with ``scipy.signal.resample_poly`` (the ratio ``SR / rate``
   as a fraction with denominator <= 4000: exact for 8..384 kHz in the usual steps);
2. zero-padded to one frame when shorter; frames of ``N_FFT`` = 2048 samples every ``HOP`` =
   512 (no centring; a last partial frame is dropped), each times a periodic Hann window,
   power spectrum ``P = |rfft|^2`` at bin frequencies ``f_k = k * SR / N_FFT``;
3. mel energies: ``N_MELS`` = 40 triangular filters (peak 1) with centres equally spaced on
   the HTK mel scale ``2595 log10(1 + f / 700)`` between 0 Hz and ``SR / 2``;
4. log-mel relative to the recording's loudest band: ``D = 10 log10(max(E, 1e-10))``, ``L =
   clip(D - max(D), -80, 0) / 80 + 1`` in [0, 1] (gain-invariant: a recorder's level says
   nothing of the species; a silent file gives all ones);
5. MFCCs: the first ``N_MFCC`` = 20 coefficients of the orthonormal DCT-II of ``L`` per frame.

Embedding (``AUDIO_DIM`` = 44): ``[0:20]`` MFCC means over frames, ``[20:40]`` their standard
deviations (ddof 0), then the means over frames of the spectral centroid ``sum f P / sum P``,
bandwidth ``sqrt(sum (f - centroid)^2 P / sum P)`` and 85 % rolloff (the lowest ``f_k`` whose
cumulative power reaches 85 % of the frame's), each divided by ``SR / 2`` (0 in a silent
frame), and of the zero-crossing rate (the fraction of adjacent sample pairs of the unwindowed
frame whose sign bits differ).

librosa was not used: it pulls numba and llvmlite (tens of MB, pinned to narrow numpy
ranges) for what is here a filterbank, a log and a DCT.
"""

from __future__ import annotations

import io
import warnings
from fractions import Fraction

import numpy as np
import scipy.fft
import scipy.io.wavfile
import scipy.signal

from bfm.embeddings import AUDIO_DIM, N_MFCC, CorruptMedia, UnsupportedMedia

SR, N_FFT, HOP, N_MELS = 22050, 2048, 512, 40
MAX_SECONDS = 60
TOP_DB, ROLLOFF = 80.0, 0.85
BLOCK_FRAMES = 256  # frames transformed at a time: a 60 s file never needs all its spectra


def embed_audio(data: bytes) -> np.ndarray:
    """``(AUDIO_DIM,)`` float32 embedding of one recording's bytes."""
    samples, rate = decode_audio(data)
    return audio_features(samples, rate)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float64 samples in [-1, 1] (at most MAX_SECONDS) and their sample rate."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        array, rate = _read_wav(data)
    elif head[:4] in (b"fLaC", b"OggS"):
        array, rate = _read_soundfile(data, "FLAC" if head[:4] == b"fLaC" else "Ogg")
    elif head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        raise UnsupportedMedia("MP3/AAC audio: no decoder in this environment")
    elif head[4:8] == b"ftyp":
        raise UnsupportedMedia("MP4/M4A audio: no decoder in this environment")
    else:
        raise CorruptMedia(f"not audio: the file starts with {head[:8]!r}")
    if rate <= 0:
        raise CorruptMedia(f"audio with sample rate {rate}")
    array = array[: int(rate) * MAX_SECONDS]
    if array.size == 0:
        raise CorruptMedia("audio holds no samples")
    return _to_float(array).reshape(len(array), -1).mean(axis=1), int(rate)


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.io.wavfile.WavFileWarning)
        try:
            rate, array = scipy.io.wavfile.read(io.BytesIO(data))
        except MemoryError:
            raise
        except ValueError as err:
            if "Unknown wave file format" in str(err):
                raise UnsupportedMedia(f"WAV codec not decodable: {err}") from err
            raise CorruptMedia(f"WAV does not decode: {err}") from err
        except Exception as err:  # damaged headers: struct.error, UnboundLocalError, ...
            raise CorruptMedia(f"WAV does not decode: {type(err).__name__}: {err}") from err
    for w in caught:
        if "EOF prematurely" in str(w.message):
            raise CorruptMedia(f"WAV is truncated: {w.message}")
    return np.asarray(array), int(rate)


def _read_soundfile(data: bytes, name: str) -> tuple[np.ndarray, int]:
    try:
        import soundfile  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as err:
        raise UnsupportedMedia(f"{name} audio: soundfile is not installed") from err
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            frames = min(int(f.frames), int(f.samplerate) * MAX_SECONDS)
            array = f.read(frames=frames, dtype="float64", always_2d=True)
            return np.asarray(array), int(f.samplerate)
    except MemoryError:
        raise
    except Exception as err:  # libsndfile's errors (soundfile.LibsndfileError, RuntimeError)
        raise CorruptMedia(f"{name} does not decode: {type(err).__name__}: {err}") from err


def _to_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return (array.astype(np.float64) - 128.0) / 128.0
    if np.issubdtype(array.dtype, np.signedinteger):
        return array.astype(np.float64) / float(2 ** (8 * array.dtype.itemsize - 1))
    if np.issubdtype(array.dtype, np.floating):
        return np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    raise UnsupportedMedia(f"audio samples of dtype {array.dtype}")


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """``samples`` at ``rate`` resampled to SR (polyphase, scipy's default Kaiser filter)."""
    if rate == SR:
        return samples
    ratio = Fraction(SR, int(rate)).limit_denominator(4000)
    return np.asarray(scipy.signal.resample_poly(samples, ratio.numerator, ratio.denominator))


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank() -> tuple[np.ndarray, np.ndarray]:
    """``(N_MELS, N_FFT // 2 + 1)`` triangular filters and their ``(N_MELS,)`` centres (Hz)."""
    edges = mel_to_hz(np.linspace(0.0, float(hz_to_mel(np.array(SR / 2))), N_MELS + 2))
    f = np.arange(N_FFT // 2 + 1) * SR / N_FFT
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.maximum(0.0, np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
    return weights, edges[1:-1]


def frames_of(samples: np.ndarray) -> np.ndarray:
    """``(n_frames, N_FFT)`` view of the frames (zero-padded to one frame when shorter)."""
    if len(samples) < N_FFT:
        samples = np.pad(samples, (0, N_FFT - len(samples)))
    return np.lib.stride_tricks.sliding_window_view(samples, N_FFT)[::HOP]


def spectra(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mel energies ``(n_frames, N_MELS)`` and per-frame ``(n_frames, 4)`` centroid,
    bandwidth, rolloff (each / (SR / 2)) and zero-crossing rate of samples at SR."""
    fb, _ = mel_filterbank()
    window = scipy.signal.get_window("hann", N_FFT)  # periodic
    f = np.arange(N_FFT // 2 + 1) * SR / N_FFT
    frames = frames_of(samples)
    mel, shape = [], []
    for start in range(0, len(frames), BLOCK_FRAMES):
        block = frames[start : start + BLOCK_FRAMES]
        power = np.abs(np.fft.rfft(block * window, axis=1)) ** 2
        mel.append(power @ fb.T)
        total = power.sum(axis=1)
        safe = np.where(total > 0, total, 1.0)
        centroid = (power * f).sum(axis=1) / safe
        bandwidth = np.sqrt((power * (f - centroid[:, None]) ** 2).sum(axis=1) / safe)
        reached = np.cumsum(power, axis=1) >= ROLLOFF * total[:, None]
        rolloff = f[np.argmax(reached, axis=1)]
        silent = total <= 0
        spectral = np.stack([centroid, bandwidth, rolloff], axis=1) / (SR / 2)
        spectral[silent] = 0.0
        signs = np.signbit(block)
        zcr = (signs[:, 1:] != signs[:, :-1]).mean(axis=1)
        shape.append(np.column_stack([spectral, zcr]))
    return np.concatenate(mel), np.concatenate(shape)


def mfcc(mel: np.ndarray) -> np.ndarray:
    """``(n_frames, N_MFCC)`` MFCCs of mel energies, log relative to the loudest band."""
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    relative = np.clip(db - db.max(), -TOP_DB, 0.0) / TOP_DB + 1.0
    return np.asarray(scipy.fft.dct(relative, type=2, norm="ortho", axis=1))[:, :N_MFCC]


def audio_features(samples: np.ndarray, rate: int) -> np.ndarray:
    """``(AUDIO_DIM,)`` float32 embedding of mono samples at ``rate``."""
    mel, shape = spectra(resample(np.asarray(samples, dtype=np.float64), rate))
    coeffs = mfcc(mel)
    out = np.concatenate([coeffs.mean(axis=0), coeffs.std(axis=0), shape.mean(axis=0)])
    assert out.shape == (AUDIO_DIM,), out.shape
    return out.astype(np.float32)
