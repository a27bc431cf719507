# ERA5 tiles: CF NetCDF on the configured grid, one file per modality and month.


rule tile_era5:
    """Regrid one month of ERA5 surface or pressure-level fields onto the grid and step."""
    input:
        get_raw_era5,
    output:
        "results/tiles/era5_{group}/{period}.nc",
    log:
        "logs/tile_era5/{group}/{period}.log",
    conda:
        "../../envs/geo.yaml"
    params:
        grid=PLAN.grid_arg(),
        start=config["time"]["start"],
        end=config["time"]["end"],
        step=config["time"]["step"],
    shell:
        "bfm tile era5 --group {wildcards.group} --input {input} --period {wildcards.period}"
        " --grid {params.grid} --start {params.start} --end {params.end}"
        " --step {params.step} --out {output} > {log} 2>&1"


rule tile_era5_static:
    """Regrid the invariant ERA5 fields (conservative; soil type by majority)."""
    input:
        get_raw_era5_static,
    output:
        "results/tiles/era5_static/static.nc",
    log:
        "logs/tile_era5_static.log",
    conda:
        "../../envs/geo.yaml"
    params:
        grid=PLAN.grid_arg(),
    shell:
        "bfm tile era5-static --input {input} --grid {params.grid} --out {output} > {log} 2>&1"
