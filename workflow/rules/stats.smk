# Normalisation statistics over the training batches, from mergeable partial sums.


rule stats_partial:
    """Partial sums over the training batches that start in one month."""
    input:
        batches=get_stats_partial_batches,
    output:
        "results/stats/partial/{period}.json",
    log:
        "logs/stats_partial/{period}.log",
    benchmark:
        "results/benchmarks/stats_partial/{period}.tsv"
    conda:
        "../../envs/geo.yaml"
    params:
        settings=PLAN.stats_settings(),
        config=get_config_file,
        batches=at_files("batches"),
    shell:
        "bfm stats partial --batches {params.batches} --config {params.config} --out {output}"
        " > {log} 2>&1"


rule stats:
    """Merge the monthly partial sums into per-variable, per-channel statistics."""
    input:
        get_stats_partials,
    output:
        "results/stats/stats.json",
    log:
        "logs/stats.log",
    benchmark:
        "results/benchmarks/stats.tsv"
    conda:
        "../../envs/geo.yaml"
    params:
        settings=PLAN.stats_settings(),
        config=get_config_file,
    shell:
        "bfm stats merge --partials {input} --config {params.config} --out {output} > {log} 2>&1"
