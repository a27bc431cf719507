# Species distribution models fine-tuned on the pre-trained BFM (a head on the frozen
# backbone's latents, LoRA adapters as an option) against a GLM and MaxEnt on the same
# environmental covariates: spatial block and random cross-validation, pseudo-absence
# replicates from the target-group background (bfm.evaluation.sdm).


rule finetune:
    """SDMs of one species set: presence/pseudo-absence per cell-step, CV metrics per species
    (AUC-ROC, AUC-PR, max-TSS, Boyce) for the BFM head, GLM and MaxEnt; the heads."""
    input:
        meta="results/models/{run}/meta.json",
        batches=get_all_batches,
        species=PLAN.study.species,
    output:
        **({"heads": "results/sdm/{run}/{set}/heads.pt"} if sdm_heads() else {}),
        metrics="results/sdm/{run}/{set}/metrics.jsonl",
        summary="results/sdm/{run}/{set}/summary.json",
    log:
        "logs/finetune/{run}/{set}.log",
    benchmark:
        "results/benchmarks/finetune/{run}/{set}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        model=get_run_dir_of_input,
        config=get_config_file,
        settings=lambda wildcards: config["sdm"],
        batches=at_files("batches"),
    shell:
        "bfm finetune --model {params.model} --batches {params.batches}"
        " --species-list {input.species} --set {wildcards.set} --jobs {threads}"
        " --config {params.config} --out results/sdm/{wildcards.run}/{wildcards.set}"
        " > {log} 2>&1"


rule species_glm:
    """The GLM baseline of the species scores: a Poisson GLM per count channel on the
    environmental covariates, fitted on the training pairs (bfm.evaluation.species_glm)."""
    input:
        batches=get_train_batches,
    output:
        SPECIES_GLM,
    log:
        "logs/species_glm.log",
    benchmark:
        "results/benchmarks/species_glm.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        config=get_config_file,
        batches=at_files("batches"),
    shell:
        "bfm species-glm --batches {params.batches} --config {params.config} --out {output}"
        " > {log} 2>&1"
