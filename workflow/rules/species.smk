# The species table: one row per species of the study, the identity the model gives it.


rule species_table:
    """Taxonomy and media embeddings (photos, recordings, barcodes, descriptions) of every
    species."""
    input:
        species=config["species"],
        media=[f for files in PLAN.species_media().values() for f in files],
    output:
        SPECIES_TABLE,
    log:
        "logs/species_table.log",
    conda:
        "../../envs/sources.yaml"
    params:
        config=get_config_file,
    shell:
        "bfm species table --config {params.config} --out {output} > {log} 2>&1"
