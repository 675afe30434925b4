"""Every run-config key and its default: the one table a federation's settings start from.

The keys of a settings section (``model-*``, ``protocol-*``, ``synthetic-*``, ``prior-*``,
``population-*``) take their defaults from the library's dataclasses, where each is
defined once; the others are written here. pyproject.toml's ``[tool.flwr.app.config]``
holds the same table (tests/test_federation.py keeps them equal), and the strategies read
their defaults from it (:mod:`server.strategies.registry`, :class:`~server.strategies.FedGeo`).
docs/federation.md explains every key.
"""

from __future__ import annotations

import dataclasses

from fedgeo.data.protocol import ProtocolConfig
from fedgeo.data.synthetic import SyntheticConfig
from fedgeo.geo.prior import PriorConfig
from fedgeo.models import ModelConfig
from fedgeo.population import PopulationConfig

Scalar = bool | int | float | str

SECTIONS: dict[str, type] = {
    "model-": ModelConfig,
    "protocol-": ProtocolConfig,
    "synthetic-": SyntheticConfig,
    "prior-": PriorConfig,
    "population-": PopulationConfig,
}
"""Key prefix -> settings dataclass whose fields the prefixed keys set (dashes for
underscores: ``model-embedding-dim`` -> ``ModelConfig.embedding_dim``)."""

AUTOMATIC: dict[str, Scalar] = {"prior-bandwidth-km": 0.0}
"""Section keys whose dataclass default is None ("choose automatically"), written in the
run config as 0."""

DEFAULT_CITY: dict[str, Scalar] = {"synthetic-num-users": 12, "synthetic-num-places": 200}
"""The embedded default city of ``fedgeo simulate`` and ``flwr run .``: a 12-user
version of the synthetic city, so that the main job runs in a minute (``flwr run .``
federates its 12 users on Flower's 2 default SuperNodes, or one node each with
``--federation-config "num-supernodes=12"``). The
library's ``SyntheticConfig()`` (200 users) is the city of ``fedgeo centralized`` and
``fedgeo baseline`` without ``--data``."""


RENAMED: dict[tuple[str, str], str] = {("model-", "architecture"): "model"}
"""Section fields whose run-config key is not prefix + name: the model is chosen with
``model = "transformer"``."""


def field_key(prefix: str, field: dataclasses.Field) -> str:
    """The run-config key of a settings field."""
    return RENAMED.get((prefix, field.name), prefix + field.name.replace("_", "-"))


def section_defaults(prefix: str, cls: type) -> dict[str, Scalar]:
    """The run-config keys of ``cls``'s scalar fields with their dataclass defaults."""
    out: dict[str, Scalar] = {}
    for field in dataclasses.fields(cls):
        key = field_key(prefix, field)
        if isinstance(field.default, bool | int | float | str):
            out[key] = field.default
        elif key in AUTOMATIC and field.default is None:
            out[key] = AUTOMATIC[key]
    return out


GENERAL: dict[str, Scalar] = {
    # rounds, outputs, robustness
    "num-rounds": 3,
    "eval-every": 1,
    "test-every": 0,
    "early-stop-patience": 0,
    "keep-best-model": False,
    "seed": 0,
    "out-dir": "outputs/fedgeo",
    "resume": False,
    "research-mode": False,
    "round-timeout": 0.0,
    "min-replies": 1,
    "max-update-norm": 0.0,
    "secure-aggregation": False,
    # simulation-only fault and attack injection (client/faults.py)
    "inject-failure-fraction": 0.0,
    "inject-attack-fraction": 0.0,
    "inject-attack": "sign-flip",
    "inject-attack-scale": 1.0,
    "node-wait": 60.0,
    "client-state-dir": "",
    # strategy (server.strategies.build_strategy)
    "strategy": "fedgeo",
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "min-train-nodes": 2,
    "min-evaluate-nodes": 2,
    "min-available-nodes": 2,
    "proximal-mu": 0.01,
    "server-lr": 1.0,
    "server-momentum": 0.9,
    "alpha": 0.01,
    "scaffold-control": "auto",
    "fedgeo-exclusion": True,
    "fedgeo-exclusion-by": "distinct_places",
    "fedgeo-floor": 0.05,
    "fedgeo-midpoint": 4.0,
    "fedgeo-slope": 1.0,
    "fedgeo-entropy-midpoint": 0.5,
    "fedgeo-entropy-slope": 0.1,
    "fedgeo-exclusion-ramp": 0,
    "fedgeo-aggregation": "geometric-median",
    "fedgeo-drift-scale": 1.0,
    "fedgeo-median-iters": 10,
    "fedgeo-median-tol": 1e-6,
    "fedgeo-weighting": "examples",
    "fedgeo-dynamic-alpha": 0.0,
    "fedgeo-control-variates": False,
    # local training (sent to the clients in every train instruction)
    "local-epochs": 1,
    "batch-size": 64,
    "lr": 0.002,
    "lr-decay": 1.0,
    "optimizer": "adam",
    "weight-decay": 0.0,
    "grad-clip": 5.0,
    # data (simulation: every client loads the same data set and keeps its own user)
    "data-path": "",
    "data-format": "csv",
    "time-unit": "",
    "places-path": "",
    # privacy of the data profile
    "profile-ldp-epsilon": 0.0,
    "profile-ldp-radius-km": 50.0,
    # differential privacy of the model updates (server.privacy)
    "dp": "none",
    "dp-noise-multiplier": 1.0,
    "dp-clipping-norm": 1.0,
    "dp-delta": 0.0,
}
"""The keys that belong to no settings dataclass."""


def _table() -> dict[str, Scalar]:
    table = dict(GENERAL)
    for prefix, cls in SECTIONS.items():
        table.update(section_defaults(prefix, cls))
    table.update(DEFAULT_CITY)
    return table


DEFAULTS: dict[str, Scalar] = _table()
"""Every run-config key with its default."""
