# Raw source files. In `sample` mode these rules write deterministic synthetic files in the
# source's own format; in `file` mode the raw files are the user's and these rules do not run.


rule sample_era5:
    """ERA5 surface or pressure-level fields for one month, new-CDS netCDF layout."""
    output:
        "results/raw/era5/{group}/{period}.nc",
    log:
        "logs/sample_era5/{group}/{period}.log",
    conda:
        "../../envs/sources.yaml"
    params:
        grid=PLAN.grid_arg(),
        levels=PLAN.levels_arg(),
        seed=config["sources"]["era5"]["seed"],
    shell:
        "bfm sample era5 --group {wildcards.group} --period {wildcards.period}"
        " --grid {params.grid} --levels {params.levels} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule sample_era5_static:
    """ERA5 invariant fields (surface geopotential, land-sea mask, soil type)."""
    output:
        "results/raw/era5/static/static.nc",
    log:
        "logs/sample_era5_static.log",
    conda:
        "../../envs/sources.yaml"
    params:
        grid=PLAN.grid_arg(),
        levels=PLAN.levels_arg(),
        seed=config["sources"]["era5"]["seed"],
    shell:
        "bfm sample era5 --group static --grid {params.grid} --levels {params.levels}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule sample_gbif:
    """GBIF occurrences for the configured species, as a SIMPLE_CSV download zip."""
    input:
        species=config["species"],
    output:
        "results/raw/gbif/occurrences.zip",
    log:
        "logs/sample_gbif.log",
    conda:
        "../../envs/sources.yaml"
    params:
        grid=PLAN.grid_arg(),
        start=config["time"]["start"],
        end=config["time"]["end"],
        seed=config["sources"]["gbif"]["seed"],
        # Occurrences follow the same sample climate as the ERA5 sample files.
        climate_seed=config["sources"]["era5"]["seed"],
    shell:
        "bfm sample gbif --species {input.species} --start {params.start}"
        " --end {params.end} --grid {params.grid} --seed {params.seed}"
        " --climate-seed {params.climate_seed} --out {output} > {log} 2>&1"
