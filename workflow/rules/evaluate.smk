# Scores on the held-out batches: model vs persistence and climatology.


rule evaluate:
    """Per-variable RMSE of the model, persistence and climatology on held-out batches."""
    input:
        meta="results/models/{run}/meta.json",
        batches=get_eval_batches,
    output:
        "results/eval/{run}/scores.jsonl",
    log:
        "logs/evaluate/{run}.log",
    conda:
        "../../envs/train.yaml"
    params:
        model=get_run_dir_of_input,
        config=get_config_file,
    shell:
        "bfm evaluate --model {params.model} --batches {input.batches}"
        " --config {params.config} --out {output} > {log} 2>&1"
