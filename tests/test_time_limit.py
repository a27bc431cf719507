"""bfm train stops before a SLURM job's time limit without a signal (bfm.training.engine):
squeue's time left parsed, asked again after its refresh, and the stop raised once the
margin is reached; a limit shorter than the margin falls back to signals. squeue here is a
script on PATH that prints what the test writes; the real one is in tests/test_slurm_limits."""

from __future__ import annotations

import logging
import signal
import stat
from pathlib import Path

import pytest
import torch

from bfm.training.config import STOP_BEFORE_LIMIT_S, TrainConfig
from bfm.training.engine import StopSignal, TimeLimit, parse_time_left


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0:45", 45), ("12:05", 725), ("2:00:00", 7200), ("1-02:03:04", 93784), ("3-0:0:1", 259201),
     (" 9:59\n", 599), ("UNLIMITED", None), ("NOT_SET", None), ("INVALID", None), ("", None),
     ("1:2:3:4", None), ("x-1:00", None)],
)  # fmt: skip
def test_squeue_time_left_is_parsed(text: str, seconds: float | None) -> None:
    assert parse_time_left(text) == seconds


@pytest.fixture
def squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake squeue printing the contents of ``left.txt`` for job 4242 (and logging calls)."""
    left = tmp_path / "left.txt"
    script = tmp_path / "bin" / "squeue"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/calls.txt\n'
        f'[ "$*" = "-h -j 4242 -o %L" ] && cat {left} || exit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    return left


@pytest.fixture
def handlers():
    """StopSignal installs handlers: give the test process its own back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_time_left_is_asked_again_after_the_refresh(squeue: Path, tmp_path: Path) -> None:
    squeue.write_text("10:00\n")
    limit = TimeLimit.of_environment()
    assert limit is not None
    assert limit.seconds_left(now=1000.0) == 600
    squeue.write_text("1:00:00\n")  # extended by an administrator
    assert limit.seconds_left(now=1100.0) == 500  # within the refresh: the known deadline
    assert limit.seconds_left(now=1300.0) == 3600
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 2


def test_no_slurm_or_no_answer_means_no_limit(squeue: Path, monkeypatch) -> None:
    squeue.write_text("UNLIMITED\n")
    limit = TimeLimit.of_environment()
    assert limit is not None and limit.seconds_left() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # squeue fails for another job
    assert TimeLimit("7").seconds_left() is None
    monkeypatch.setenv("PATH", "/nonexistent")  # no squeue at all
    assert TimeLimit("4242").seconds_left() is None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert TimeLimit.of_environment() is None


def test_the_stop_comes_once_the_margin_is_reached(squeue: Path, handlers, caplog) -> None:
    squeue.write_text("15:00\n")
    limit = TimeLimit("4242", refresh_s=0.0)
    stop = StopSignal(600, limit)
    cpu = torch.device("cpu")
    assert stop.agreed(1, cpu) == 0
    squeue.write_text("10:01\n")
    assert stop.agreed(1, cpu) == 0
    squeue.write_text("9:59\n")
    with caplog.at_level(logging.WARNING, logger="bfm.train"):
        assert stop.agreed(1, cpu) == signal.SIGUSR1
    assert "s left before the SLURM job's time limit" in caplog.text
    squeue.write_text("30:00\n")
    assert stop.agreed(1, cpu) == signal.SIGUSR1  # once asked to stop, it stays stopped


def test_a_limit_within_the_margin_leaves_the_signals(squeue: Path, handlers, caplog) -> None:
    squeue.write_text("5:00\n")  # a 5-minute job, a 10-minute margin: it would never train
    with caplog.at_level(logging.WARNING, logger="bfm.train"):
        stop = StopSignal(600, TimeLimit("4242", refresh_s=0.0))
    assert "stopping on SIGUSR1/SIGTERM only" in caplog.text
    squeue.write_text("0:10\n")
    assert stop.agreed(1, torch.device("cpu")) == 0
    signal.raise_signal(signal.SIGUSR1)
    assert stop.agreed(1, torch.device("cpu")) == signal.SIGUSR1


def test_a_zero_margin_never_asks(squeue: Path, tmp_path: Path, handlers) -> None:
    squeue.write_text("0:10\n")
    stop = StopSignal(0, TimeLimit("4242", refresh_s=0.0))
    assert stop.agreed(1, torch.device("cpu")) == 0
    assert not (tmp_path / "calls.txt").exists()


def test_the_margin_is_the_flag_then_the_config_then_the_profile_s() -> None:
    cfg = TrainConfig(batches=("a.h5",), stats="s.json", deepspeed="d.json", out="o")
    assert cfg.stop_margin(None) == STOP_BEFORE_LIMIT_S == 600
    assert cfg.stop_margin({"stop_before_limit": 120}) == 120
    flagged = TrainConfig(batches=("a.h5",), stats="s.json", deepspeed="d.json", out="o",
                          stop_before_limit=90)  # fmt: skip
    assert flagged.stop_margin({"stop_before_limit": 120}) == 90
    assert "stop_before_limit" not in flagged.to_dict()  # not one of the run's settings
    with pytest.raises(ValueError, match="--stop-before-limit must be >= 0"):
        TrainConfig(batches=("a.h5",), stats="s.json", deepspeed="d.json", out="o",
                    stop_before_limit=-1)  # fmt: skip
