"""Media embeddings: fixed lengths, hand-worked answers, invariants, failures counted."""

from __future__ import annotations

import io
import sys
import types
import wave
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io.wavfile
from PIL import Image

from bfm import embeddings as E
from bfm import embeddings_audio as A
from bfm.contracts.occurrence import MEDIA_KINDS, conform_media

RNG = np.random.default_rng(7)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 96)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (*size, 3)).copy()


def stripes(vertical: bool, period: int = 8, size: int = 96) -> np.ndarray:
    ramp = (np.arange(size) % period < period // 2).astype(np.uint8) * 200 + 20
    grey = np.tile(ramp, (size, 1)) if vertical else np.tile(ramp[:, None], (1, size))
    return np.repeat(grey[..., None], 3, axis=2)


def wav(samples: np.ndarray, rate: int = 22050, width: int = 2, channels: int = 1) -> bytes:
    """Integer PCM WAV through the stdlib writer (``samples`` in [-1, 1])."""
    x = np.asarray(samples, dtype=np.float64)
    if width == 1:
        ints = np.round(x * 127 + 128).astype(np.uint8)
    else:
        ints = np.round(x * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(ints.tobytes())
    return buf.getvalue()


def tone(freq: float, rate: int = 22050, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def sequence(n: int, gc: float, rng: np.random.Generator) -> str:
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return "".join(rng.choice(list("ACGT"), size=n, p=p))


BIRD = (
    "A small passerine bird of deciduous woodland; the male sings a loud descending trill "
    "from high perches in spring, feeding on insects and caterpillars in the canopy."
)
FERN = (
    "A perennial fern of shaded limestone crevices with pinnate fronds, spreading by a "
    "creeping rhizome; sori lie along the veins beneath the leaflets."
)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))


# --- every kind --------------------------------------------------------------------------

SAMPLES = {
    "image": png(RNG.integers(0, 256, (50, 70, 3))),
    "audio": wav(tone(880) + 0.01 * RNG.standard_normal(22050)),
    "edna": sequence(658, 0.4, RNG),
    "text": BIRD,
}


@pytest.mark.parametrize("kind", E.KINDS)
def test_fixed_length_float32_finite_deterministic(kind: str) -> None:
    v = E.EMBEDDERS[kind](SAMPLES[kind])
    assert v.shape == (E.DIMS[kind],) and v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_array_equal(v, E.EMBEDDERS[kind](SAMPLES[kind]))


def test_dims_are_the_documented_ones() -> None:
    assert tuple(E.DIMS) == E.KINDS == MEDIA_KINDS
    assert E.DIMS == {"image": 47, "audio": 44, "edna": 256, "text": 256}


# --- image -------------------------------------------------------------------------------


def test_solid_red_image_hand_worked() -> None:
    v = E.image_embedding(png(solid((255, 0, 0))))
    np.testing.assert_allclose(v[0:6], [1, 0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(v[6:14], np.eye(8)[0])  # hue 0, saturated
    np.testing.assert_allclose(v[14:18], np.eye(4)[3])  # saturation 1
    np.testing.assert_allclose(v[18:22], np.eye(4)[3])  # value 1
    np.testing.assert_allclose(v[22:32], 0)  # no gradient anywhere
    np.testing.assert_allclose(v[32:42], np.eye(10)[8])  # all neighbours >= centre: 8 ones
    np.testing.assert_allclose(v[42:47], [0, 1, 1, 1, 0], atol=1e-6)  # one grey level


def test_grey_image_has_no_hue() -> None:
    v = E.image_embedding(png(solid((128, 128, 128))))
    np.testing.assert_allclose(v[6:14], 0)
    np.testing.assert_allclose(v[14:18], np.eye(4)[0])


def test_gradient_orientation_follows_stripes() -> None:
    across = E.image_embedding(png(stripes(vertical=True)))  # intensity changes along x
    down = E.image_embedding(png(stripes(vertical=False)))  # along y
    assert across[22] > 0.8 and across[22] == across[22:31].sum()  # atan2(0, gx) = 0: bin 0
    assert down[26] == pytest.approx(down[27]) and down[26] + down[27] > 0.8  # pi/2: 4.5 bins
    assert across[31] > 0.1 and down[31] > 0.1
    np.testing.assert_allclose(across[42:47], down[42:47], atol=0.02)  # same texture, turned


def test_flat_images_different_vs_near_identical() -> None:
    red = solid((200, 30, 30), (96, 96))
    checker = np.where((np.add.outer(np.arange(96), np.arange(96)) // 6) % 2 == 0, 240, 20)
    blue = np.stack([checker // 8, checker // 4, checker], axis=2)
    noisy = red.astype(np.int64) + RNG.integers(-2, 3, red.shape)
    base = E.image_embedding(png(red))
    far = distance(base, E.image_embedding(png(blue)))
    near = distance(base, E.image_embedding(png(np.clip(noisy, 0, 255))))
    assert far > 1.0 and near < 0.1 * far


def test_photo_reencoded_or_resized_is_near_identical() -> None:
    rng = np.random.default_rng(5)
    coarse = [rng.integers(0, 256, (12, 16, 3)).astype(np.uint8) for _ in range(2)]
    photos = [np.asarray(Image.fromarray(c).resize((320, 240), Image.Resampling.BICUBIC))
              for c in coarse]  # fmt: skip
    base = E.image_embedding(png(photos[0]))
    far = distance(base, E.image_embedding(png(photos[1])))
    jpeg = io.BytesIO()
    Image.fromarray(photos[0]).save(jpeg, "JPEG", quality=90)
    smaller = np.asarray(Image.fromarray(photos[0]).resize((300, 225)))
    assert distance(base, E.image_embedding(jpeg.getvalue())) < 0.2 * far
    assert distance(base, E.image_embedding(png(smaller))) < 0.2 * far


def test_image_size_does_not_change_colour_statistics() -> None:
    small, large = solid((10, 200, 90), (40, 30)), solid((10, 200, 90), (800, 600))
    np.testing.assert_allclose(E.image_embedding(png(small)), E.image_embedding(png(large)),
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("data", [b"", b"not an image at all", png(solid((1, 2, 3)))[:60],
                                  b"\x89PNG\r\n\x1a\n" + bytes(200)])  # fmt: skip
def test_corrupt_image_raises(data: bytes) -> None:
    with pytest.raises(E.CorruptMedia, match="image does not decode") as err:
        E.image_embedding(data)
    assert err.value.reason == "corrupt_media" and not isinstance(err.value, E.UnsupportedMedia)


def test_decompression_bomb_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 96 is over twice the limit
    with pytest.raises(E.TooLargeMedia) as err:
        E.image_embedding(png(solid((9, 9, 9))))
    assert err.value.reason == "too_large_media"


# --- audio -------------------------------------------------------------------------------


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_pure_tone_lands_in_nearest_mel_band(freq: float) -> None:
    mel, shape = A.spectra(tone(freq, A.SR))
    _, centres = A.mel_filterbank()
    assert np.argmax(mel.mean(axis=0)) == np.argmin(np.abs(centres - freq))
    assert shape[:, 0].mean() == pytest.approx(freq / (A.SR / 2), rel=0.02)  # centroid
    assert shape[:, 3].mean() == pytest.approx(2 * freq / A.SR, rel=0.02)  # 2 crossings/period


def test_tones_different_vs_near_identical() -> None:
    low, high = E.audio_embedding(wav(tone(500))), E.audio_embedding(wav(tone(2000)))
    base = E.audio_embedding(wav(tone(1000)))
    far = distance(low, high)
    assert far > 1.0
    assert distance(base, E.audio_embedding(wav(tone(1010)))) < 0.1 * far
    quieter = E.audio_embedding(wav(tone(1000, amp=0.2)))  # log-mel relative to the loudest
    assert distance(base, quieter) < 1e-3


def test_rate_width_and_channels_do_not_matter() -> None:
    base = E.audio_embedding(wav(tone(1000)))
    at_44k = E.audio_embedding(wav(tone(1000, rate=44100), rate=44100))
    stereo = np.repeat(tone(1000)[:, None], 2, axis=1).ravel()
    both = E.audio_embedding(wav(stereo, channels=2))
    assert distance(base, at_44k) < 1e-3
    np.testing.assert_array_equal(base, both)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_pcm_widths_decode_to_unit_floats(width: int) -> None:
    x = tone(440, seconds=0.1, amp=0.9)
    samples, rate = A.decode_audio(wav(x, width=width))
    assert rate == 22050 and samples.dtype == np.float64
    np.testing.assert_allclose(samples, x, atol=1.0 / 2 ** (8 * width - 2))


def test_only_the_first_minute_counts() -> None:
    long = np.concatenate([tone(1000, seconds=60.0), tone(3000, seconds=5.0)])
    first = E.audio_embedding(wav(tone(1000, seconds=60.0)))
    np.testing.assert_allclose(E.audio_embedding(wav(long)), first, atol=1e-6)


@pytest.mark.parametrize("data", [b"", b"plain text, not audio", wav(tone(440))[:30],
                                  wav(tone(440))[:2000], b"RIFF\x00\x00\x00\x00WAVE" + bytes(40),
                                  wav(np.zeros(0))])  # fmt: skip
def test_not_audio_raises_corrupt(data: bytes) -> None:
    with pytest.raises(E.CorruptMedia) as err:
        E.audio_embedding(data)
    assert err.value.reason == "corrupt_media" and not isinstance(err.value, E.UnsupportedMedia)


@pytest.mark.parametrize("data", [b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(100),
                                  b"\xff\xfb\x90\x64" + bytes(400),
                                  b"\x00\x00\x00\x20ftypM4A " + bytes(100)])  # fmt: skip
def test_mp3_and_m4a_are_unsupported(data: bytes) -> None:
    with pytest.raises(E.UnsupportedMedia) as err:
        E.audio_embedding(data)
    assert isinstance(err.value, E.CorruptMedia) and err.value.reason == "unsupported_media"


def test_wav_with_unknown_codec_is_unsupported() -> None:
    data = bytearray(wav(tone(440)))
    data[20:22] = (7).to_bytes(2, "little")  # format tag 7: mu-law
    with pytest.raises(E.UnsupportedMedia, match="codec"):
        E.audio_embedding(bytes(data))


def test_flac_without_soundfile_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    with pytest.raises(E.UnsupportedMedia, match="soundfile is not installed"):
        E.audio_embedding(b"fLaC" + bytes(100))


def test_flac_through_soundfile_equals_wav(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = tone(660, seconds=2.0)

    class FakeSoundFile:  # what soundfile.SoundFile gives for a decoded FLAC
        frames, samplerate = len(samples), 22050

        def __init__(self, file: io.BytesIO) -> None:
            assert file.read(4) == b"fLaC"

        def __enter__(self) -> FakeSoundFile:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self, frames: int, dtype: str, always_2d: bool) -> np.ndarray:
            return samples[:frames, None].astype(dtype)

    monkeypatch.setitem(sys.modules, "soundfile", types.SimpleNamespace(SoundFile=FakeSoundFile))
    buf = io.BytesIO()
    scipy.io.wavfile.write(buf, 22050, samples)  # float64 WAV: the same samples exactly
    np.testing.assert_array_equal(E.audio_embedding(b"fLaC" + bytes(10)),
                                  E.audio_embedding(buf.getvalue()))  # fmt: skip


# --- eDNA and text -----------------------------------------------------------------------


def test_kmers_hand_worked() -> None:
    v = E.edna_embedding("ACGTA", k=2)  # AC CG GT TA = 1, 6, 11, 12 in base 4
    np.testing.assert_allclose(np.flatnonzero(v), [1, 6, 11, 12])
    np.testing.assert_allclose(v[[1, 6, 11, 12]], 0.25)
    ambiguous = E.edna_embedding("ACNGT", k=2)  # CN, NG skipped
    np.testing.assert_allclose(ambiguous[[1, 11]], 0.5)
    np.testing.assert_array_equal(E.edna_embedding("ac-gu\nac"), E.edna_embedding("ACGTAC"))
    assert E.edna_embedding(SAMPLES["edna"]).sum() == pytest.approx(1.0)


def test_sequences_different_vs_near_identical() -> None:
    rng = np.random.default_rng(3)
    at_rich, gc_rich = sequence(658, 0.25, rng), sequence(658, 0.7, rng)
    snp = at_rich[:300] + ("A" if at_rich[300] != "A" else "C") + at_rich[301:]
    base = E.edna_embedding(at_rich)
    far = float(np.abs(base - E.edna_embedding(gc_rich)).sum())
    near = float(np.abs(base - E.edna_embedding(snp)).sum())
    assert far > 0.8 and near <= 8 / 655 + 1e-6  # one letter changes at most 4 k-mers


@pytest.mark.parametrize("text", ["", "NNNN", "ACG", "THE QUICK BROWN FOX", "ACGT1ACGT"])
def test_bad_sequence_raises(text: str) -> None:
    with pytest.raises(E.CorruptMedia):
        E.edna_embedding(text)


def test_texts_different_vs_near_identical() -> None:
    bird, fern = E.text_embedding(BIRD), E.text_embedding(FERN)
    assert float(np.linalg.norm(bird)) == pytest.approx(1.0, abs=1e-6)
    assert float(bird @ fern) < 0.3
    assert float(bird @ E.text_embedding(BIRD.upper() + " Common.")) > 0.9
    accents = E.text_embedding("Café au lait")
    np.testing.assert_array_equal(accents, E.text_embedding("cafe AU LAIT"))


def test_sublinear_term_frequency() -> None:
    once, many = E.text_embedding("woodland"), E.text_embedding("woodland " * 9)
    np.testing.assert_allclose(once, many, atol=1e-6)  # one word: the same direction
    weights = np.sort(np.abs(E.text_embedding("woodland " * 10 + "trill")))[::-1]
    assert np.count_nonzero(weights) == 2  # two words, two buckets
    assert weights[0] / weights[1] == pytest.approx(1 + np.log(10), rel=1e-5)  # not 10


@pytest.mark.parametrize("text", ["", "   ", "the and of it is"])
def test_text_without_words_raises(text: str) -> None:
    with pytest.raises(E.CorruptMedia, match="no word"):
        E.text_embedding(text)


# --- aggregation -------------------------------------------------------------------------


def test_accumulator_mean_equals_batch_mean() -> None:
    keys = [11, 22, 33, 44]
    acc = E.SpeciesMediaAccumulator(keys, {"image": 5, "text": 3})
    vectors = RNG.normal(size=(40, 5))
    owners = RNG.choice([11, 22, 33], size=40)
    for key, v in zip(owners, vectors, strict=True):
        acc.add(int(key), "image", v)
    acc.add(22, "text", np.ones(3))
    emb, present, counts = acc.result()
    for r, key in enumerate(keys):
        mine = vectors[owners == key]
        assert counts["image"][r] == len(mine) and present["image"][r] == (len(mine) > 0)
        expected = mine.mean(axis=0) if len(mine) else np.zeros(5)
        np.testing.assert_allclose(emb["image"][r], expected, rtol=1e-6, atol=1e-7)
    assert emb["image"].dtype == np.float32 and emb["image"].shape == (4, 5)
    np.testing.assert_array_equal(present["text"], [False, True, False, False])
    np.testing.assert_array_equal(emb["text"][[0, 2, 3]], 0)


def test_accumulator_rejects_what_it_cannot_place() -> None:
    acc = E.SpeciesMediaAccumulator([1, 2])
    with pytest.raises(ValueError, match="species key 3"):
        acc.add(3, "image", np.zeros(E.IMAGE_DIM))
    with pytest.raises(ValueError, match="kind 'video'"):
        acc.add(1, "video", np.zeros(3))
    with pytest.raises(ValueError, match="47 finite"):
        acc.add(1, "image", np.zeros(4))
    with pytest.raises(ValueError, match="repeat"):
        E.SpeciesMediaAccumulator([1, 1])


def media_table(rows: list[tuple[str, object, str, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["record_id", "species_key", "kind", "uri", "content"])
    frame["licence"], frame["attribution"] = "CC-BY-4.0", "test"
    return conform_media(frame, "test media")


def test_embed_media_counts_failures_and_averages(tmp_path: Path) -> None:
    files = {"a1.png": png(solid((250, 0, 0))), "a2.png": png(stripes(True)),
             "bad.jpg": b"\xff\xd8\xff\xe0 truncated", "a.wav": wav(tone(700)),
             "b.mp3": b"ID3\x03" + bytes(64), "b.wav": b"hello"}  # fmt: skip
    archive = tmp_path / "media.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    seq = sequence(300, 0.5, np.random.default_rng(1))
    table = media_table([
        ("x:1", 100, "image", "a1.png", ""), ("x:2", 100, "image", "a2.png", ""),
        ("x:3", 200, "image", "bad.jpg", ""), ("x:4", 100, "audio", "a.wav", ""),
        ("x:5", 200, "audio", "b.mp3", ""), ("x:6", 200, "audio", "b.wav", ""),
        ("x:7", 100, "edna", "", seq), ("x:8", 200, "edna", "", "ACGT?!"),
        ("x:9", 200, "text", "", BIRD), ("x:10", 100, "text", "", "the of"),
        ("x:11", None, "image", "a1.png", ""), ("x:12", 999, "text", "", FERN),
        ("x:13", 200, "image", "", ""),
    ])  # fmt: skip
    with zipfile.ZipFile(archive) as zf:
        out = E.embed_media(table, zf.read, [100, 200, 300])
    assert out.failures == Counter(corrupt_media=5, unsupported_media=1, not_a_study_species=2)
    np.testing.assert_array_equal(out.counts["image"], [2, 0, 0])
    np.testing.assert_array_equal(out.counts["text"], [0, 1, 0])
    expected = (E.image_embedding(files["a1.png"]) + E.image_embedding(files["a2.png"])) / 2
    np.testing.assert_allclose(out.embeddings["image"][0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out.embeddings["audio"][0], E.audio_embedding(files["a.wav"]))
    np.testing.assert_array_equal(out.embeddings["edna"][0], E.edna_embedding(seq))
    for kind in E.KINDS:  # species 300 has no media at all
        assert out.embeddings[kind].shape == (3, E.DIMS[kind])
        assert not out.present[kind][2] and not out.embeddings[kind][2].any()
    assert [bool(out.present[m][1]) for m in E.KINDS] == [False, False, False, True]


def test_embed_media_read_errors() -> None:
    table = media_table([("x:1", 100, "image", "gone.png", "")])

    def damaged(uri: str) -> bytes:  # a reader that finds the zip member damaged
        raise E.CorruptMedia(f"{uri}: bad CRC")

    assert E.embed_media(table, damaged, [100]).failures == Counter(corrupt_media=1)

    def missing(uri: str) -> bytes:
        raise FileNotFoundError(uri)

    with pytest.raises(FileNotFoundError) as err:
        E.embed_media(table, missing, [100])
    assert "x:1" in "".join(err.value.__notes__)


def test_embed_media_rejects_a_table_off_contract() -> None:
    table = media_table([("x:1", 100, "text", "", BIRD)])
    table.loc[0, "kind"] = "video"
    with pytest.raises(ValueError, match="'video'"):
        E.embed_media(table, bytes, [100])
    with pytest.raises(ValueError, match="lacks column"):
        E.embed_media(table.drop(columns="content"), bytes, [100])
