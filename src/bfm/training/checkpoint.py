"""A training run's files: checkpoints (save, resume, fall back), meta.json, metrics.jsonl,
the run-directory lock, and loading a trained model without DeepSpeed.

Run directory (``results/models/<run>/``)::

    meta.json                     run metadata of the finished run (rank 0, atomic)
    metrics.jsonl                 one JSON line per optimizer step (rank 0), when finished
    checkpoints/meta.json         the same, rewritten at every checkpoint (live state)
    checkpoints/metrics.jsonl     the live metrics log (survives a failed workflow job)
    checkpoints/train.lock        held by the running ``bfm train`` (one run per directory)
    checkpoints/latest            tag of the newest checkpoint (written by DeepSpeed)
    checkpoints/step_000040/
        mp_rank_00_model_states.pt    {"module": model state dict, "step": 40, ...}
        *_optim_states.pt             optimizer state (one shard per rank under ZeRO)

Under ZeRO-3 every rank writes its own ``zero_pp_rank_<r>_mp_rank_00_model_states.pt`` and the
weights are partitioned across the optimizer shards: such runs resume (``resume``), and
``load_model`` refuses them (consolidate with DeepSpeed's ``zero_to_fp32.py``, which the
checkpoint directory holds). With ZeRO stages 0-2 the ``module`` state dict is complete
(weights in the training dtype, bf16 when bf16 is on; the normalisation buffers stay float64),
so ``load_model`` needs only torch. A checkpoint that cannot be read is skipped, with a
warning naming it, for the newest readable one. meta.json (schema ``bfm-run/1``) and
metrics.jsonl are validated when read.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bfm.fileio import write_text_atomic
from bfm.model import BFM, ModelConfig
from bfm.training.engine import all_ok

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
META = "meta.json"
METRICS = "metrics.jsonl"
LOCK = "train.lock"
MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = "zero_pp_rank_0_" + MODEL_STATES  # rank 0's file under ZeRO-3
META_SCHEMA = "bfm-run/1"
META_KEYS = (
    "schema",
    "created_at",
    "bfm_version",
    "git_commit",
    "config_hash",
    "config",
    "model",
    "world_size",
    "steps_done",
    "steps_target",
    "complete",
    "checkpoint",
)
METRIC_KEYS = ("step", "loss", "lr")
_TAG = re.compile(r"^step_(\d+)$")
# What reading a damaged checkpoint raises (torch.load, pickle, DeepSpeed's loaders).
UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError)


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def step_of(tag: str) -> int:
    m = _TAG.match(tag)
    if not m:
        raise ValueError(f"checkpoint tag {tag!r} is not of the form step_NNNNNN")
    return int(m.group(1))


def state_dir(run_dir: str | Path) -> Path:
    """Where the live run state is kept: checkpoints, their meta.json and the metrics log.

    The workflow declares only ``<run>/meta.json`` and ``<run>/metrics.jsonl`` as outputs, and
    Snakemake deletes the outputs of a failed or interrupted job; the state lives beside them
    so that a re-run resumes from the last checkpoint with its full metrics history.
    """
    return Path(run_dir) / CHECKPOINTS


# --- checkpoints ------------------------------------------------------------------------------
def candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories, newest first: the one ``latest`` names, then older steps."""
    ckdir = state_dir(run_dir)
    found = sorted(
        (p for p in ckdir.glob("step_*") if p.is_dir() and _TAG.match(p.name)),
        key=lambda p: step_of(p.name),
        reverse=True,
    )
    latest = ckdir / "latest"
    if latest.is_file():
        named = ckdir / latest.read_text().strip()
        if named in found:  # DeepSpeed writes `latest` last: it names a complete checkpoint
            found = [named] + [p for p in found if step_of(p.name) < step_of(named.name)]
        else:
            log.warning(
                "%s names %r, which does not exist; using the older checkpoints", latest, named.name
            )
    return found


def readable(path: Path) -> str | None:
    """None if the checkpoint's model states load (rank 0's under ZeRO-3), else why not."""
    states = path / MODEL_STATES
    if not states.is_file() and (path / ZERO3_MODEL_STATES).is_file():
        states = path / ZERO3_MODEL_STATES
    try:
        torch.load(states, map_location="cpu", weights_only=True)
    except UNREADABLE as err:
        return _why(err)
    return None


