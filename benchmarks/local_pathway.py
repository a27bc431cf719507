"""The local pathway of counts, ablated: on a finished demo run (``make demo``; its folder is
the argument, default .), train the demo's model again with ``local_dim = 0`` into
results/models/nolocal, then print the held-out species' pooled Poisson deviance and AUC per
species of both runs.

    python benchmarks/local_pathway.py [RUN_DIR]
"""

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
work = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
os.chdir(work)
sys.path.insert(0, str(ROOT))
from bfm.workflow import load_plan  # noqa: E402

config = sorted(glob.glob("results/config/*.yaml"), key=os.path.getmtime)[-1]
plan = load_plan(config)
if not Path("results/models/nolocal/meta.json").exists():
    train = [f"results/batches/{t}.h5" for t in plan.batch_names("train")]
    model, train_cfg = plan.config["model"], plan.config["train"]
    code = (
        "import dataclasses, sys\n"
        "import bfm.training.loop as loop\n"
        "orig = loop.build_config\n"
        "loop.build_config = lambda *a, **k: dataclasses.replace(orig(*a, **k), local_dim=0)\n"
        "from bfm.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [
        "train",
        "--batches",
        *train,
        "--stats",
        "results/stats/stats.json",
        "--deepspeed",
        train_cfg["deepspeed"],
        "--preset",
        model["preset"],
        "--backbone",
        model["backbone"],
        "--steps",
        str(train_cfg["steps"]),
        "--lr",
        str(train_cfg["lr"]),
        "--warmup-steps",
        str(train_cfg["warmup_steps"]),
        "--checkpoint-every",
        str(train_cfg["checkpoint_every"]),
        "--seed",
        str(train_cfg["seed"]),
        "--loss",
        train_cfg["loss"],
        "--species-table",
        "results/species/species.parquet",
        "--config",
        config,
        "--out",
        "results/models/nolocal",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env)
from sklearn.metrics import mean_poisson_deviance, roc_auc_score  # noqa: E402

from tests.test_e2e import held_out_species  # noqa: E402

for run in ("demo", "nolocal"):
    y, mu, norm = held_out_species(work, run, plan)
    ok = np.isfinite(y)
    aucs = [roc_auc_score(y[:, s][ok[:, s]] > 0, mu[:, s][ok[:, s]]) for s in range(y.shape[1])]
    dev = mean_poisson_deviance(y[ok], mu[ok])
    print(
        f"{run}: pooled deviance {dev:.4f}, AUC per species " + " ".join(f"{a:.2f}" for a in aucs)
    )
