"""FedGeo's federated strategies on Flower's Message API (``flwr.serverapp.strategy``).

Named strategies are built with :func:`build_strategy`; the message contract (record
and config keys) lives in :mod:`server.strategies.contract` and docs/strategies.md.
"""

from server.strategies.aggregation import (
    AGGREGATIONS,
    Aggregate,
    drift_weighted_mean,
    geometric_median,
    weighted_mean,
)
from server.strategies.exclusion import (
    ExclusionConfig,
    participation_probability,
    sample_participants,
)
from server.strategies.feddyn import FedDyn
from server.strategies.fedgeo import FedGeo
from server.strategies.local_only import LocalOnly
from server.strategies.registry import PARAMETERS, STRATEGY_NAMES, build_strategy
from server.strategies.scaffold import Scaffold
from server.strategies.state import restore_strategy_state, seed_round, strategy_state

__all__ = [
    "AGGREGATIONS",
    "PARAMETERS",
    "STRATEGY_NAMES",
    "Aggregate",
    "ExclusionConfig",
    "FedDyn",
    "FedGeo",
    "LocalOnly",
    "Scaffold",
    "build_strategy",
    "drift_weighted_mean",
    "geometric_median",
    "participation_probability",
    "restore_strategy_state",
    "sample_participants",
    "seed_round",
    "strategy_state",
    "weighted_mean",
]
