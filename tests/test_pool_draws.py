"""experiments.pool_draws: sample-weighted pooling of test metrics over data sets."""

from __future__ import annotations

import csv

import pytest

from experiments.pool_draws import POOLED, main, pool

FIELDS = ["method", "seed", "samples", "new-samples", *POOLED]


def _write(folder, rows):
    folder.mkdir(parents=True)
    with (folder / "runs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _row(method, seed, samples, new, value, new_value):
    return {
        "method": method,
        "seed": seed,
        "samples": samples,
        "new-samples": new,
        **{m: value for m in POOLED},
        "new-acc@10": new_value,
    }


def test_pooled_metrics_weight_each_data_set_by_its_samples(tmp_path):
    _write(tmp_path / "a", [_row("m", 0, 100, 40, 0.2, 0.1), _row("m", 1, 100, 40, 0.4, 0.1)])
    _write(
        tmp_path / "b",
        [_row("m", 0, 300, 0, 0.6, 0.9), _row("m", 1, 300, 0, 0.8, 0.9), _row("x", 0, 3, 0, 1, 1)],
    )
    (row,) = pool([tmp_path / "a", tmp_path / "b"])  # "x" is not in every folder
    assert row["method"] == "m" and row["seeds"] == [0, 1] and row["samples"] == 400
    assert row["acc@1"][0] == pytest.approx(((0.2 + 0.6 * 3) / 4 + (0.4 + 0.8 * 3) / 4) / 2)
    # return samples: 60 and 300; new samples: 40 and none
    assert row["return-mrr"][0] == pytest.approx(
        ((0.2 * 60 + 0.6 * 300) + (0.4 * 60 + 0.8 * 300)) / 720
    )
    assert row["new-acc@10"] == (pytest.approx(0.1), pytest.approx(0.0))
    assert row["by_folder"] == [pytest.approx(0.3), pytest.approx(0.7)]


def test_a_folder_without_runs_csv_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and "runs.csv" in err[0]
