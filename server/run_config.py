"""The run configuration of a federation: flat Flower run-config keys and their parsing.

``flwr run .`` fills ``context.run_config`` from ``[tool.flwr.app.config]`` in
pyproject.toml (which mirrors :data:`DEFAULTS`) and ``--run-config``; ``fedgeo simulate``
passes its options as overrides of :data:`DEFAULTS`. Either way :meth:`RunConfig.from_mapping`
turns the flat dict into typed settings. Keys with a section prefix map to dataclass
fields (dashes for underscores): ``model-*`` -> :class:`~fedgeo.models.ModelConfig`,
``protocol-*`` -> :class:`~fedgeo.data.protocol.ProtocolConfig`, ``synthetic-*`` ->
:class:`~fedgeo.data.synthetic.SyntheticConfig`, ``prior-*`` ->
:class:`~fedgeo.geo.prior.PriorConfig`. Strategy keys are read by
:func:`server.strategies.build_strategy`, the ``dp*`` keys (differential privacy of the
updates) by :mod:`server.privacy`. The full table is in docs/federation.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedgeo.data.loading import DataSpec
from fedgeo.data.protocol import ProtocolConfig
from fedgeo.data.synthetic import SyntheticConfig
from fedgeo.geo.prior import PriorConfig
from fedgeo.message_keys import SCAFFOLD_CONTROLS
from fedgeo.models import ModelConfig
from fedgeo.population import PopulationConfig
from server.defaults import DEFAULTS, SECTIONS, Scalar, field_key
from server.privacy import DPSettings, wrap
from server.strategies.registry import PARAMETERS, build_strategy, coerce

SECURE_AGGREGATION_STRATEGIES = ("fedavg", "fedprox")
"""Strategies whose aggregate is the example-weighted mean, which a secure sum computes."""

RESUMABLE_CHANGES = frozenset(
    {
        "num-rounds",
        "resume",
        "out-dir",
        "round-timeout",
        "node-wait",
        "research-mode",
        "eval-every",
        "test-every",
        "early-stop-patience",
    }
)
"""Keys a resumed run may change; any other difference from the checkpoint is an error."""

TRAIN_KEYS = (
    "scaffold-control",
    "local-epochs",
    "batch-size",
    "lr",
    "lr-decay",
    "optimizer",
    "weight-decay",
    "grad-clip",
    "inject-failure-fraction",
    "inject-attack-fraction",
    "inject-attack",
    "inject-attack-scale",
)
"""Local-training keys forwarded to the clients."""


def _section_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Run-config key -> (section prefix, dataclass field) for every scalar field."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for prefix, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if isinstance(field.default, bool | int | float | str):
                out[field_key(prefix, field)] = (prefix, field)
    return out


def known_keys() -> set[str]:
    """Every key :meth:`RunConfig.from_mapping` accepts."""
    strategy_keys = {p.key for params in PARAMETERS.values() for p in params}
    return set(DEFAULTS) | strategy_keys | set(_section_fields())


def _coerce(key: str, value: Any) -> Scalar:
    """``value`` as the type of the key's default (strings from the command line too)."""
    sections = _section_fields()
    if key in DEFAULTS:
        kind: type = type(DEFAULTS[key])
    elif key in sections:
        kind = type(sections[key][1].default)
    else:
        kind = next(p.kind for ps in PARAMETERS.values() for p in ps if p.key == key)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return coerce(value, kind, key)


def merge(overrides: Mapping[str, Any] | None = None) -> dict[str, Scalar]:
    """:data:`DEFAULTS` updated with ``overrides`` (values coerced to the keys' types).

    Raises ``ValueError`` naming an unknown key or a value of the wrong type.
    """
    values: dict[str, Scalar] = dict(DEFAULTS)
    if not overrides:
        return values
    known = known_keys()
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown run-config key(s): {', '.join(unknown)}")
    for key, value in overrides.items():
        values[key] = _coerce(key, value)
    return values


def _section(values: Mapping[str, Scalar], prefix: str) -> dict[str, Any]:
    cls = SECTIONS[prefix]
    out = {}
    for field in dataclasses.fields(cls):
        key = field_key(prefix, field)
        if key in values:
            out[field.name] = values[key]
    return out


