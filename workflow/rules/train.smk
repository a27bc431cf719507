rule train:
    """Pre-train the BFM with DeepSpeed on the training batches."""
    input:
        batches=get_train_batches,
        stats="results/stats/stats.json",
        deepspeed=config["train"]["deepspeed"],
    output:
        meta="results/models/{run}/meta.json",
        metrics="results/models/{run}/metrics.jsonl",
        checkpoints=directory("results/models/{run}/checkpoints"),
    log:
        "logs/train/{run}.log",
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        model=config["model"],
        train=get_train_settings,
        out=get_run_dir_of_output,
    shell:
        "bfm train --batches {input.batches} --stats {input.stats}"
        " --deepspeed {input.deepspeed} --preset {params.model[preset]}"
        " --backbone {params.model[backbone]} --steps {params.train[steps]}"
        " --lr {params.train[lr]} --warmup-steps {params.train[warmup_steps]}"
        " --checkpoint-every {params.train[checkpoint_every]} --seed {params.train[seed]}"
        " --out {params.out} > {log} 2>&1"
