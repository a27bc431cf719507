# Batches: two consecutive steps of every modality, schema bfm-batch/1 (HDF5). The DAG
# builds them a month per job (rule batches); rule batch builds one alone, for a targeted
# `snakemake results/batches/<t0>.h5`.


rule batches:
    """Assemble every batch that starts in one month (each tile opened once) and list them
    per split; rules that read batches take these lists."""
    input:
        unpack(get_month_tiles),
    output:
        train="results/batches/lists/{period}.train.txt",
        eval="results/batches/lists/{period}.eval.txt",
    log:
        "logs/batches/{period}.log",
    benchmark:
        "results/benchmarks/batches/{period}.tsv"
    conda:
        "../../envs/geo.yaml"
    params:
        tiles=get_tile_args,
        settings=PLAN.batch_settings(),
        config=get_config_file,
    shell:
        "bfm batches --period {wildcards.period} {params.tiles} --config {params.config}"
        " --out-dir results/batches --train-list {output.train} --eval-list {output.eval}"
        " > {log} 2>&1"


rule batch:
    """Assemble the batch starting at t0 from the tiles of the months it touches."""
    input:
        unpack(get_batch_tiles),
    output:
        "results/batches/{t0}.h5",
    log:
        "logs/batch/{t0}.log",
    benchmark:
        "results/benchmarks/batch/{t0}.tsv"
    conda:
        "../../envs/geo.yaml"
    params:
        tiles=get_tile_args,
        settings=PLAN.batch_settings(),
        config=get_config_file,
    shell:
        "bfm batch --t0 {wildcards.t0} {params.tiles} --config {params.config}"
        " --out {output} > {log} 2>&1"