def _why(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose model states load, or None; skipped ones are logged."""
    for path in candidates(run_dir):
        why = readable(path)
        if why is None:
            return path
        log.warning("skipping checkpoint %s: cannot read it (%s)", path, why)
    return None


def steps_done(run_dir: str | Path) -> int:
    """Optimizer steps in the newest readable checkpoint (0 without one)."""
    latest = find_latest(run_dir)
    return step_of(latest.name) if latest else 0


def save(engine: Any, run_dir: str | Path, step: int) -> Path:
    """Collective: every rank calls it; DeepSpeed writes the shards and ``latest``."""
    ckdir = state_dir(run_dir)
    engine.save_checkpoint(str(ckdir), tag=tag_for(step), client_state={"step": step})
    return ckdir / tag_for(step)


def resume(engine: Any, run_dir: str | Path, world_size: int = 1) -> int:
    """Load the newest readable checkpoint into ``engine`` (weights, optimizer, LR schedule);
    its step, 0 without one. A checkpoint that fails to load is skipped with a warning; if
    there are checkpoints but none loads, ValueError (a run is never silently restarted)."""
    tried = candidates(run_dir)
    for path in tried:
        why = None
        try:
            loaded, client = engine.load_checkpoint(str(path.parent), tag=path.name)
            if loaded is None:
                why = "DeepSpeed could not load it"
        except UNREADABLE as err:
            why = _why(err)
        if all_ok(why is None, world_size, engine.device):
            return int(client.get("step", step_of(path.name)))
        log.warning(
            "skipping checkpoint %s: cannot load it (%s)",
            path,
            why or "another rank could not load its part",
        )
    if tried:
        raise ValueError(
            f"{state_dir(run_dir)}: none of the checkpoints "
            f"{[p.name for p in tried]} can be loaded; move them away to start anew"
        )
    return 0


# --- meta.json and metrics.jsonl ------------------------------------------------------------
def write_meta(run_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write meta.json atomically (temp file + rename)."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing or meta.get("schema") != META_SCHEMA:
        raise ValueError(f"meta.json: missing key(s) {missing} or schema is not {META_SCHEMA}")
    text = json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n"
    return write_text_atomic(Path(run_dir) / META, text)


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """meta.json of a finished run, else that of its latest checkpoint; schema checked."""
    path = Path(run_dir) / META
    if not path.is_file() and (state_dir(run_dir) / META).is_file():
        path = state_dir(run_dir) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no meta.json; is {run_dir} a training run directory?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("schema") != META_SCHEMA:
        raise ValueError(f"{path}: 'schema' is not {META_SCHEMA!r}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing or not isinstance(meta["model"], dict) or "config" not in meta["model"]:
        raise ValueError(f"{path}: missing key(s) {missing or ['model.config']}")
    return meta


def metrics_path(run_dir: str | Path) -> Path:
    return state_dir(run_dir) / METRICS


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a run's live log or a published copy), validated:
    each line an object with an int ``step`` (increasing) and numbers ``loss`` and ``lr``."""
    path = Path(path)
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON line ({err})") from err
        if not isinstance(rec, dict) or any(k not in rec for k in METRIC_KEYS):
            raise ValueError(f"{path}:{n}: a metrics record needs {list(METRIC_KEYS)}")
        if not isinstance(rec["step"], int) or not all(
            isinstance(rec[k], int | float) for k in ("loss", "lr")
        ):
            raise ValueError(f"{path}:{n}: step must be an integer, loss and lr numbers")
        if records and rec["step"] <= records[-1]["step"]:
            raise ValueError(
                f"{path}:{n}: step {rec['step']} does not follow step {records[-1]['step']}"
            )
        records.append(rec)
    return records


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    with open(metrics_path(run_dir), "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be redone)."""
    kept = [r for r in read_metrics(metrics_path(run_dir)) if r["step"] <= step]
    path = metrics_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def loss_at(run_dir: str | Path, step: int) -> float | None:
    """Loss logged at ``step`` (None if absent)."""
    for rec in read_metrics(metrics_path(run_dir)):
        if rec["step"] == step:
            return float(rec["loss"])
    return None


def publish(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """A finished run: write ``<run>/meta.json`` and copy the metrics log to ``<run>/``."""
    run_dir = Path(run_dir)
    source = metrics_path(run_dir)
    write_text_atomic(run_dir / METRICS, source.read_text() if source.is_file() else "")
    write_meta(run_dir, meta)


# --- one run per directory ---------------------------------------------------------------------
@contextmanager
def locked(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock; ValueError naming the holder if another run has it."""
    path = state_dir(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(
                f"{run_dir}: another bfm train is running in this run directory "
                f"({holder}); wait for it or use another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{datetime.now(UTC).isoformat(timespec='seconds')}\n"
        )
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.lockf(f, fcntl.LOCK_UN)


# --- a trained model without DeepSpeed -------------------------------------------------------
def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[BFM, dict]:
    """Rebuild the model from meta.json and load the newest readable checkpoint's weights
    (float32, eval mode) without DeepSpeed. Returns ``(model, meta)``."""
    meta = read_meta(run_dir)
    if int(meta.get("deepspeed", {}).get("zero_stage", 0)) >= 3:
        raise ValueError(
            f"{run_dir}: ZeRO-3 checkpoints hold partitioned weights; "
            "consolidate them with DeepSpeed's zero_to_fp32.py first"
        )
    latest = find_latest(run_dir)
    if latest is None:
        raise FileNotFoundError(f"{state_dir(run_dir)}: no readable checkpoint")
    model = BFM(ModelConfig.from_dict(meta["model"]["config"]))
    state = torch.load(latest / MODEL_STATES, map_location="cpu", weights_only=True)
    model.load_state_dict(state["module"])
    return model.to(device).eval(), meta
