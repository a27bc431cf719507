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
        grid=PLAN.grid_arg(),
        step=config["time"]["step"],
    shell:
        "bfm batch --t0 {wildcards.t0} --step {params.step} --grid {params.grid}"
        " --surface {input.era5_surface} --atmospheric {input.era5_atmospheric}"
        " --species {input.species_occurrence} --static {input.era5_static}"
        " --out {output} > {log} 2>&1"
