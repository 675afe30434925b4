"""Sparse histories from a dense table: `fedgeo data sparsify`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedgeo.cli.main import main
from fedgeo.data.readers import read_checkins
from fedgeo.data.sparsify import SECONDS_PER_DAY, days_kept, sparse_days


def dense_table(users: int = 30, days: int = 20, per_day: int = 3) -> pd.DataFrame:
    """Every user checks in ``per_day`` times on each of ``days`` days."""
    rows = []
    for u in range(users):
        for d in range(days):
            for k in range(per_day):
                rows.append(
                    (
                        u,
                        (u + d + k) % 7,
                        40.7,
                        -74.0 + 0.001 * k,
                        d * SECONDS_PER_DAY + 3600 * (8 + k),
                    )
                )
    return pd.DataFrame(
        rows, columns=["user_id", "location_id", "latitude", "longitude", "timestamp"]
    )


def test_sparse_days_keeps_whole_days_a_long_tailed_number_of_them() -> None:
    table = dense_table()
    kept = sparse_days(table, median_days=3, sigma=1.0, seed=0)
    day = kept["timestamp"] // SECONDS_PER_DAY
    per_user_days = kept.assign(day=day).groupby("user_id")["day"].nunique()
    per_user_rows = kept.groupby("user_id").size()
    # every user keeps at least one whole day: all 3 check-ins of each kept day
    assert len(per_user_days) == 30 and per_user_days.min() >= 1
    np.testing.assert_array_equal(per_user_rows.to_numpy(), 3 * per_user_days.to_numpy())
    assert per_user_days.median() == pytest.approx(3, abs=1)
    assert per_user_days.max() > per_user_days.median()  # a tail
    # the kept rows are rows of the input, in input order
    assert kept.merge(table, how="left", indicator=True)["_merge"].eq("both").all()
    assert (kept.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()


def test_sparse_days_is_seeded_and_sigma_zero_keeps_the_median_for_everyone() -> None:
    table = dense_table()
    pd.testing.assert_frame_equal(sparse_days(table, seed=4), sparse_days(table, seed=4))
    assert not sparse_days(table, seed=4).equals(sparse_days(table, seed=5))
    exact = sparse_days(table, median_days=2, sigma=0.0, seed=1)
    assert (exact.groupby("user_id").size() == 6).all()
    # never more days than a user has
    assert (
        days_kept(np.array([1, 2, 50]), 10.0, 0.0, np.random.default_rng(0)) == [1, 2, 10]
    ).all()


def test_sparsify_command_writes_a_csv_that_reads_back_to_the_kept_rows(tmp_path, capsys) -> None:
    source, out = tmp_path / "dense.csv", tmp_path / "sparse.csv"
    dense_table().rename(columns={"timestamp": "seconds"}).to_csv(source, index=False)
    assert main(["data", "sparsify", str(source), str(out), "--median-days", "2"]) == 0
    assert "kept" in capsys.readouterr().out
    read = read_checkins(out, "csv")
    assert read.relative_time  # relative times stay relative
    expected = sparse_days(read_checkins(source, "csv").table, median_days=2)
    pd.testing.assert_frame_equal(
        read.table[expected.columns].reset_index(drop=True), expected, check_dtype=False
    )


def test_sparsify_command_rejects_a_bad_setting_in_one_line(tmp_path, capsys) -> None:
    source = tmp_path / "dense.csv"
    dense_table().to_csv(source, index=False)
    assert (
        main(["data", "sparsify", str(source), str(tmp_path / "o.csv"), "--median-days", "0"]) == 2
    )
    assert "--median-days: expected a number > 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sigma must be non-negative"):
        sparse_days(dense_table(), sigma=-1.0)


def test_sparsify_command_names_an_output_folder_that_does_not_exist(tmp_path, capsys) -> None:
    source = tmp_path / "dense.csv"
    dense_table().to_csv(source, index=False)
    out = tmp_path / "no-such-folder" / "sparse.csv"
    assert main(["data", "sparsify", str(source), str(out)]) == 2
    assert f"{out}: its folder {out.parent} does not exist" in capsys.readouterr().err
