"""Experiment configs: one TOML file per results table (experiments/configs/).

A config names a data set, the seeds, the run-config overrides every federated run
shares (the budget), the methods to compare and, optionally, one run-config key to sweep::

    name = "nyc-main"
    data = "../shared/data/foursquare-nyc/checkins.csv"   # relative to the repo root
    format = "csv"             # the data file's format: csv (default), tsmc2014 or snap
    seeds = [0, 1, 2]

    [run]                      # run-config keys shared by every run (docs/federation.md)
    num-rounds = 10
    fraction-train = 0.0932

    [[method]]                 # a federated run through Flower's simulation engine
    name = "fedavg"
    label = "FedAvg"
    strategy = "fedavg"
    set = { model-prior-init = false }

    [[method]]                 # the same model trained centrally
    name = "centralized"
    kind = "centralized"
    epochs = 5

    [[method]]                 # a reference predictor (fedgeo.baselines)
    name = "markov"
    kind = "baseline"
    predictor = "markov"

    [sweep]                    # optional: repeat every method for each value of one key
    key = "synthetic-extreme-fraction"
    values = [0.0, 0.25, 0.5]
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgeo.data.readers import FORMATS

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (data paths in configs are relative to it)."""
KINDS = ("federated", "centralized", "baseline")
RUNNER_KEYS = {
    "data-path": "the top-level key 'data' (or --data)",
    "data-format": "the top-level key 'format' (or --format)",
    "seed": "the top-level key 'seeds' (or --seeds)",
    "out-dir": "--out",
}
"""Run-config keys the runner sets for every run, and where a user sets them instead."""


class ConfigError(ValueError):
    """An experiment config that cannot be run (the message names the file and field)."""


@dataclass(frozen=True)
class Method:
    """One row of a results table."""

    name: str
    label: str
    kind: str = "federated"
    strategy: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Run-config keys of this method on top of the config's ``[run]``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Other keys (``epochs`` of a centralized run, ``predictor`` of a baseline...)."""


@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class ExperimentConfig:
    """A parsed experiment config (see the module docstring)."""

    path: Path
    name: str
    title: str
    data: Path | None
    data_format: str
    seeds: tuple[int, ...]
    run: dict[str, Any]
    methods: tuple[Method, ...]
    sweep: Sweep | None = None

    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """``(label, overrides)`` per sweep value (one unnamed variant without a sweep)."""
        if self.sweep is None:
            return [("", {})]
        return [(f"{self.sweep.key}={v}", {self.sweep.key: v}) for v in self.sweep.values]

    def method(self, name: str) -> Method:
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(name)


def check_run_keys(keys: Iterable[str], where: str) -> None:
    """Reject a run-config key the runner sets itself (:data:`RUNNER_KEYS`), which would
    otherwise be silently replaced."""
    for key in keys:
        if key in RUNNER_KEYS:
            raise ConfigError(
                f"{where}: run-config key '{key}' is set by the runner: use {RUNNER_KEYS[key]}"
            )


def _need(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing field '{key}'")
    value = table[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _method(table: dict[str, Any], where: str) -> Method:
    name = _need(table, "name", str, where)
    kind = table.get("kind", "federated")
    if kind not in KINDS:
        raise ConfigError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    overrides = table.get("set", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: field 'set' must be a table of run-config keys")
    check_run_keys(overrides, f"{where}: field 'set'")
    strategy = ""
    if kind == "federated":
        strategy = _need(table, "strategy", str, where)
    elif kind == "baseline":
        _need(table, "predictor", str, where)
    reserved = {"name", "label", "kind", "strategy", "set"}
    options = {k: v for k, v in table.items() if k not in reserved}
    return Method(name, str(table.get("label", name)), kind, strategy, dict(overrides), options)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and check an experiment config."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    where = str(path)
    name = _need(raw, "name", str, where)
    seeds = tuple(int(s) for s in _need(raw, "seeds", list, where))
    if not seeds:
        raise ConfigError(f"{where}: field 'seeds' is empty")
    methods = _need(raw, "method", list, where)
    parsed = tuple(_method(m, f"{where}: method {i + 1}") for i, m in enumerate(methods))
    names = [m.name for m in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: method names repeat: {names}")
    sweep = None
    if "sweep" in raw:
        table = _need(raw, "sweep", dict, where)
        sweep = Sweep(
            _need(table, "key", str, f"{where}: sweep"),
            tuple(_need(table, "values", list, f"{where}: sweep")),
        )
    data = raw.get("data")
    data_format = str(raw.get("format", "csv"))
    if data_format not in FORMATS:
        raise ConfigError(
            f"{where}: field 'format' must be one of {', '.join(FORMATS)}, got {data_format!r}"
        )
    run = raw.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{where}: field 'run' must be a table of run-config keys")
    check_run_keys(run, f"{where}: [run]")
    return ExperimentConfig(
        path=path,
        name=name,
        title=str(raw.get("title", name)),
        data=(ROOT / data).resolve() if data else None,
        data_format=data_format,
        seeds=seeds,
        run=dict(run),
        methods=parsed,
        sweep=sweep,
    )
