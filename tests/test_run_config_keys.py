"""Every run-config key in pyproject.toml reaches the object that uses it.

Each key is set to a value other than its default, the config is parsed once
(:meth:`RunConfig.from_mapping`), and the value is looked up where the run uses it: a
settings dataclass, the built strategy, the clients' train settings, the instruction the
server sends, or a typed property of the config.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from server.defaults import DEFAULT_CITY, DEFAULTS, SECTIONS, field_key
from server.run_config import TRAIN_KEYS, RunConfig
from server.strategies import PARAMETERS
from server.strategies.fedgeo import FedGeo

REPO = Path(__file__).resolve().parents[1]
KEYS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])

CHOICES: dict[str, Any] = {
    "strategy": "fedavg",
    "model": "transformer",
    "out-dir": "elsewhere",
    "inject-attack": "scale",
    "scaffold-control": "option-ii",
    "fedgeo-exclusion-by": "entropy",
    "fedgeo-aggregation": "drift-weighted",
    "fedgeo-weighting": "uniform",
    "optimizer": "sgd",
    "data-format": "snap",
    "time-unit": "min",
    "client-state-dir": "states",
    "protocol-split": "per-user",
    "model-training-memory": "leave-one-out",
    "model-shared-score-init": "random",
    "model-prior-score-places": "all",
    "synthetic-distance-decay": "power",
    "dp": "server",
    "data-path": "/data/file.csv",
    "places-path": "/data/file.csv",
}
"""Values for string keys (any valid value other than the default)."""

SPECIAL: dict[str, Any] = {
    "protocol-train-frac": 0.7,
    "protocol-val-frac": 0.15,
    "population-dp-delta": 1e-6,
    "dp-delta": 1e-6,
    "prior-min-weight": 0.1,
    "fedgeo-floor": 0.2,
    "fraction-train": 0.5,
    "fraction-evaluate": 0.5,
    "inject-failure-fraction": 0.5,
    "inject-attack-fraction": 0.5,
    "synthetic-extreme-fraction": 0.3,
    "synthetic-worker-fraction": 0.5,
    "synthetic-noise-prob": 0.1,
    "synthetic-rho": 0.5,
    "synthetic-gamma": 0.3,
    "model-dropout": 0.2,
    "lr-decay": 0.99,
    "population-cohort-size": 50,
    "population-neighbours": 6,
}


def changed(key: str) -> Any:
    """A valid value of ``key`` that differs from its default."""
    if key in CHOICES:
        return CHOICES[key]
    if key in SPECIAL:
        return SPECIAL[key]
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default + 1.5 if default >= 0 else default - 1.5
    raise AssertionError(f"no changed value for {key!r}")


def _section_value(config: RunConfig, key: str) -> Any:
    for prefix, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field_key(prefix, field) == key:
                section = {
                    "model-": config.model,
                    "protocol-": config.protocol,
                    "synthetic-": config.synthetic,
                    "prior-": config.prior,
                    "population-": config.population,
                }[prefix]
                return getattr(section, field.name)
    raise KeyError(key)


def _strategy_value(key: str, value: Any) -> Any:
    """The value as the strategy built from the config holds it."""
    name = next(n for n, params in PARAMETERS.items() if any(p.key == key for p in params))
    extra = {"fedgeo-aggregation": "mean"} if name == "fedgeo" else {}
    strategy = RunConfig.from_mapping({"strategy": name, **extra, key: value}).build_strategy()
    param = next(p for p in PARAMETERS[name] if p.key == key)
    if isinstance(strategy, FedGeo) and key.startswith("fedgeo-") and strategy.exclusion:
        field = key.removeprefix("fedgeo-").replace("-", "_")
        aliases = {"exclusion": "enabled", "exclusion_by": "by", "exclusion_ramp": "ramp_rounds"}
        field = aliases.get(field, field)
        if hasattr(strategy.exclusion, field):
            return getattr(strategy.exclusion, field)
    return getattr(strategy, param.arg)


TYPED: dict[str, Any] = {
    "num-rounds": lambda c: c.num_rounds,
    "eval-every": lambda c: c.eval_every,
    "test-every": lambda c: c.test_every,
    "early-stop-patience": lambda c: c.early_stop_patience,
    "keep-best-model": lambda c: c.keep_best_model,
    "seed": lambda c: c.seed,
    "out-dir": lambda c: c.out_dir.name,
    "resume": lambda c: c.resume,
    "research-mode": lambda c: c.research_mode,
    "round-timeout": lambda c: c.round_timeout,
    "min-replies": lambda c: c.min_replies,
    "max-update-norm": lambda c: c.max_update_norm,
    "secure-aggregation": lambda c: c.secure_aggregation,
    "node-wait": lambda c: c.node_wait,
    "client-state-dir": lambda c: Path(c.client_state_dir()).name,
    "strategy": lambda c: c.strategy,
    "data-path": lambda c: c.data_spec().path,
    "data-format": lambda c: c.data_spec().format,
    "time-unit": lambda c: c.data_spec().time_unit,
    "places-path": lambda c: c.places_path,
    "profile-ldp-epsilon": lambda c: c.profile_ldp[0],
    "profile-ldp-radius-km": lambda c: c.profile_ldp[1],
    "dp": lambda c: c.dp.mode,
    "dp-noise-multiplier": lambda c: c.dp.noise_multiplier,
    "dp-clipping-norm": lambda c: c.dp.clipping_norm,
    "dp-delta": lambda c: c.dp.delta,
}
"""Keys read through a typed property of RunConfig (or the data spec the clients get)."""

NEEDS: dict[str, dict[str, Any]] = {
    "secure-aggregation": {"strategy": "fedavg"},
    "dp": {"strategy": "fedavg"},
    "dp-noise-multiplier": {"strategy": "fedavg", "dp": "server"},
    "dp-clipping-norm": {"strategy": "fedavg", "dp": "server"},
    "dp-delta": {"strategy": "fedavg", "dp": "server"},
    "time-unit": {"data-path": "checkins.csv"},
    "data-format": {"data-path": "checkins.csv"},
    "model-population-day-blocks": {"model-population-prior": True},
}
"""Other settings a key needs to be valid or visible."""

STRATEGY_KEYS = {p.key for params in PARAMETERS.values() for p in params}


@pytest.mark.parametrize("key", KEYS)
def test_every_pyproject_key_reaches_the_object_that_uses_it(key: str) -> None:
    value = changed(key)
    assert value != DEFAULTS[key]
    config = RunConfig.from_mapping({**NEEDS.get(key, {}), key: value})
    if key in TYPED:
        seen = TYPED[key](config)
        expected = {
            "data-path": "/data/file.csv",
            "places-path": Path("/data/file.csv"),
            "out-dir": "elsewhere",
            "client-state-dir": "states",
            "round-timeout": value,
        }.get(key, value)
        assert seen == expected, key
    elif key in TRAIN_KEYS:
        assert config.train_settings()[key] == value
    elif key in STRATEGY_KEYS:
        assert _strategy_value(key, value) == value
    else:
        assert _section_value(config, key) == value


def test_every_key_has_exactly_one_default() -> None:
    """The table is the union of its parts, each key once; the sections' defaults are
    the dataclasses' own."""
    for prefix, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            key = field_key(prefix, field)
            scalar = isinstance(field.default, bool | int | float | str)
            if scalar and key not in DEFAULT_CITY:
                assert DEFAULTS[key] == field.default, key
    fedgeo = FedGeo()
    assert fedgeo.aggregation == DEFAULTS["fedgeo-aggregation"]
    assert fedgeo.median_max_iter == DEFAULTS["fedgeo-median-iters"]
    assert fedgeo.proximal_mu == DEFAULTS["proximal-mu"]
