# Raw source files, written once over the registered sources. In `sample` mode a source
# writes deterministic synthetic files in its own format, in `download` mode it fetches them
# from its service; in `file` mode the raw files are the user's and neither rule runs.
# Downloads run in the Snakemake process's machine (compute nodes have no internet), at most
# --resources net_<service>=N at a time per service.


localrules:
    download,


rule sample:
    """One raw file of a source in sample mode (synthetic, the source's native format)."""
    input:
        get_raw_inputs,
    output:
        "results/raw/{source}/{name}",
    log:
        "logs/sample/{source}/{name}.log",
    benchmark:
        "results/benchmarks/sample/{source}/{name}.tsv"
    wildcard_constraints:
        source=one_of(PLAN.sources_in_mode("sample")),
    conda:
        "../../envs/sources.yaml"
    params:
        settings=get_raw_settings,
        config=get_config_file,
    shell:
        "bfm sample {wildcards.source} {wildcards.name} --config {params.config}"
        " --out {output} > {log} 2>&1"


rule download:
    """One raw file of a source in download mode, from the source's service."""
    input:
        get_raw_inputs,
    output:
        "results/raw/{source}/{name}",
    log:
        "logs/download/{source}/{name}.log",
    wildcard_constraints:
        source=one_of(PLAN.sources_in_mode("download")),
    conda:
        "../../envs/sources.yaml"
    resources:
        **NET_RESOURCES,
    params:
        settings=get_raw_settings,
        config=get_config_file,
    shell:
        "bfm download {wildcards.source} {wildcards.name} --config {params.config}"
        " --out {output} > {log} 2>&1"


rule combine:
    """One raw file built from other sources' raw files (occurrences: every occurrence
    source's records, cleaned, set aside and counted, each occurrence once)."""
    input:
        get_raw_inputs,
    output:
        "results/raw/{source}/{name}",
    log:
        "logs/combine/{source}/{name}.log",
    benchmark:
        "results/benchmarks/combine/{source}/{name}.tsv"
    wildcard_constraints:
        source=one_of(PLAN.sources_in_mode("combine")),
    conda:
        "../../envs/sources.yaml"
    params:
        settings=get_raw_settings,
        config=get_config_file,
    shell:
        "bfm combine {wildcards.source} {wildcards.name} --config {params.config}"
        " --out {output} > {log} 2>&1"
