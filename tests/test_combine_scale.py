"""Rule combine in bounded memory: chunked, the output is the whole-table combine's, exactly."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bfm import sources
from bfm.config import validate_config
from bfm.contracts import occurrence as contract
from bfm.contracts.occurrence import Quarantine, Reason
from bfm.fileio import atomic_path
from bfm.sources import gbif, gbif_dwca, inaturalist, occurrence_store, occurrences
from bfm.sources.base import Study
from bfm.sources.occurrence_spill import SeenKeys
from bfm.species_list import read_species
from bfm.testing import ROOT, demo_config

SPECIES = read_species(ROOT / "tests/species.csv")
ROW = dict.fromkeys(gbif.SIMPLE_CSV_COLUMNS, "")


def combine_whole(study: Study, out: Path) -> Path:
    """The combine that held every member's records at once (before the spill): the oracle."""
    opts = occurrences.options(study)
    total = Quarantine(str(out))
    per_source: dict[str, dict[str, Any]] = {}
    cleaned: dict[str, pd.DataFrame] = {}
    t0, t1 = occurrences.window(study)
    for member in occurrences.members(study):
        table, _media, q = member.records(occurrences.member_files(member, study), study)
        media = {r: q.dropped.pop(r) for r in list(q.dropped) if r in occurrences.MEDIA_REASONS}
        for r in media:
            q.examples.pop(r, None)
        table = contract.clean(table, q, max_uncertainty_m=opts["max_uncertainty_m"])
        inside = study.grid.contains(table["latitude"].to_numpy(), table["longitude"].to_numpy())
        table = q.drop(~inside, Reason.OUTSIDE_GRID, table)
        start, end = table["start"].to_numpy(), table["end"].to_numpy()
        overlaps = (end >= np.datetime64(t0)) & (start < np.datetime64(t1))
        overlaps &= ~((end == np.datetime64(t0)) & (end > start))
        table = q.drop(~overlaps, Reason.OUTSIDE_WINDOW, table)
        cleaned[member.name] = table
        per_source[member.name] = q.report(extra={"media_dropped": media})
        total.merge(q)
    both = contract.deduplicate(cleaned, total)
    both = both.sort_values(["start", "record_id"], kind="stable", ignore_index=True)
    for name in per_source:
        per_source[name]["kept"] = int((both["source"] == name).sum())
    with atomic_path(out) as tmp:
        occurrence_store.write_by_period([both], tmp, "start", "end", occurrences.RECORD_ORDER)
    total.write(out, kept=len(both), extra={"sources": per_source, "options": opts})
    return out


