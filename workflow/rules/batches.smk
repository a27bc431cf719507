# Batches: two consecutive steps of every modality, schema bfm-batch/1 (HDF5).


rule batch:
    """Assemble the batch starting at t0 from the tiles of the months it touches."""
    input:
        unpack(get_batch_tiles),
    output:
        "results/batches/{t0}.h5",
    log:
        "logs/batch/{t0}.log",
    conda:
        "../../envs/geo.yaml"
    params:
        tiles=get_batch_tile_args,
        settings=PLAN.batch_settings(),
        config=get_config_file,
    shell:
        "bfm batch --t0 {wildcards.t0} {params.tiles} --config {params.config}"
        " --out {output} > {log} 2>&1"
