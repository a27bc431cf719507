# The species table: one row per species of the study, the identity the model gives it.


rule species_table:
    """Taxonomy (and, with the species sources, media embeddings) of every species."""
    input:
        config["species"],
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