def gbif_rows(n: int, seed: int, inat_ids: list[str], repeats: bool = True
              ) -> list[dict[str, str]]:  # fmt: skip
    """``n`` SIMPLE_CSV rows over 2009-12..2012-01 with every fault the contract drops, ids
    repeated far apart (across chunks; the first copy sometimes dropped for another reason)
    and republications of iNaturalist observations (present in its member, or not, twice)."""
    rng = np.random.default_rng(seed)
    names = list(SPECIES["scientific_name"]) + ["Felis catus"]
    dates = pd.date_range("2009-12-01", "2012-01-31", freq="D")
    rows = []
    for i in range(n):
        day = dates[rng.integers(len(dates))]
        kind = rng.integers(6)
        later = day + pd.Timedelta(days=40)
        uncertainty = str(rng.choice(["30", "", "20000"]))
        event = [f"{day:%Y-%m-%d}", f"{day:%Y-%m-%dT%H}:{rng.integers(60):02d}:00Z",
                 f"{day:%Y-%m}", f"{day:%Y}", f"{day:%Y-%m-%d}/{later:%Y-%m-%d}",
                 f"{day:%Y-%m-%d}"][kind]  # fmt: skip
        rows.append({**ROW, "gbifID": str(10_000 + i), "species": str(rng.choice(names)),
                     "decimalLatitude": f"{rng.uniform(43.0, 57.0):.4f}",
                     "decimalLongitude": f"{rng.uniform(-1.0, 21.0):.4f}", "eventDate": event,
                     "occurrenceStatus": "PRESENT", "basisOfRecord": "HUMAN_OBSERVATION",
                     "coordinateUncertaintyInMeters": uncertainty})  # fmt: skip
    faults = [("occurrenceStatus", "ABSENT"), ("basisOfRecord", "FOSSIL_SPECIMEN"),
              ("basisOfRecord", "LIVING_SPECIMEN"), ("decimalLatitude", ""),
              ("decimalLatitude", "95"), ("eventDate", ""),
              ("eventDate", "2010-13-01")]  # fmt: skip
    for i in rng.choice(n, n // 10, replace=False):
        key, value = faults[rng.integers(len(faults))]
        rows[i][key] = value
    rows[7].update(decimalLatitude="0", decimalLongitude="0")
    for i in rng.choice(n, n // 20 if repeats else 0, replace=False):  # a later copy
        rows[i]["gbifID"] = rows[int(rng.integers(0, max(1, i - 50)))]["gbifID"]
    for k, native in enumerate(inat_ids):
        url = f"https://www.inaturalist.org/observations/{native}"
        for i in rng.choice(n, 2 if k % 2 else 1, replace=False):
            rows[i].update(datasetKey=gbif_dwca.INATURALIST, occurrenceID=url)
    return rows


def write_simple_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    table = pd.DataFrame(rows, columns=list(gbif.SIMPLE_CSV_COLUMNS))
    text = table.to_csv(sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0000001-240101000000.csv", text)
    return path


def make_study(tmp_path: Path, members: dict[str, Any]) -> Study:
    config = demo_config(species=str(ROOT / "tests/species.csv"))
    config["time"].update(start="2010-01-01", end="2011-12-31", eval_start="2011-11-01")
    config["sources"] = {"gbif": {"mode": "file", "path": str(tmp_path / "gbif.zip")},
                         **members, "occurrences": {"mode": "combine"}}  # fmt: skip
    return Study.from_config(validate_config(config))


def run_both(study: Study, out: Path, chunk_rows: int) -> tuple[Path, Path, int]:
    """The oracle's output moved aside, then the chunked combine's at the same path."""
    combine_whole(study, out)
    old = out.with_name("old.parquet")
    out.rename(old)
    contract.quarantine_path(out).rename(contract.quarantine_path(old))
    _, largest = occurrences.combine_counted(study, out, chunk_rows)
    return old, out, largest


def assert_same(old: Path, new: Path, study: Study) -> None:
    assert contract.quarantine_path(new).read_text() == contract.quarantine_path(old).read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(new), pd.read_parquet(old))  # file order
    old_meta, new_meta = pq.ParquetFile(old), pq.ParquetFile(new)
    assert new_meta.schema_arrow.equals(old_meta.schema_arrow, check_metadata=True)
    assert new_meta.metadata.num_row_groups == old_meta.metadata.num_row_groups
    t0, t1 = occurrences.window(study)
    months = pd.date_range(t0, t1, freq="MS")
    for a, b in [(t0, t1), *zip(months[:-1], months[1:], strict=True)]:
        pd.testing.assert_frame_equal(occurrences.read_records(new, a, b),
                                      occurrences.read_records(old, a, b))  # fmt: skip


def test_seen_keys_find_every_repeat_across_chunks_as_duplicated_does_over_the_whole():
    rng = np.random.default_rng(1)
    ids = pd.Series([f"gbif:{v}" for v in rng.integers(0, 400, 1000)])
    seen = SeenKeys()
    chunked = np.concatenate([seen.repeated(ids.iloc[i : i + 37]) for i in range(0, 1000, 37)])
    assert chunked.sum() > 300  # the case has repeats, across and within chunks
    assert np.array_equal(chunked, ids.duplicated(keep="first").to_numpy())


@pytest.mark.parametrize("repeats", [True, False])
def test_chunked_combine_of_gbif_and_inaturalist_equals_the_whole_table_combine(
    tmp_path, monkeypatch, repeats
):
    monkeypatch.chdir(tmp_path)  # raw files lie under results/raw/<source>/
    study = make_study(tmp_path, {"inaturalist": {"mode": "sample", "seed": 3}})
    obs = Path("results/raw/inaturalist") / inaturalist.RAW_NAME
    obs.parent.mkdir(parents=True)
    sources.get("inaturalist").sample(obs.name, obs, study)
    inat = inaturalist.records(obs, SPECIES)[0]
    native = [r.split(":")[1] for r in inat["record_id"].iloc[:20]]
    absent = [str(900_000_000 + k) for k in range(10)]  # originals the member lacks
    write_simple_csv(tmp_path / "gbif.zip", gbif_rows(3000, 5, native + absent, repeats))
    old, new, _ = run_both(study, Path("results/raw/occurrences/records.parquet"), 250)
    report = contract.read_quarantine(contract.quarantine_path(new))
    g = report["sources"]["gbif"]
    assert len(g["dropped"]) >= 9 and report["kept"] > 1000
    if repeats:  # repeats within GBIF (the example) and republications of iNaturalist
        assert g["dropped"]["duplicate"] > 100
        assert report["dropped"]["duplicate"] > g["dropped"]["duplicate"]
    else:  # only republications: the example is the first one set aside for its original
        assert "duplicate" not in g["dropped"] and report["dropped"]["duplicate"] >= 10
        assert report["examples"]["duplicate"].startswith("gbif:")
    assert_same(old, new, study)


def test_rows_held_at_once_are_a_chunk_or_a_start_month_not_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = make_study(tmp_path, {})
    write_simple_csv(tmp_path / "gbif.zip", gbif_rows(3000, 6, []))
    old, new, largest = run_both(study, Path("results/raw/occurrences/records.parquet"), 200)
    assert_same(old, new, study)
    table = pd.read_parquet(new)
    per_month = pd.Series(occurrence_store.month_index(table["start"])).value_counts()
    assert len(per_month) >= 24 and len(table) > 1000
    assert largest <= max(200, int(per_month.max())) < len(table) / 5


@pytest.mark.parametrize("rows", [[], [{**ROW, "gbifID": "1", "eventDate": ""}]])
def test_a_download_with_nothing_kept_combines_to_the_same_empty_table(tmp_path, monkeypatch,
                                                                       rows):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    study = make_study(tmp_path, {})
    write_simple_csv(tmp_path / "gbif.zip", rows)
    old, new, _ = run_both(study, Path("results/raw/occurrences/records.parquet"), 10)
    assert_same(old, new, study)
    assert len(pd.read_parquet(new)) == 0
