# Report figures and tables, flagged for `snakemake --report report.zip`.


rule report_loss:
    """Training loss curve."""
    input:
        "results/models/{run}/metrics.jsonl",
    output:
        report(
            "results/report/{run}/loss.svg",
            caption="../report/loss.rst",
            category="Training",
            labels={"run": "{run}", "figure": "loss curve"},
        ),
    log:
        "logs/report_loss/{run}.log",
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
            labels={"run": "{run}", "table": "scores"},
        ),
    log:
        "logs/report_scores/{run}.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "bfm report scores --scores {input} --out {output} > {log} 2>&1"
