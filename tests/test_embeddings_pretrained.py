"""Pretrained encoders from local TorchScript files: the model's own output on inputs
preprocessed here independently, the probe's dim, provenance, and the clear errors."""

from __future__ import annotations

import hashlib
import io
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.signal
import torch
from PIL import Image

from bfm import embeddings as E
from bfm import embeddings_pretrained as P
from bfm.contracts.occurrence import conform_media

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


class ImageNet(torch.nn.Module):
    """Conv features (1, 6, H, W): the encoder mean-pools the trailing axes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class AudioNet(torch.nn.Module):
    """Frames of 400 samples every 160 -> (1, 5, T) features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 5, 400, stride=160)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x.unsqueeze(1)))


class Length(torch.nn.Module):
    """(1, 2): the input's number of samples and its mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.tensor(float(x.shape[1])), x.mean()]).reshape(1, 2)


class Flat(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten()  # 1-D: no batch axis


class Nan(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((1, 4), float("nan"))


class InfOnBright(torch.nn.Module):
    """Finite on the blank probe, infinite on a bright image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(1, 2)
        if bool(x.max() > 0.5):
            out = out + float("inf")
        return out


class PerFrame(torch.nn.Module):
    """(1, T): one number per 1000 samples, a layout whose axis 1 follows the length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : x.shape[1] // 1000 * 1000].reshape(1, -1, 1000).mean(dim=2)


def save(module: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(3)
    module.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def picture(seed: int, shape: tuple[int, int] = (90, 130)) -> bytes:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(*shape, 3)), axis=0), axis=1)
    span = smooth.max() - smooth.min()
    return png((smooth - smooth.min()) / span * 255)


def wav(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    """16-bit PCM WAV through the stdlib writer (``samples`` in [-1, 1], frames x channels)."""
    ints = np.round(np.asarray(samples) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(ints.tobytes())
    return buf.getvalue()


def chirp(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(seed).normal(scale=0.05, size=t.size)
    return 0.5 * np.sin(2 * np.pi * (300 + 900 * t) * t) + noise


def reference(path: Path, inputs: np.ndarray) -> np.ndarray:
    """The saved module's own output, mean-pooled over its trailing axes, by hand."""
    with torch.no_grad():
        out = torch.jit.load(str(path))(torch.from_numpy(inputs.astype(np.float32))).numpy()
    return out.reshape(1, out.shape[1], -1).mean(axis=2)[0]


def test_image_embedding_is_the_models_output(tmp_path: Path) -> None:
    path = save(ImageNet(), tmp_path / "image.pt")
    enc = P.load_encoder("image", path, size=32)
    data = picture(1)
    with Image.open(io.BytesIO(data)) as img:
        rgb = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)) / 255.0
    inputs = ((rgb - MEAN) / STD).transpose(2, 0, 1)[None]
    out = enc(data)
    assert enc.dim == 6 and out.shape == (6,) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(path, inputs), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(enc(data), out)  # deterministic
    np.testing.assert_array_equal(P.load_encoder("image", path, size=32)(data), out)
    assert not np.allclose(enc(picture(2)), out)  # the picture matters


def test_image_options_and_describe(tmp_path: Path) -> None:
    path = save(ImageNet(), tmp_path / "image.pt")
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.5, 1.0]
    enc = P.load_encoder("image", path, size=20, mean=mean, std=std)
    data = picture(4, (40, 24))  # portrait: squashed to 20 x 20
    with Image.open(io.BytesIO(data)) as img:
        rgb = np.asarray(img.convert("RGB").resize((20, 20), Image.Resampling.BILINEAR)) / 255.0
    inputs = ((rgb - np.array(mean)) / np.array(std)).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(enc(data), reference(path, inputs), rtol=1e-5, atol=1e-6)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert enc.sha256 == sha and enc.kind == "image" and enc.path == path
    assert enc.describe() == {"kind": "image", "path": str(path), "sha256": sha, "dim": 6,
                              "options": {"size": 20, "mean": mean, "std": std}}  # fmt: skip
    assert P.load_encoder("image", path).describe()["options"]["size"] == 224  # the default


