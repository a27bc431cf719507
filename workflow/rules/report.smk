# Report figures and tables, flagged for `snakemake --report report.zip`. Each item's caption
# (workflow/report/<item>.rst) says what it shows, how it was computed and how to read it.
# Labels: "item" first (the report's result table never turns its first label into a toggle),
# then the run.


rule report_loss:
    """Training loss curve."""
    input:
        "results/models/{run}/metrics.jsonl",
    output:
        report(
            "results/report/{run}/loss.svg",
            caption="../report/loss.rst",
            category="Training",
            labels={"item": "loss curve", "run": "{run}"},
        ),
    log:
        "logs/report_loss/{run}.log",
    benchmark:
        "results/benchmarks/report_loss/{run}.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "bfm report loss --metrics {input} --out {output} > {log} 2>&1"


rule report_scores:
    """Score table of the held-out evaluation."""
    input:
        "results/eval/{run}/scores.jsonl",
    output:
        report(
            "results/report/{run}/scores.html",
            caption="../report/scores.rst",
            category="Evaluation",
            labels={"item": "score table", "run": "{run}"},
        ),
    log:
        "logs/report_scores/{run}.log",
    benchmark:
        "results/benchmarks/report_scores/{run}.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "bfm report scores --scores {input} --out {output} > {log} 2>&1"


rule report_lead:
    """Scores against the forecast lead."""
    input:
        "results/eval/{run}/scores_by_lead.jsonl",
    output:
        report(
            "results/report/{run}/lead.svg",
            caption="../report/lead.rst",
            category="Evaluation",
            labels={"item": "scores by lead", "run": "{run}"},
        ),
    log:
        "logs/report_lead/{run}.log",
    benchmark:
        "results/benchmarks/report_lead/{run}.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "bfm report lead --scores {input} --out {output} > {log} 2>&1"


rule report_error_maps:
    """Per-gridpoint RMSE maps of the headline lines at lead 1."""
    input:
        "results/eval/{run}/error_maps.nc",
    output:
        report(
            "results/report/{run}/error_maps.png",
            caption="../report/error_maps.rst",
            category="Evaluation",
            labels={"item": "error maps", "run": "{run}"},
        ),
    log:
        "logs/report_error_maps/{run}.log",
    benchmark:
        "results/benchmarks/report_error_maps/{run}.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "bfm report error-maps --maps {input} --lead 1 --out {output} > {log} 2>&1"


rule report_forecast_maps:
    """Forecast, truth and error maps of t2m, msl and z500 at the first and last lead."""
    input:
        forecast="results/predict/{run}/forecast.nc",
        batches=get_predict_batches,
    output:
        report(
            "results/report/{run}/forecast_maps.png",
            caption="../report/forecast_maps.rst",
            category="Forecast",
            labels={"item": "forecast maps", "run": "{run}"},
        ),
    log:
        "logs/report_forecast_maps/{run}.log",
    benchmark:
        "results/benchmarks/report_forecast_maps/{run}.tsv"
    conda:
        "../../envs/report.yaml"
    params:
        batches=at_files("batches"),
    shell:
        "bfm report forecast-maps --forecast {input.forecast} --batches {params.batches}"
        " --out {output} > {log} 2>&1"


rule report_suitability_maps:
    """Species suitability maps of the forecast."""
    input:
        "results/predict/{run}/forecast.nc",
    output:
        report(
            "results/report/{run}/suitability_maps.png",
            caption="../report/suitability_maps.rst",
            category="Forecast",
            labels={"item": "suitability maps", "run": "{run}"},
        ),
    log:
        "logs/report_suitability_maps/{run}.log",
    benchmark:
        "results/benchmarks/report_suitability_maps/{run}.tsv"
    conda:
        "../../envs/report.yaml"
    shell:
        "bfm report suitability-maps --forecast {input} --out {output} > {log} 2>&1"


rule report_sdm:
    """Table of the species distribution models' cross-validated metrics."""
    input:
        "results/sdm/{run}/{set}/metrics.jsonl",
    output:
        report(
            "results/report/{run}/sdm_{set}.html",
            caption="../report/sdm.rst",
            category="Species distribution models",
            labels={"item": "SDM metrics", "set": "{set}", "run": "{run}"},
        ),
    log:
        "logs/report_sdm/{run}/{set}.log",
    benchmark:
        "results/benchmarks/report_sdm/{run}/{set}.tsv"
    wildcard_constraints:
        set=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    conda:
        "../../envs/report.yaml"
    shell:
        "bfm report sdm --metrics {input} --out {output} > {log} 2>&1"


if ablation_runs():

    rule report_ablations:
        """Table of the ablation variants' lead-1 scores beside the full model's."""
        input:
            get_ablation_scores(),
        output:
            report(
                f"results/report/{config['run']}/ablations.html",
                caption="../report/ablations.rst",
                category="Evaluation",
                labels={"item": "ablations", "run": config["run"]},
            ),
        log:
            "logs/report_ablations.log",
        benchmark:
            "results/benchmarks/report_ablations.tsv"
        conda:
            "../../envs/report.yaml"
        params:
            scores=get_ablation_score_args(),
        shell:
            "bfm report ablations --scores {params.scores} --out {output} > {log} 2>&1"
