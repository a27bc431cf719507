# Scores on the held-out batches: model vs persistence and the climatology of the training
# years (built once per study).


rule climatology:
    """Per cell, per day of year (and hour): the mean of the training batches, smoothed over
    evaluation.climatology_window_days."""
    input:
        batches=get_train_batches,
    output:
        CLIMATOLOGY,
    log:
        "logs/climatology.log",
    benchmark:
        "results/benchmarks/climatology.tsv"
    conda:
        "../../envs/geo.yaml"
    params:
        settings=PLAN.climatology_settings(),
        config=get_config_file,
        batches=at_files("batches"),
    shell:
        "bfm climatology --batches {params.batches} --config {params.config} --out {output}"
        " > {log} 2>&1"


rule evaluate:
    """Latitude-weighted RMSE, bias, MAE and ACC of the model, persistence and climatology
    on held-out batches, with rollouts and bootstrap intervals; species counts also against
    the Poisson GLM on the environmental covariates."""
    input:
        meta="results/models/{run}/meta.json",
        batches=get_eval_batches,
        climatology=CLIMATOLOGY,
        glm=get_species_glm,
    output:
        scores="results/eval/{run}/scores.jsonl",
        by_lead="results/eval/{run}/scores_by_lead.jsonl",
        error_maps="results/eval/{run}/error_maps.nc",
    log:
        "logs/evaluate/{run}.log",
    benchmark:
        "results/benchmarks/evaluate/{run}.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        model=get_run_dir_of_input,
        config=get_config_file,
        glm=lambda wildcards, input: f"--glm {input.glm}" if input.glm else "",
        batches=at_files("batches"),
    shell:
        "bfm evaluate --model {params.model} --batches {params.batches}"
        " --climatology {input.climatology} {params.glm} --config {params.config}"
        " --out {output.scores} > {log} 2>&1"


rule predict:
    """A forecast of the model from the first held-out batch, evaluation.leads steps ahead:
    ensemble mean and spread of evaluation.members perturbed initial states per variable
    (CF-1.10 NetCDF)."""
    input:
        meta="results/models/{run}/meta.json",
        batches=get_predict_batches,
        species_table=get_train_species_table,
        heads=get_predict_heads,
    output:
        "results/predict/{run}/forecast.nc",
    log:
        "logs/predict/{run}.log",
    benchmark:
        "results/benchmarks/predict/{run}.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        model=get_run_dir_of_input,
        leads=config["evaluation"]["leads"],
        members=config["evaluation"]["members"],
        noise=config["evaluation"]["noise"],
        options=get_predict_options,
        config=get_config_file,
        batches=at_files("batches"),
    shell:
        "bfm predict --model {params.model} --batches {params.batches} --leads {params.leads}"
        " --members {params.members} --noise {params.noise} {params.options}"
        " --config {params.config} --out {output} > {log} 2>&1"


localrules:
    ablations,


rule ablations:
    """`snakemake ablations`: the full model and every variant of evaluation.ablations, each
    trained (rule train, run <run>-<name>) and scored (rule evaluate) on the same batches."""
    input:
        get_ablation_scores(),
