# Tiles: CF NetCDF on the configured grid, one file per modality and month (static: one).


rule tile:
    """Regrid a modality's raw files onto the grid and time axis of one month."""
    input:
        unpack(get_tile_inputs),
    output:
        "results/tiles/{modality}/{period}.nc",
    log:
        "logs/tile/{modality}/{period}.log",
    benchmark:
        "results/benchmarks/tile/{modality}/{period}.tsv"
    conda:
        "../../envs/geo.yaml"
    params:
        settings=get_tile_settings,
        config=get_config_file,
    shell:
        "bfm tile {wildcards.modality} --period {wildcards.period} --input {input.raw}"
        " --config {params.config} --out {output} > {log} 2>&1"
