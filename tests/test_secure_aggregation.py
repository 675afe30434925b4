"""Secure summation through Flower's simulation engine: FedAvg with secure aggregation,
and the population prior built securely and in the clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import NODES, TINY_RUN

from experiments.simulate_cli import simulate
from server.checkpoint import load_checkpoint
from server.run_config import RunConfig

BASE = {**TINY_RUN, "num-rounds": 2, "model-user-embedding": False}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("secure")
    population = {"model-population-prior": True, "population-cohort-size": 4}
    plan = {
        "fedavg": {**BASE, "strategy": "fedavg"},
        "fedavg-secure": {**BASE, "strategy": "fedavg", "secure-aggregation": True},
        "population-secure": {**BASE, "strategy": "fedgeo", **population},
        "population-plain": {
            **BASE,
            "strategy": "fedgeo",
            **population,
            "population-secure-sum": False,
            "population-refresh": 1,
        },
    }
    for name, values in plan.items():
        values["out-dir"] = str(root / name)
    results = simulate(list(plan.values()), NODES, 2, progress=False)
    return {
        name: {"results": r, "out": Path(plan[name]["out-dir"])}
        for name, r in zip(plan, results, strict=True)
    }


def test_secure_fedavg_reaches_fedavgs_model_without_seeing_an_update(runs):
    plain = load_checkpoint(runs["fedavg"]["out"]).arrays
    secure = load_checkpoint(runs["fedavg-secure"]["out"]).arrays
    assert plain.keys() == secure.keys()
    for key in plain:
        np.testing.assert_allclose(secure[key], plain[key], atol=1e-4)
    for record in runs["fedavg-secure"]["results"]["rounds"]:
        assert record["skipped"] is None
        assert record["secure_sum"]["summed"] == record["replies"] == NODES
        assert "secure_sum" not in next(iter(runs["fedavg"]["results"]["rounds"]))


def test_the_population_prior_is_the_same_built_securely_or_in_the_clear(runs):
    secure, plain = (
        np.load(runs[name]["out"] / "population.npz")
        for name in ("population-secure", "population-plain")
    )
    assert secure.files == plain.files
    for key in secure.files:
        np.testing.assert_array_equal(secure[key], plain[key])
    release = runs["population-secure"]["results"]["population"]["releases"][0]
    assert release["contributors"] == NODES and release["cohorts"] == 2
    assert release["secure_sum"] is True and release["transitions"] > 0
    # population-refresh = 1 rebuilds it before every round (the data do not change).
    refreshed = runs["population-plain"]["results"]["population"]["releases"]
    assert [r["round"] for r in refreshed] == [1, 2]
    assert all(r["contributors"] == NODES and r["rejected"] == 0 for r in refreshed)
    # Same prior, same seeds: the two federations train the same model.
    a = load_checkpoint(runs["population-secure"]["out"]).arrays
    b = load_checkpoint(runs["population-plain"]["out"]).arrays
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (
        runs["population-secure"]["results"]["test"] == runs["population-plain"]["results"]["test"]
    )
    assert "population_gate.weight" in a


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"strategy": "fedgeo"}, "strategy 'fedgeo'"),
        ({"strategy": "fedavg", "dp": "server"}, "dp"),
        ({"strategy": "fedavg", "max-update-norm": 5.0}, "max-update-norm"),
    ],
)
def test_secure_aggregation_refuses_what_needs_individual_updates(values, reason):
    with pytest.raises(ValueError, match=f"'secure-aggregation' cannot be used with .*{reason}"):
        RunConfig.from_mapping({"secure-aggregation": True, **values})


def test_a_bad_population_setting_names_its_key():
    with pytest.raises(ValueError, match="population-dp-epsilon"):
        RunConfig.from_mapping({"population-dp-epsilon": -1.0})