@dataclass(frozen=True)
class RunConfig:
    """Typed view of a flat run config (see docs/federation.md for every key)."""

    values: dict[str, Scalar]
    """The complete flat config (written to results.json, read by ``build_strategy``)."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> RunConfig:
        """Validate ``values`` (defaults fill what is missing) into a RunConfig."""
        config = cls(merge(values))
        for key in ("num-rounds", "eval-every", "local-epochs", "batch-size", "min-replies"):
            if int(config.values[key]) < 1:
                raise ValueError(f"run-config '{key}' must be >= 1, got {config.values[key]}")
        for key in ("test-every", "early-stop-patience"):
            if int(config.values[key]) < 0:
                raise ValueError(f"run-config '{key}' must be >= 0, got {config.values[key]}")
        if not 0.0 < float(config.values["lr-decay"]) <= 1.0:
            raise ValueError(
                f"run-config 'lr-decay' must be in (0, 1], got {config.values['lr-decay']}"
            )
        if config.values["scaffold-control"] not in SCAFFOLD_CONTROLS:
            raise ValueError(
                f"run-config 'scaffold-control' must be one of {', '.join(SCAFFOLD_CONTROLS)}, "
                f"got {config.values['scaffold-control']!r}"
            )
        if config.secure_aggregation:
            problems = []
            if config.strategy not in SECURE_AGGREGATION_STRATEGIES:
                problems.append(
                    f"strategy {config.strategy!r} (it needs a plain mean: "
                    f"{', '.join(SECURE_AGGREGATION_STRATEGIES)})"
                )
            if str(config.values["dp"]).strip().lower() != "none":
                problems.append("dp (the server would have to clip each update)")
            if float(config.values["max-update-norm"]) > 0:
                problems.append("max-update-norm (the server cannot see an update's norm)")
            if problems:
                raise ValueError(
                    "run-config 'secure-aggregation' cannot be used with " + "; ".join(problems)
                )
        # Build every settings object once, so that a bad value fails here, before any
        # node starts: the sections, the strategy, the DP settings and their fit.
        _ = (config.model, config.protocol, config.prior, config.synthetic, config.population)
        config.build_strategy()
        return config

    def build_strategy(self) -> Strategy:
        """A fresh strategy of this run (:func:`server.strategies.build_strategy`), in
        Flower's DP wrapper when ``dp`` asks for one (:func:`server.privacy.wrap`)."""
        strategy = build_strategy(self.strategy, self.values, seed=self.seed)
        return wrap(strategy, self.dp)

    @property
    def dp(self) -> DPSettings | None:
        """Differential privacy of the model updates (None: off)."""
        return DPSettings.from_values(self.values)

    def __getitem__(self, key: str) -> Scalar:
        return self.values[key]

    @property
    def num_rounds(self) -> int:
        return int(self.values["num-rounds"])

    @property
    def eval_every(self) -> int:
        return int(self.values["eval-every"])

    @property
    def test_every(self) -> int:
        """Test every node every K rounds (0: only the final test)."""
        return int(self.values["test-every"])

    @property
    def early_stop_patience(self) -> int:
        """Stop after this many validations in a row without a better validation MRR
        (0: run every round)."""
        return int(self.values["early-stop-patience"])

    @property
    def keep_best_model(self) -> bool:
        """Validate the starting model too, and test the global model of the best
        validation MRR instead of the last one (every check validates the same clients)."""
        return bool(self.values["keep-best-model"])

    @property
    def seed(self) -> int:
        return int(self.values["seed"])

    @property
    def out_dir(self) -> Path:
        return Path(str(self.values["out-dir"])).expanduser().resolve()

    @property
    def strategy(self) -> str:
        return str(self.values["strategy"])

    @property
    def round_timeout(self) -> float | None:
        """Seconds to wait for a round's replies (None: wait for all)."""
        timeout = float(self.values["round-timeout"])
        return timeout if timeout > 0 else None

    @property
    def resume(self) -> bool:
        """Continue from the checkpoint in ``out-dir`` when there is one."""
        return bool(self.values["resume"])

    @property
    def research_mode(self) -> bool:
        """Simulation only: write every test sample's rank (``predictions.csv``)."""
        return bool(self.values["research-mode"])

    @property
    def min_replies(self) -> int:
        """Valid train replies a round needs to aggregate."""
        return int(self.values["min-replies"])

    @property
    def max_update_norm(self) -> float:
        """Updates longer than this are rejected (0: no bound)."""
        return float(self.values["max-update-norm"])

    @property
    def node_wait(self) -> float:
        """Seconds to wait for the nodes to connect."""
        return float(self.values["node-wait"])

    @property
    def min_nodes(self) -> int:
        """The most nodes any of the strategy's minimums waits for."""
        keys = ("min-available-nodes", "min-train-nodes", "min-evaluate-nodes")
        return max(int(self.values[key]) for key in keys)

    @property
    def profile_ldp(self) -> tuple[float, float]:
        """``(epsilon, radius_km)`` of the profiles' local DP (epsilon 0: off)."""
        epsilon, radius = self.values["profile-ldp-epsilon"], self.values["profile-ldp-radius-km"]
        return float(epsilon), float(radius)

    @property
    def model(self) -> ModelConfig:
        return ModelConfig.from_dict(_section(self.values, "model-"))

    @property
    def secure_aggregation(self) -> bool:
        """Model updates are summed by secure summation (mean strategies only)."""
        return bool(self.values["secure-aggregation"])

    @property
    def population(self) -> PopulationConfig:
        """Population prior settings (used when ``model-population-prior`` is on)."""
        return PopulationConfig(**_section(self.values, "population-"))

    @property
    def protocol(self) -> ProtocolConfig:
        return ProtocolConfig(**_section(self.values, "protocol-"))

    @property
    def prior(self) -> PriorConfig:
        """Prior settings; ``prior-bandwidth-km`` <= 0 means automatic (the median
        distance to the k-th neighbour)."""
        values = _section(self.values, "prior-")
        if float(values.get("bandwidth_km") or 0.0) <= 0.0:
            values["bandwidth_km"] = None
        return PriorConfig(**values)

    @property
    def synthetic(self) -> SyntheticConfig | None:
        """The synthetic city's settings, or None when ``data-path`` is set."""
        if self.data_path is not None:
            return None
        return SyntheticConfig(**_section(self.values, "synthetic-"))

    @property
    def data_path(self) -> Path | None:
        path = str(self.values["data-path"]).strip()
        return Path(path).expanduser().resolve() if path else None

    @property
    def places_path(self) -> Path | None:
        path = str(self.values["places-path"]).strip()
        return Path(path).expanduser().resolve() if path else None

    @property
    def time_unit(self) -> str | None:
        unit = str(self.values["time-unit"]).strip()
        return unit or None

    def data_spec(self) -> DataSpec:
        """The simulation data set (sent to the clients as JSON under ``"data-spec"``)."""
        return DataSpec(
            path=str(self.data_path) if self.data_path is not None else None,
            format=str(self.values["data-format"]),
            time_unit=self.time_unit,
            protocol=self.protocol,
            synthetic=self.synthetic,
        )

    def train_settings(self) -> dict[str, Scalar]:
        """The local-training keys sent to the clients."""
        return {key: self.values[key] for key in TRAIN_KEYS}

    def client_state_dir(self) -> str:
        """Where simulated clients keep their state ("" = in their Flower context)."""
        path = str(self.values["client-state-dir"]).strip()
        return str(Path(path).expanduser().resolve()) if path else ""

    def run_key(self) -> str:
        """A short id of this federation (from its output folder), naming the clients'
        state so that several federations in one simulation never share it."""
        return hashlib.sha256(str(self.out_dir).encode()).hexdigest()[:16]

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """Keys whose value differs from ``other`` and that a resumed run may not change."""
        keys = (set(self.values) | set(other)) - RESUMABLE_CHANGES
        # A key the checkpoint does not name had its default when it was written.
        theirs = {**DEFAULTS, **other}
        return sorted(k for k in keys if self.values.get(k) != theirs.get(k))
