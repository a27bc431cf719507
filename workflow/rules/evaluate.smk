# Scores on the held-out batches: model vs persistence and the climatology of the training
# years (built once per study).


rule climatology:
    """Per cell, per day of year (and hour): the mean of the training batches, smoothed over
    evaluation.climatology_window_days."""
    input:
        get_train_batches,
    output:
        CLIMATOLOGY,
    log:
        "logs/climatology.log",
    conda:
        "../../envs/geo.yaml"
    params:
        settings=PLAN.climatology_settings(),
        config=get_config_file,
    shell:
        "bfm climatology --batches {input} --config {params.config} --out {output}" " > {log} 2>&1"


rule evaluate:
    """Latitude-weighted RMSE, bias, MAE and ACC of the model, persistence and climatology
    on held-out batches, with rollouts and bootstrap intervals."""
    input:
        meta="results/models/{run}/meta.json",
        batches=get_eval_batches,
        climatology=CLIMATOLOGY,
    output:
        scores="results/eval/{run}/scores.jsonl",
        by_lead="results/eval/{run}/scores_by_lead.jsonl",
    log:
        "logs/evaluate/{run}.log",
    conda:
        "../../envs/train.yaml"
    params:
        model=get_run_dir_of_input,
        config=get_config_file,
    shell:
        "bfm evaluate --model {params.model} --batches {input.batches}"
        " --climatology {input.climatology} --config {params.config} --out {output.scores}"
        " > {log} 2>&1"
