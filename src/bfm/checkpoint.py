"""Checkpoints of a training run: save/resume through DeepSpeed, meta.json, and loading a
trained model without DeepSpeed.

Run directory (``results/models/<run>/``)::

    meta.json                     run metadata of the finished run (rank 0, atomic)
    metrics.jsonl                 one JSON line per optimizer step (rank 0), when finished
    checkpoints/meta.json         the same, rewritten at every checkpoint (live state)
    checkpoints/metrics.jsonl     the live metrics log (survives a failed workflow job)
    checkpoints/latest            tag of the newest checkpoint (written by DeepSpeed)
    checkpoints/step_000040/
        mp_rank_00_model_states.pt    {"module": model state dict, "step": 40, ...}
        *_optim_states.pt             optimizer state (one shard per rank under ZeRO)

With ZeRO stages 0-2 the ``module`` state dict is complete (weights in the training dtype,
bf16 when bf16 is on; the normalisation buffers stay float64), so ``load_model`` needs only
torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from bfm.fileio import write_text_atomic
from bfm.model import BFM, ModelConfig

CHECKPOINTS = "checkpoints"
META = "meta.json"
METRICS = "metrics.jsonl"
MODEL_STATES = "mp_rank_00_model_states.pt"
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def step_of(tag: str) -> int:
    m = _TAG.match(tag)
    if not m:
        raise ValueError(f"checkpoint tag {tag!r} is not of the form step_NNNNNN")
    return int(m.group(1))


def find_latest(run_dir: str | Path) -> Path | None:
    """The directory of the newest checkpoint named by ``checkpoints/latest``, or None."""
    ckdir = Path(run_dir) / CHECKPOINTS
    latest = ckdir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    path = ckdir / tag
    if not path.is_dir():
        raise ValueError(f"{latest}: names checkpoint {tag!r} but {path} does not exist")
    return path


def steps_done(run_dir: str | Path) -> int:
    """Optimizer steps in the newest checkpoint (0 without one)."""
    latest = find_latest(run_dir)
    return step_of(latest.name) if latest else 0


def save(engine: Any, run_dir: str | Path, step: int) -> Path:
    """Collective: every rank calls it; DeepSpeed writes the shards and ``latest``."""
    ckdir = Path(run_dir) / CHECKPOINTS
    engine.save_checkpoint(str(ckdir), tag=tag_for(step), client_state={"step": step})
    return ckdir / tag_for(step)


def resume(engine: Any, run_dir: str | Path) -> int:
    """Load the newest checkpoint into ``engine`` (weights, optimizer, LR schedule); its step."""
    latest = find_latest(run_dir)
    if latest is None:
        return 0
    path, client = engine.load_checkpoint(str(latest.parent), tag=latest.name)
    if path is None:
        raise ValueError(f"{latest}: DeepSpeed could not load this checkpoint")
    return int(client.get("step", step_of(latest.name)))


def state_dir(run_dir: str | Path) -> Path:
    """Where the live run state is kept: checkpoints, their meta.json and the metrics log.

    The workflow declares only ``<run>/meta.json`` and ``<run>/metrics.jsonl`` as outputs, and
    Snakemake deletes the outputs of a failed or interrupted job; the state lives beside them
    so that a re-run resumes from the last checkpoint with its full metrics history.
    """
    return Path(run_dir) / CHECKPOINTS


def publish(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """A finished run: write ``<run>/meta.json`` and copy the metrics log to ``<run>/``."""
    run_dir = Path(run_dir)
    source = state_dir(run_dir) / METRICS
    write_text_atomic(run_dir / METRICS, source.read_text() if source.is_file() else "")
    write_meta(run_dir, meta)


def write_meta(run_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write meta.json atomically (temp file + rename)."""
    text = json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n"
    return write_text_atomic(Path(run_dir) / META, text)


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """meta.json of a finished run, else that of its latest checkpoint."""
    path = Path(run_dir) / META
    if not path.is_file() and (Path(run_dir) / CHECKPOINTS / META).is_file():
        path = Path(run_dir) / CHECKPOINTS / META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no meta.json; is {run_dir} a training run directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[BFM, dict]:
    """Rebuild the model from meta.json and load the newest checkpoint's weights (float32,
    eval mode) without DeepSpeed. Returns ``(model, meta)``."""
    meta = read_meta(run_dir)
    if int(meta.get("deepspeed", {}).get("zero_stage", 0)) >= 3:
        raise ValueError(f"{run_dir}: ZeRO-3 checkpoints hold partitioned weights; "
                         "consolidate them with DeepSpeed's zero_to_fp32.py first")
    latest = find_latest(run_dir)
    if latest is None:
        raise FileNotFoundError(f"{Path(run_dir) / CHECKPOINTS}/latest: no checkpoint")
    model = BFM(ModelConfig.from_dict(meta["model"]["config"]))
    state = torch.load(latest / MODEL_STATES, map_location="cpu", weights_only=True)
    model.load_state_dict(state["module"])
    return model.to(device).eval(), meta
