# Config validation, the study's plan and input helpers. All logic lives in bfm.workflow,
# which is unit-tested; the rules are written once over the catalogue's modalities and
# sources (see docs/architecture.md).
#
# Each rule's `settings` param holds exactly the config keys its output depends on, so a
# config change reruns what it affects and nothing else. The resolved config reaches every
# job as one file, results/config/<hash>.yaml (`--config`); it is passed as a derived param
# (a function of the job's output), which Snakemake keeps out of its params rerun trigger.
import os

from snakemake.logging import logger

from bfm.config import ConfigError, write_resolved_config
from bfm.workflow import Plan

try:
    PLAN = Plan(config, "config")
except ConfigError as err:
    raise WorkflowError(f"invalid config, no job was run: {err}") from None
config = PLAN.config
ORPHANS = PLAN.orphaned_tiles()
if ORPHANS:
    tile, raw = ORPHANS[0]
    raise WorkflowError(
        f"{tile} exists but its input {raw} (file mode) does not, and {len(ORPHANS) - 1} "
        "more: the tiles were built from other files than the config names. Provide the "
        "files or delete those tiles; no job was run."
    )
if PLAN.ablations_left_out:
    logger.warning(
        f"evaluation.ablations: {', '.join(PLAN.ablations_left_out)} left out: each is the "
        "full model in this study (what it drops, groups or the species table, is not here)"
    )
CONFIG_FILE = write_resolved_config(PLAN.config, "results/config")
# Per-rule conda envs install this checkout (envs/install-bfm.sh), wherever --directory is.
os.environ.setdefault("BFM_SOURCE_DIR", os.path.dirname(workflow.basedir))


SPECIES_TABLE = "results/species/species.parquet"
CLIMATOLOGY = "results/climatology/climatology.h5"
SPECIES_GLM = "results/species_glm/glm.joblib"


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing when empty)."""
    return "|".join(names) or "(?!)"


wildcard_constraints:
    modality=one_of(m.name for m in PLAN.modalities),
    period=r"\d{4}-\d{2}|static",
    t0=r"\d{8}T\d{2}",
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    set=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def get_final_outputs():
    """The model, its evaluation, forecast and SDMs, and every report item."""
    run = config["run"]
    item = f"results/report/{run}"
    out = [
        f"results/models/{run}/meta.json",
        f"results/eval/{run}/scores.jsonl",
        f"results/predict/{run}/forecast.nc",
        f"{item}/loss.svg",
        f"{item}/scores.html",
        f"{item}/lead.svg",
        f"{item}/error_maps.png",
        f"{item}/forecast_maps.png",
    ]
    if PLAN.has_species:
        out += [f"{item}/sdm_{s}.html" for s in sdm_sets()]
    if sdm_heads():
        out += [f"{item}/suitability_maps.png"]
    if ablation_runs():
        out.append(f"{item}/ablations.html")
    return out


def get_config_file(wildcards, output):
    return CONFIG_FILE


def get_raw_inputs(wildcards):
    return PLAN.raw_inputs(wildcards.source, wildcards.name)


def net_resource(service):
    """1 for a download from ``service``: --resources net_<service>=N caps them at N."""
    return lambda wildcards: int(PLAN.service_of(wildcards.source) == service)


NET_RESOURCES = {f"net_{s}": net_resource(s) for s in PLAN.services()}


def get_raw_settings(wildcards):
    return PLAN.raw_settings(wildcards.source, wildcards.name)


def get_tile_inputs(wildcards):
    return PLAN.tile_inputs(wildcards.modality, wildcards.period)


def get_tile_settings(wildcards):
    return PLAN.tile_settings(wildcards.modality)


def get_batch_tiles(wildcards):
    return PLAN.batch_tiles(wildcards.t0)


def get_month_tiles(wildcards):
    return PLAN.month_tiles(wildcards.period)


def get_tile_args(wildcards, input):
    """--tile MODALITY=PATH,... of every modality of the study, from a job's tile inputs
    (get_batch_tiles or get_month_tiles, unpacked: one named input per modality)."""
    return " ".join(f"--tile {m.name}={','.join(input[m.name])}" for m in PLAN.modalities)


def at_files(name):
    """Input ``name`` (month lists of batches) as @FILE arguments: bfm reads the paths each
    file lists, so a job's command line and log name months, not thousands of batches."""
    return lambda wildcards, input: " ".join(f"@{p}" for p in input[name])


