rule train:
    """Pre-train the BFM with DeepSpeed on the training batches.

    Checkpoints (results/models/<run>/checkpoints/) are deliberately not declared outputs:
    Snakemake deletes the outputs of a failed job, and a re-run must resume from the last
    checkpoint (written every N steps and on SIGTERM/SIGUSR1).

    Every run name trains the config's model, but an ablation's run (<run>-<name>, config
    evaluation.ablations) with its own backbone, species table and dropped groups.

    resources.mpi starts the ranks: "" runs one process; profiles/snellius sets an srun line
    (nodes x tasks_per_node ranks, which find their rank in SLURM's environment); locally
    "mpirun -np 2" works too (Open MPI's environment).
    """
    input:
        batches=get_train_batches,
        stats="results/stats/stats.json",
        deepspeed=config["train"]["deepspeed"],
        species_table=get_train_species_table,
    output:
        meta="results/models/{run}/meta.json",
        metrics="results/models/{run}/metrics.jsonl",
    log:
        "logs/train/{run}.log",
    benchmark:
        "results/benchmarks/train/{run}.tsv"
    conda:
        "../../envs/train.yaml"
    # One CPU thread locally: the demo's tiny model gains ~15 % from a second one, two
    # trainings side by side ~40 % (--set-threads train=N for more). On Snellius the profile
    # sets the CPUs of a GPU (per rank).
    threads: 1
    resources:
        mpi="",
    params:
        model=config["model"],
        train=config["train"],
        backbone=get_train_backbone,
        out=get_run_dir_of_output,
        config=get_config_file,
        options=get_train_options,
        batches=at_files("batches"),
    shell:
        "{resources.mpi} bfm train --batches {params.batches} --stats {input.stats}"
        " --deepspeed {input.deepspeed} --preset {params.model[preset]}"
        " --backbone {params.backbone} --steps {params.train[steps]}"
        " --lr {params.train[lr]} --warmup-steps {params.train[warmup_steps]}"
        " --checkpoint-every {params.train[checkpoint_every]} --seed {params.train[seed]}"
        " {params.options} --config {params.config} --out {params.out} > {log} 2>&1"
