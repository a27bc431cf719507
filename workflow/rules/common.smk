# Config validation and input helpers. All logic lives in bfm.workflow, which is unit-tested.
import os

from bfm.config import ConfigError
from bfm.workflow import Plan, export_config

try:
    PLAN = Plan(config, "config")
except ConfigError as err:
    raise WorkflowError(f"invalid config, no job was run: {err}") from None
config = PLAN.config
CONFIG_HASH = export_config(config)
# Per-rule conda envs install this checkout (envs/install-bfm.sh), wherever --directory is.
os.environ.setdefault("BFM_SOURCE_DIR", os.path.dirname(workflow.basedir))


wildcard_constraints:
    group="surface|atmospheric",
    period=r"\d{4}-\d{2}",
    t0=r"\d{8}T\d{2}",
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def get_final_outputs():
    run = config["run"]
    return [
        f"results/models/{run}/meta.json",
        f"results/eval/{run}/scores.jsonl",
        f"results/report/{run}/loss.svg",
        f"results/report/{run}/scores.html",
    ]


def get_raw_era5(wildcards):
    return PLAN.raw_era5(wildcards.group, wildcards.period)


def get_raw_era5_static(wildcards):
    return PLAN.raw_era5("static")


def get_raw_gbif(wildcards):
    return PLAN.raw_gbif()


def get_batch_tiles(wildcards):
    return PLAN.batch_tiles(wildcards.t0)


def get_stats_partial_batches(wildcards):
    return PLAN.train_batches_in(wildcards.period)


def get_stats_partials(wildcards):
    return [f"results/stats/partial/{p}.json" for p in PLAN.train_periods()]


def get_train_batches(wildcards):
    return [f"results/batches/{t0}.h5" for t0 in PLAN.batch_names("train")]


def get_eval_batches(wildcards):
    return [f"results/batches/{t0}.h5" for t0 in PLAN.batch_names("eval")]


def get_run_dir_of_input(wildcards, input):
    return os.path.dirname(input.meta)


def get_run_dir_of_output(wildcards, output):
    return os.path.dirname(output.meta)
