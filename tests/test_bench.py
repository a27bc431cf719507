"""`bfm bench model`: it measures what it says on a small grid (the real figures come from
running it at 153 x 321; see the closing notes and benchmarks/README.md)."""

from __future__ import annotations

import json

from bfm.cli import main


def test_bench_model_reports_step_cost_memory_flops_and_the_loader(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "model", "--presets", "tiny", "--grid", "17x25", "--steps", "1"]
    args += ["--loader-batches", "3", "--workers", "0", "--threads", "1", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    cases = {(r["preset"], r["backbone"]): r for r in report["model"]}
    assert set(cases) == {("tiny", "swin3d"), ("tiny", "mvit")}
    for r in cases.values():
        assert (r["h"], r["w"], r["device_name"]) == (17, 25, "cpu")
        assert r["seconds_per_step"] > 0 and r["samples_per_s"] == 1 / r["seconds_per_step"]
        # A forward + backward pass costs more than two FLOPs per parameter applied once.
        assert r["flops_per_step"] > 2 * r["parameters"] > 0
        assert r["peak_memory_bytes"] >= r["case_memory_bytes"] > 0
        assert r["mfu"] is None  # no known peak for a CPU
    loader = report["loader"]
    assert loader["samples"] == 2 * 2  # two passes over the 2 pairs of 3 batches
    assert loader["samples_per_s"] > 0 and loader["batch_file_bytes"] > 0
    printed = capsys.readouterr().out
    assert "tiny    swin3d" in printed and "loader  0 workers" in printed


def test_bench_model_rejects_a_malformed_grid(caplog):
    assert main(["bench", "model", "--grid", "153by321", "--loader-batches", "0"]) == 1
    assert "--grid: expected HxW (e.g. 153x321), got '153by321'" in caplog.text


def test_bench_batches_measures_a_month_job_against_dd_and_projects_the_study(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "batches", "--grid", "9x11", "--days", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for phrase in ("CPU s per batch amortised", "month boundary", "x dd's time", "projection"):
        assert phrase in text, text
    figures = json.loads(out.read_text())
    assert figures["batches"] == 4 and figures["grid"] == [9, 11]
    assert figures["job"]["rss"] > 0 and figures["dd_seconds"] > 0
    assert figures["stats_partial"]["cpu"] > 0
    assert figures["projection"]["batches"] == round(21 * 365.25)


def test_bench_dag_times_two_windows_of_the_study(tmp_path, capsys, monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    out = tmp_path / "d.json"
    assert main(["bench", "dag", "--configfile", "config/config.yaml", "--step", "1D",
                 "--workdir", str(tmp_path), "--json", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "snakemake -n" in text and "time ratio short/full" in text, text
    (case,) = json.loads(out.read_text())
    # the demo's two months: the short window is one year of the same months
    assert case["full"]["jobs"]["batches"] == 2 and case["short"]["jobs"]["batches"] == 2
    assert case["full"]["seconds"] > 0 and case["ratio"] > 0


def test_bench_model_compares_activation_checkpointing(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "model", "--presets", "tiny", "--backbones", "swin3d", "--grid", "17x25"]
    args += ["--steps", "1", "--loader-batches", "0", "--threads", "1", "--json", str(out)]
    assert main([*args, "--activation-checkpointing", "both"]) == 0
    cases = {r["checkpointing"]: r for r in json.loads(out.read_text())["model"]}
    assert set(cases) == {False, True}
    assert cases[True]["parameters"] == cases[False]["parameters"]
    # The backward pass runs the checkpointed blocks' forward again: more FLOPs a step.
    assert cases[True]["flops_per_step"] > cases[False]["flops_per_step"]
    printed = capsys.readouterr().out
    assert "tiny    swin3d  ckpt" in printed
    assert "activation checkpointing, tiny swin3d: model memory" in printed