def test_audio_embedding_is_the_models_output(tmp_path: Path) -> None:
    path = save(AudioNet(), tmp_path / "audio.pt")
    enc = P.load_encoder("audio", path)
    samples = chirp(16000, 1.5)
    data = wav(samples, 16000)
    out = enc(data)
    assert enc.dim == 5 and out.shape == (5,) and out.dtype == np.float32
    pcm = np.round(samples * 32767) / 32768  # what the file holds, read back
    np.testing.assert_allclose(out, reference(path, pcm[None]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(enc(data), out)
    # Stereo: channels averaged; 22 050 Hz resampled to 16 kHz by the 320/441 polyphase ratio.
    left, right = chirp(22050, 1.2, seed=1), chirp(22050, 1.2, seed=2)
    stereo = wav(np.stack([left, right], axis=1), 22050, channels=2)
    mono = (np.round(left * 32767) + np.round(right * 32767)) / 2 / 32768
    expected = reference(path, scipy.signal.resample_poly(mono, 320, 441)[None])
    np.testing.assert_allclose(enc(stereo), expected, rtol=1e-5, atol=1e-6)


def test_audio_length_rules(tmp_path: Path) -> None:
    enc = P.load_encoder("audio", save(Length(), tmp_path / "length.pt"), rate=8000,
                         min_seconds=0.5)  # fmt: skip
    assert enc.dim == 2
    short = enc(wav(np.full(1000, 0.25), 8000))  # 1000 samples padded with zeros to 4000
    np.testing.assert_allclose(short, [4000, 0.25 * 1000 / 4000], rtol=1e-4)
    assert enc(wav(chirp(16000, 2.0), 16000))[0] == 16000  # 2 s at 8 kHz
    long = enc(wav(np.zeros(8000 * 61), 8000))  # cut at MAX_SECONDS
    assert long[0] == 8000 * 60


def test_corrupt_media_raise_corrupt_media(tmp_path: Path) -> None:
    image = P.load_encoder("image", save(ImageNet(), tmp_path / "i.pt"), size=16)
    audio = P.load_encoder("audio", save(AudioNet(), tmp_path / "a.pt"))
    for data in (b"", b"not an image", picture(1)[:60]):
        with pytest.raises(E.CorruptMedia, match="image does not decode"):
            image(data)
    with pytest.raises(E.CorruptMedia, match="not audio"):
        audio(b"hello")
    with pytest.raises(E.UnsupportedMedia):
        audio(b"ID3\x03" + bytes(64))
    bright = P.load_encoder("image", save(InfOnBright(), tmp_path / "inf.pt"), size=8)
    assert bright.dim == 2  # finite on the blank probe
    with pytest.raises(E.CorruptMedia, match="non-finite"):
        bright(png(np.full((10, 10, 3), 255)))


def test_load_errors_are_clear(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=r"species_table\.encoders\.image.*nowhere\.pt"):
        P.load_encoder("image", missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    state = tmp_path / "state.pt"
    torch.save(ImageNet().state_dict(), state)  # weights without the TorchScript program
    for path in (junk, state):
        with pytest.raises(ValueError, match=f"{path.name} is not a TorchScript"):
            P.load_encoder("image", path)
    with pytest.raises(ValueError, match=r"flat\.pt gave \(768,\)"):
        P.load_encoder("image", save(Flat(), tmp_path / "flat.pt"), size=16)
    with pytest.raises(ValueError, match=r"nan\.pt gives no finite"):
        P.load_encoder("audio", save(Nan(), tmp_path / "nan.pt"))
    for kind in ("edna", "text", "video"):
        with pytest.raises(ValueError, match="only \\['image', 'audio'\\]"):
            P.load_encoder(kind, junk)
    per_frame = P.load_encoder("audio", save(PerFrame(), tmp_path / "frames.pt"))
    assert per_frame.dim == 16  # 1 s at 16 kHz
    with pytest.raises(ValueError, match=r"32 features for a medium, 16 for the probe"):
        per_frame(wav(chirp(16000, 2.0), 16000))


def test_config_value_to_embedders(tmp_path: Path) -> None:
    image, audio = save(ImageNet(), tmp_path / "i.pt"), save(AudioNet(), tmp_path / "a.pt")
    out = P.pretrained_embedders({"image": {"path": str(image), "size": 16},
                                  "audio": str(audio), "text": None})  # fmt: skip
    assert sorted(out) == ["audio", "image"]
    assert out["image"].options["size"] == 16 and out["audio"].options["rate"] == 16000
    assert {k: e.dim for k, e in out.items()} == {"image": 6, "audio": 5}
    bad = {
        r"species_table\.encoders\.image\.sise: unknown option": {"path": str(image), "sise": 3},
        r"species_table\.encoders\.image\.path": {"size": 16},
        r"species_table\.encoders\.image\.size: expected a positive": {"path": image, "size": 0},
        r"species_table\.encoders\.image\.std: .*each > 0": {"path": image, "std": [1, 0, 1]},
        r"species_table\.encoders\.image\.mean: expected 3": {"path": image, "mean": [0.5]},
    }
    for message, value in bad.items():
        with pytest.raises(ValueError, match=message):
            P.pretrained_embedders({"image": value})
    with pytest.raises(ValueError, match=r"encoders\.audio\.size: unknown option"):
        P.pretrained_embedders({"audio": {"path": audio, "size": 16}})
    with pytest.raises(ValueError, match=r"encoders\.audio\.min_seconds"):
        P.pretrained_embedders({"audio": {"path": audio, "min_seconds": 0}})
    with pytest.raises(ValueError, match="eDNA and text keep their descriptors"):
        P.pretrained_embedders({"text": str(image)})


def test_plugs_into_embed_media(tmp_path: Path) -> None:
    encoders = P.pretrained_embedders({"image": {"path": save(ImageNet(), tmp_path / "i.pt"),
                                                 "size": 24},
                                       "audio": save(AudioNet(), tmp_path / "a.pt")})  # fmt: skip
    files = {"a.png": picture(1), "b.png": picture(2), "bad.png": b"\x89PNG broken",
             "a.wav": wav(chirp(16000, 1.0), 16000), "b.wav": b"hello"}  # fmt: skip
    rows = [("x:1", 100, "image", "a.png", ""), ("x:2", 100, "image", "b.png", ""),
            ("x:3", 200, "image", "bad.png", ""), ("x:4", 200, "audio", "a.wav", ""),
            ("x:5", 100, "audio", "b.wav", ""), ("x:6", 100, "text", "", "a bird")]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["record_id", "species_key", "kind", "uri", "content"])
    frame["licence"], frame["attribution"] = "CC-BY-4.0", "test"
    out = E.embed_media(conform_media(frame, "test media"), files.__getitem__, [100, 200],
                        encoders)  # fmt: skip
    assert out.failures == Counter(corrupt_media=2)
    assert out.embeddings["image"].shape == (2, 6) and out.embeddings["audio"].shape == (2, 5)
    assert out.embeddings["text"].shape == (2, E.TEXT_DIM)  # descriptors kept
    expected = (encoders["image"](files["a.png"]) + encoders["image"](files["b.png"])) / 2
    np.testing.assert_allclose(out.embeddings["image"][0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out.embeddings["audio"][1], encoders["audio"](files["a.wav"]))
    np.testing.assert_array_equal(out.counts["image"], [2, 0])
    np.testing.assert_array_equal(out.counts["audio"], [0, 1])
