"""Build a strategy from a name (or an import path) and a flat Flower run-config dict.

``build_strategy("fedgeo", {"fraction-train": 0.1, "fedgeo-aggregation": "mean"}, seed=1)``
reads only the keys the chosen strategy documents in :data:`PARAMETERS` (the run config
holds other keys too, which are ignored); an absent key takes its default from
:data:`server.defaults.DEFAULTS`, or, for a key that table does not have (FedAdam's
``eta``...), the strategy class's own default. ``"package.module:Class"`` builds any
Flower ``Strategy`` subclass, passing the constructor arguments whose dashed names
(``server_lr`` -> ``server-lr``) appear in ``params`` (and ``seed`` if it takes one).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

from server.defaults import DEFAULTS
from server.strategies.exclusion import ExclusionConfig
from server.strategies.feddyn import FedDyn
from server.strategies.fedgeo import FedGeo
from server.strategies.local_only import LocalOnly
from server.strategies.scaffold import Scaffold

STRATEGY_NAMES = (
    "fedgeo",
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "scaffold",
    "feddyn",
    "local",
)


@dataclass(frozen=True)
class Param:
    """One run-config key a named strategy reads."""

    key: str
    """Run-config key (dashed)."""
    kind: type
    doc: str
    argument: str = ""
    """Constructor argument (defaults to the key with dashes as underscores)."""

    @property
    def arg(self) -> str:
        return self.argument or self.key.replace("-", "_")


_COMMON = (
    Param("fraction-train", float, "fraction of nodes sampled for training"),
    Param("fraction-evaluate", float, "fraction of nodes sampled for evaluation"),
    Param("min-train-nodes", int, "minimum nodes per training round"),
    Param("min-evaluate-nodes", int, "minimum nodes per evaluation round"),
    Param("min-available-nodes", int, "nodes to wait for before sampling"),
)
_SERVER_LR = Param("server-lr", float, "server learning rate eta_g")
_FEDOPT = (
    Param("eta", float, "server learning rate (FedAdam 0.1, FedYogi 0.01)"),
    Param("eta-l", float, "client learning rate, informational (0.1 / 0.0316)"),
    Param("beta-1", float, "first-moment decay (0.9)"),
    Param("beta-2", float, "second-moment decay (0.99)"),
    Param("tau", float, "adaptivity epsilon (1e-3)"),
)
_FEDGEO_ONLY = (
    Param("fedgeo-exclusion", bool, "probabilistic exclusion of extreme users"),
    Param("fedgeo-exclusion-by", str, "'distinct_places' or 'entropy'"),
    Param("fedgeo-floor", float, "lowest participation probability p_min"),
    Param("fedgeo-midpoint", float, "distinct places at the sigmoid midpoint d0"),
    Param("fedgeo-slope", float, "sigmoid slope s (places)"),
    Param("fedgeo-entropy-midpoint", float, "normalized-entropy midpoint (by=entropy)"),
    Param("fedgeo-entropy-slope", float, "normalized-entropy slope (by=entropy)"),
    Param("fedgeo-exclusion-ramp", int, "rounds over which exclusion fades out (0: never)"),
    Param(
        "fedgeo-aggregation", str, "'mean', 'drift-weighted' or 'geometric-median'", "aggregation"
    ),
    Param("fedgeo-drift-scale", float, "tau = scale * median distance", "drift_scale"),
    Param("fedgeo-median-iters", int, "Weiszfeld iterations", "median_max_iter"),
    Param("fedgeo-median-tol", float, "Weiszfeld relative tolerance", "median_tol"),
    Param("fedgeo-weighting", str, "'examples' or 'uniform' weights", "weighting"),
    Param("fedgeo-dynamic-alpha", float, "FedDyn correction alpha (0: off)", "dynamic_alpha"),
    Param("fedgeo-control-variates", bool, "SCAFFOLD control variates", "control_variates"),
    Param("proximal-mu", float, "proximal anchoring weight mu"),
    _SERVER_LR,
)

PARAMETERS: dict[str, tuple[Param, ...]] = {
    "fedgeo": _COMMON + _FEDGEO_ONLY,
    "fedavg": _COMMON,
    "fedprox": (*_COMMON, Param("proximal-mu", float, "proximal weight mu")),
    "fedavgm": (
        *_COMMON,
        Param("server-lr", float, "server learning rate", "server_learning_rate"),
        Param("server-momentum", float, "server momentum"),
    ),
    "fedadam": _COMMON + _FEDOPT,
    "fedyogi": _COMMON + _FEDOPT,
    "scaffold": (*_COMMON, _SERVER_LR),
    "feddyn": (*_COMMON, Param("alpha", float, "FedDyn regularization alpha")),
    "local": _COMMON,
}
"""The run-config keys each named strategy reads."""

_CLASSES: dict[str, type[Strategy]] = {
    "fedgeo": FedGeo,
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "scaffold": Scaffold,
    "feddyn": FedDyn,
    "local": LocalOnly,
}


def coerce(value: Any, kind: type, key: str) -> Any:
    """A run-config value as ``kind`` (bool accepts true/false/1/0/yes/no strings)."""
    try:
        if kind is bool:
            if isinstance(value, str):
                text = value.strip().lower()
                if text in ("true", "1", "yes", "on"):
                    return True
                if text in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter '{key}': expected {kind.__name__}, got {value!r}") from None
    return value


def _kwargs(specs: tuple[Param, ...], params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.key in params:
            out[spec.arg] = coerce(params[spec.key], spec.kind, spec.key)
        elif spec.key in DEFAULTS:
            out[spec.arg] = DEFAULTS[spec.key]
    return out


def build_strategy(name_or_path: str, params: Mapping[str, Any], *, seed: int) -> Strategy:
    """The strategy ``name_or_path`` configured from the flat run-config ``params``.

    ``name_or_path`` is one of :data:`STRATEGY_NAMES` or ``"package.module:Class"``.
    Differential privacy is not applied here: :meth:`server.run_config.RunConfig.build_strategy`
    wraps the result as the ``dp*`` keys ask. Raises ValueError for an unknown name, a bad
    value, an import path that is not a Flower Strategy, or one whose required
    constructor arguments are missing.
    """
    name = name_or_path.strip()
    if ":" in name:
        return _from_import_path(name, params, seed=seed)
    key = name.lower()
    if key not in _CLASSES:
        raise ValueError(
            f"unknown strategy {name_or_path!r}; valid names: {', '.join(STRATEGY_NAMES)} "
            "(or an import path 'package.module:Class')"
        )
    kwargs = _kwargs(PARAMETERS[key], params)
    if key == "fedgeo":
        kwargs["exclusion"] = ExclusionConfig(
            enabled=kwargs.pop("fedgeo_exclusion"),
            by=kwargs.pop("fedgeo_exclusion_by"),
            floor=kwargs.pop("fedgeo_floor"),
            midpoint=kwargs.pop("fedgeo_midpoint"),
            slope=kwargs.pop("fedgeo_slope"),
            entropy_midpoint=kwargs.pop("fedgeo_entropy_midpoint"),
            entropy_slope=kwargs.pop("fedgeo_entropy_slope"),
            ramp_rounds=kwargs.pop("fedgeo_exclusion_ramp"),
        )
        kwargs["seed"] = int(seed)
    return _CLASSES[key](**kwargs)


def _constructor_parameters(cls: type) -> list[inspect.Parameter]:
    """Named constructor parameters of ``cls``; when ``__init__`` takes ``**kwargs``, those
    of the next base-class constructors too (how a subclass forwards FedAvg's options)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is object:
            break
        has_var_keyword = False
        for arg in list(inspect.signature(klass.__init__).parameters.values())[1:]:
            if arg.kind is inspect.Parameter.VAR_KEYWORD:
                has_var_keyword = True
            elif arg.kind is not inspect.Parameter.VAR_POSITIONAL:
                out.setdefault(arg.name, arg)
        if not has_var_keyword:
            break
    return list(out.values())


def _from_import_path(path: str, params: Mapping[str, Any], *, seed: int) -> Strategy:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"strategy {path!r}: cannot import module {module_name!r}: {exc}"
        ) from None
    cls = getattr(module, attr, None)
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise ValueError(f"strategy {path!r}: {attr!r} is not a flwr Strategy subclass")
    kwargs: dict[str, Any] = {}
    missing: list[str] = []
    for arg in _constructor_parameters(cls):
        dashed = arg.name.replace("_", "-")
        if dashed in params:
            value = params[dashed]
            default = arg.default
            if default is not inspect.Parameter.empty and type(default) in (bool, int, float, str):
                value = coerce(value, type(default), dashed)
            kwargs[arg.name] = value
        elif arg.name == "seed":
            kwargs[arg.name] = int(seed)
        elif arg.default is inspect.Parameter.empty:
            missing.append(dashed)
    if missing:
        raise ValueError(f"strategy {path!r} needs run-config parameter(s) {', '.join(missing)}")
    return cls(**kwargs)