def get_stats_partial_batches(wildcards):
    return [PLAN.batch_list(wildcards.period, "train")]


def get_stats_partials(wildcards):
    return [f"results/stats/partial/{p}.json" for p in PLAN.train_periods()]


def get_train_batches(wildcards):
    return PLAN.batch_lists("train")


def get_eval_batches(wildcards):
    return PLAN.batch_lists("eval")


def get_species_glm(wildcards):
    """The species GLM baseline of the evaluation, where the study has species."""
    return [SPECIES_GLM] if PLAN.has_species else []


def sdm_sets():
    """The configured species sets (sdm.sets): one finetune job each."""
    return list(config["sdm"]["sets"])


def get_all_batches(wildcards):
    return PLAN.batch_lists("train") + PLAN.batch_lists("eval")


def get_predict_batches(wildcards):
    """The month lists holding the first evaluation.leads + 1 held-out batches: bfm predict's
    start and the batches at its rollout's later input times (their static groups)."""
    return PLAN.first_batch_lists("eval", config["evaluation"]["leads"] + 1)


def sdm_heads():
    """The SDMs fit the BFM head (sdm.methods has bfm): heads.pt, suitability maps."""
    return PLAN.has_species and "bfm" in config["sdm"]["methods"]


def get_predict_heads(wildcards):
    """The SDM heads of the first species set (sdm.sets), for the suitability maps."""
    return [f"results/sdm/{wildcards.run}/{sdm_sets()[0]}/heads.pt"] if sdm_heads() else []


def get_predict_options(wildcards, input):
    """bfm predict's species names (the species table) and suitability maps (the heads)."""
    flags = [f"--species-table {input.species_table}"] if input.species_table else []
    flags += [f"--heads {input.heads}"] if input.heads else []
    return " ".join(flags)


def get_train_species_table(wildcards):
    uses_table = PLAN.has_species and PLAN.variant(wildcards.run).species_table
    return [SPECIES_TABLE] if uses_table else []


def get_train_backbone(wildcards):
    """The run's backbone: its ablation's (evaluation.ablations), else model.backbone."""
    return PLAN.variant(wildcards.run).backbone


def get_train_options(wildcards, input):
    """The loss, the species table and the run's dropped groups of bfm train, as flags."""
    flags = [f"--loss {config['train']['loss']}"]
    flags += [f"--loss-weight {k}={v}" for k, v in sorted(config["train"]["loss_weights"].items())]
    if input.species_table:
        flags.append(f"--species-table {input.species_table}")
    elif PLAN.has_species:
        flags.append("--no-species-table")
    flags += [f"--drop-group {g}" for g in PLAN.variant(wildcards.run).drop_groups]
    return " ".join(flags)


def ablation_runs():
    """Label -> run of the ablation table: {"full model": config["run"]}, then each variant
    of evaluation.ablations by name (run <run>-<name>); {} without ablations."""
    return PLAN.ablation_runs()


def get_ablation_scores():
    return [f"results/eval/{run}/scores.jsonl" for run in ablation_runs().values()]


def get_ablation_score_args():
    """bfm report ablations' --scores LABEL=PATH, the full model first, each quoted for the
    shell (labels hold spaces: "full model")."""
    import shlex

    pairs = zip(ablation_runs(), get_ablation_scores())
    return " ".join(shlex.quote(f"{label}={path}") for label, path in pairs)


def get_run_dir_of_input(wildcards, input):
    return os.path.dirname(input.meta)


def get_run_dir_of_output(wildcards, output):
    return os.path.dirname(output.meta)
