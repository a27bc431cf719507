# The species list the rules read (when the config's list lacks keys or is subset) and the
# species table: one row per species of the study, the identity the model gives it.


if PLAN.study.resolves_species:

    localrules:
        species_list,

    rule species_list:
        """The config's species list resolved: the subset, GBIF keys and class keys
        (bfm.species_list; a GBIF species match in the Snakemake process when keys are
        matched)."""
        input:
            config["species"],
        output:
            PLAN.study.species,
        log:
            "logs/species_list.log",
        conda:
            "../../envs/sources.yaml"
        resources:
            **PLAN.species_list_resources(),
        params:
            settings=PLAN.species_list_settings(),
            config=get_config_file,
        shell:
            "bfm species list --config {params.config} --out {output} > {log} 2>&1"


rule species_table:
    """Taxonomy and media embeddings (photos, recordings, barcodes, descriptions) of every
    species."""
    input:
        species=PLAN.study.species,
        media=[f for files in PLAN.species_media().values() for f in files],
        encoders=PLAN.species_encoder_files(),
    output:
        SPECIES_TABLE,
    log:
        "logs/species_table.log",
    benchmark:
        "results/benchmarks/species_table.tsv"
    conda:
        "../../envs/sources.yaml"
    params:
        config=get_config_file,
    shell:
        "bfm species table --config {params.config} --out {output} > {log} 2>&1"
