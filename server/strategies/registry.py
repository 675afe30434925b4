"""Build a strategy from a name (or an import path) and a flat Flower run-config dict.

``build_strategy("fedgeo", {"fraction-train": 0.1, "fedgeo-aggregation": "mean"}, seed=1)``
reads only the keys the chosen strategy documents in :data:`PARAMETERS` (the run config
holds other keys too, which are ignored); absent keys take the defaults listed there
(``None`` = the strategy class's own default). ``"package.module:Class"`` builds any
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
    default: Any
    """Value when the key is absent; None = the strategy class's own default."""
    doc: str
    argument: str = ""
    """Constructor argument (defaults to the key with dashes as underscores)."""

    @property
    def arg(self) -> str:
        return self.argument or self.key.replace("-", "_")


_COMMON = (
    Param("fraction-train", float, None, "fraction of nodes sampled for training (1.0)"),
    Param("fraction-evaluate", float, None, "fraction of nodes sampled for evaluation (1.0)"),
    Param("min-train-nodes", int, None, "minimum nodes per training round (2)"),
    Param("min-evaluate-nodes", int, None, "minimum nodes per evaluation round (2)"),
    Param("min-available-nodes", int, None, "nodes to wait for before sampling (2)"),
)
_SERVER_LR = Param("server-lr", float, None, "server learning rate eta_g (1.0)")
_FEDOPT = (
    Param("eta", float, None, "server learning rate (FedAdam 0.1, FedYogi 0.01)"),
    Param("eta-l", float, None, "client learning rate, informational (0.1 / 0.0316)"),
    Param("beta-1", float, None, "first-moment decay (0.9)"),
    Param("beta-2", float, None, "second-moment decay (0.99)"),
    Param("tau", float, None, "adaptivity epsilon (1e-3)"),
)
_FEDGEO_ONLY = (
    Param("fedgeo-exclusion", bool, True, "probabilistic exclusion of extreme users"),
    Param("fedgeo-exclusion-by", str, "distinct_places", "'distinct_places' or 'entropy'"),
    Param("fedgeo-floor", float, 0.05, "lowest participation probability p_min"),
    Param("fedgeo-midpoint", float, 4.0, "distinct places at the sigmoid midpoint d0"),
    Param("fedgeo-slope", float, 1.0, "sigmoid slope s (places)"),
    Param("fedgeo-entropy-midpoint", float, 0.5, "normalized-entropy midpoint (by=entropy)"),
    Param("fedgeo-entropy-slope", float, 0.1, "normalized-entropy slope (by=entropy)"),
    Param(
        "fedgeo-aggregation",
        str,
        "geometric-median",
        "'mean', 'drift-weighted' or 'geometric-median'",
        "aggregation",
    ),
    Param("fedgeo-drift-scale", float, None, "tau = scale * median distance (1.0)", "drift_scale"),
    Param("fedgeo-median-iters", int, 10, "Weiszfeld iterations (10)", "median_max_iter"),
    Param("fedgeo-median-tol", float, None, "Weiszfeld relative tolerance (1e-6)", "median_tol"),
    Param("fedgeo-weighting", str, "examples", "'examples' or 'uniform' weights", "weighting"),
    Param("proximal-mu", float, 0.01, "proximal anchoring weight mu"),
    _SERVER_LR,
)

PARAMETERS: dict[str, tuple[Param, ...]] = {
    "fedgeo": _COMMON + _FEDGEO_ONLY,
    "fedavg": _COMMON,
    "fedprox": (*_COMMON, Param("proximal-mu", float, 0.01, "proximal weight mu")),
    "fedavgm": (
        *_COMMON,
        Param("server-lr", float, None, "server learning rate (1.0)", "server_learning_rate"),
        Param("server-momentum", float, 0.9, "server momentum"),
    ),
    "fedadam": _COMMON + _FEDOPT,
    "fedyogi": _COMMON + _FEDOPT,
    "scaffold": (*_COMMON, _SERVER_LR),
    "feddyn": (*_COMMON, Param("alpha", float, None, "FedDyn regularization alpha (0.01)")),
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
        elif spec.default is not None:
            out[spec.arg] = spec.default
    return out


def build_strategy(name_or_path: str, params: Mapping[str, Any], *, seed: int) -> Strategy:
    """The strategy ``name_or_path`` configured from the flat run-config ``params``.

    ``name_or_path`` is one of :data:`STRATEGY_NAMES` or ``"package.module:Class"``.
    With ``dp`` = ``"server"`` or ``"client"`` in ``params`` the strategy comes wrapped
    in Flower's fixed-clipping DP wrapper (:func:`server.privacy.wrap`; ``dp-*`` keys).
    Raises ValueError for an unknown name, a bad value, an import path that is not a
    Flower Strategy, one whose required constructor arguments are missing, or DP with
    a strategy whose aggregate is not a plain mean.
    """
    from server.privacy import DPSettings, wrap  # server.privacy imports this package

    settings = DPSettings.from_values(params)
    return wrap(_build(name_or_path, params, seed=seed), settings)


def _build(name_or_path: str, params: Mapping[str, Any], *, seed: int) -> Strategy:
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
