# Species tiles: per-species occurrence counts per cell and step.


rule tile_species:
    """Count one month of GBIF occurrences per species, cell and step."""
    input:
        occurrences=get_raw_gbif,
        species=config["species"],
    output:
        "results/tiles/species_occurrence/{period}.nc",
    log:
        "logs/tile_species/{period}.log",
    conda:
        "../../envs/geo.yaml"
    params:
        grid=PLAN.grid_arg(),
        start=config["time"]["start"],
        end=config["time"]["end"],
        step=config["time"]["step"],
    shell:
        "bfm tile species --input {input.occurrences} --species {input.species}"
        " --period {wildcards.period} --grid {params.grid} --start {params.start}"
        " --end {params.end} --step {params.step} --out {output} > {log} 2>&1"
