"""FedGeo's Flower ClientApp: ``train``, ``evaluate`` and ``query`` messages.

* ``train``: load the global shared arrays (``"arrays"``), add the client's personal
  state, train locally with the strategy's client side (:mod:`client.local_training`),
  reply with the trained shared arrays, ``"metrics"`` (``num-examples``, ``train-loss``,
  ``steps``) and, for SCAFFOLD, ``"control-delta"``. Local-only replies with metrics only.
  Under secure aggregation (config ``secure-sum-config``) the arrays stay on the client
  and the reply carries its public keys instead; the secure-sum stages follow.
* ``evaluate``: rank the client's own samples of config ``split`` (``validation`` or
  ``test``); reply with the additive sums of :class:`fedgeo.metrics.MetricSums` plus
  ``num-examples``, so the server micro-averages exactly. With ``return-ranks`` = 1
  (research mode, simulated clients only) the reply also lists every sample's rank and
  target place index.
* With client-side DP (server run config ``dp = "client"``) train replies pass
  through Flower's ``fixedclipping_mod``, which clips the update to the instruction's
  ``clipping_norm`` (docs/privacy.md).
* On a device (node config ``agent-dir``) the global arrays of ``train`` and ``evaluate``
  are also kept as the agent's latest global model (:mod:`client.agent.device_state`).
* ``query.population``: one stage of the population prior's federated analytics: the
  client's contribution in the clear, or one of the four secure-summation stages
  (:mod:`client.population`).
* ``query``: reply with the data profile (``checkins``, ``distinct_places``, ``entropy``,
  ``radius_of_gyration_km``), Laplace-noised when ``profile-ldp-epsilon`` > 0, and the
  client key (partition id; -1 on a device).

A bad instruction or bad local data (including a geographic prior whose checksum is not
the server's) gets an error reply with a one-line reason instead of a crash. Too little
data to train (:class:`~fedgeo.data.errors.TooLittleData`, e.g. one check-in) gets the
error code ``TOO_LITTLE_DATA_CODE``, so that the server skips the client rather than
counting a failure; its reason carries no file path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.constant import ErrorCode
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.agent.device_state import record_global_model
from client.algorithms import ARRAYS, CONFIG, CONTROL_DELTA, LOCAL_ONLY, METRICS, TrainInstructions
from client.data_source import DEVICE_KEYS, PARTITION_ID, ClientSource, client_source
from client.faults import InjectedFailure, attack_update, fails_this_round, is_attacker
from client.local_training import (
    client_seed,
    data_profile,
    evaluate_split,
    local_model,
    privatize,
    train,
    train_config,
)
from client.population import handle_stage, start_secure_update, with_population
from client.state import ClientStateStore
from fedgeo.array_file import read_arrays
from fedgeo.data.errors import TOO_LITTLE_DATA_CODE, DataError, TooLittleData
from fedgeo.message_keys import (
    CLIENT_KEY,
    LDP_EPSILON,
    LDP_RADIUS_KM,
    PROFILE,
    RETURN_RANKS,
    SECURE_SUM_ACTION,
    SECURE_SUM_CONFIG,
    SEED,
    SERVER_ROUND,
    SHARED_RECORDS,
    SPLIT,
    STAGE_OUT,
)
from fedgeo.npy import npy_view

ERROR_CODE = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
EXPECTED_ERRORS = (ValueError, KeyError, DataError, FileNotFoundError, InjectedFailure)
"""SecureSumError and ContributionError are ValueErrors: a bad stage is an error reply."""

def shared_records_mod(message: Message, context: Context, call_next) -> Message:
    """Simulation: put back the records the server stored once in a file instead of
    sending them in every message (config ``shared-records``; docs/federation.md,
    "Speed"). Only a simulated node follows such a reference: a device never reads a
    file a server names."""
    config = message.content.get(CONFIG)
    if not isinstance(config, ConfigRecord) or SHARED_RECORDS not in config:
        return call_next(message, context)
    node_config = context.node_config
    if PARTITION_ID not in node_config or any(node_config.get(k) for k in DEVICE_KEYS):
        reason = "fedgeo client: shared records are for simulated nodes only"
        return Message(Error(code=ERROR_CODE, reason=reason), reply_to=message)
    try:
        shared = json.loads(str(config[SHARED_RECORDS]))
        restored = {name: ArrayRecord(dict(_shared_arrays(str(p)))) for name, p in shared.items()}
    except (OSError, ValueError, AttributeError) as err:
        reason = f"fedgeo client: shared records: {err}".splitlines()[0]
        return Message(Error(code=ERROR_CODE, reason=reason), reply_to=message)
    content = RecordDict({k: v for k, v in message.content.items() if k != CONFIG})
    content.update(restored)
    content[CONFIG] = ConfigRecord({k: v for k, v in config.items() if k != SHARED_RECORDS})
    message.content = content
    return call_next(message, context)


@functools.lru_cache(maxsize=8)
def _shared_arrays(path: str) -> tuple[tuple[str, Array], ...]:
    """The arrays of a shared-records file, read once per worker process."""
    return tuple(
        (a.key, Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data))
        for a in read_arrays(path)
    )


app = ClientApp(mods=[shared_records_mod])


def load_app() -> ClientApp:
    """This module's ClientApp. A simulation engine that ships its app loader with every
    message pickles this function as a reference (a few bytes), not the app."""
    return app


def _arrays(message: Message) -> dict[str, np.ndarray]:
    record = message.content.get(ARRAYS)
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"the instruction has no ArrayRecord '{ARRAYS}'")
    return {key: _numpy(array) for key, array in record.items()}


def _numpy(array: Array) -> np.ndarray:
    """The array as a read-only view of the message's bytes when it is a plain ``.npy``
    payload (no copy; the model copies it into its parameters), else ``Array.numpy``."""
    view = npy_view(array.data) if array.stype == "numpy.ndarray" else None
    return view if view is not None else array.numpy()


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(v, order="C")) for key, v in arrays.items()})


def _config(message: Message) -> dict:
    return dict(message.content.get(CONFIG, {}))


def _source(message: Message, context: Context) -> ClientSource:
    return client_source(dict(context.node_config), _config(message), context.node_id)


def _local_model(message: Message, config: dict, source: ClientSource):
    """The instruction's model; with the population prior when the model uses it."""
    local = local_model(source, config)
    if local.model.config.population_prior:
        local.features = with_population(local.features, message, source, config)
    return local


def _store(config: dict, context: Context, source: ClientSource) -> ClientStateStore:
    return ClientStateStore(context, config, source.key, source.simulated)


def _safely(handler: Callable[[Message, Context], Message]):
    """Run ``handler``; expected failures become an error reply with a one-line reason."""

    @functools.wraps(handler)
    def run(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except TooLittleData as err:  # reported and skipped, not a failure (no file path)
            error = Error(code=TOO_LITTLE_DATA_CODE, reason=f"fedgeo client: {err.message}")
            return Message(error, reply_to=message)
        except EXPECTED_ERRORS as err:
            reason = f"fedgeo client: {type(err).__name__}: {err}".splitlines()[0]
            return Message(Error(code=ERROR_CODE, reason=reason), reply_to=message)

    return run


def dp_clipping_mod(message: Message, context: Context, call_next) -> Message:
    """Client-side DP (server ``dp = "client"``): Flower's ``fixedclipping_mod`` on train
    instructions that carry a clipping norm; any other message passes through."""
    config = message.content.get(CONFIG)
    if isinstance(config, ConfigRecord) and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)


@app.train(mods=[dp_clipping_mod])
@_safely
def handle_train(message: Message, context: Context) -> Message:
    """Local training on the client's own data."""
    config = _config(message)
    source = _source(message, context)
    local = _local_model(message, config, source)
    instructions = TrainInstructions.from_content(message.content)
    server_round = int(config.get(SERVER_ROUND, 0))
    store = _store(config, context, source)
    state = store.load(server_round, inclusive=False)
    run_seed = int(config.get(SEED, 0))
    if source.simulated and fails_this_round(config, run_seed, server_round, source.key):
        raise InjectedFailure(f"injected failure (round {server_round})")
    seed = client_seed(run_seed, server_round, source.key)
    global_arrays = _arrays(message)
    node_config = context.node_config
    record_global_model(node_config, config, source, global_arrays, server_round, server_round - 1)
    outcome = train(local, global_arrays, state, instructions, train_config(config, seed))
    store.save(server_round, outcome.state)
    attacker = source.simulated and is_attacker(config, run_seed, source.key)
    if outcome.arrays is not None and attacker:
        outcome.arrays = attack_update(
            config, global_arrays, outcome.arrays, run_seed, server_round, source.key
        )
    content = RecordDict({METRICS: MetricRecord(outcome.metrics)})
    if outcome.arrays is not None and SECURE_SUM_CONFIG in config:
        # Secure aggregation: the update stays here until the masked stage.
        examples = int(outcome.metrics["num-examples"])
        content[STAGE_OUT] = start_secure_update(
            message, context, source, outcome.arrays, examples
        )
    elif outcome.arrays is not None:
        content[ARRAYS] = _record(outcome.arrays)
    if outcome.control_delta is not None:
        content[CONTROL_DELTA] = _record(outcome.control_delta)
    return Message(content, reply_to=message)


@app.evaluate()
@_safely
def handle_evaluate(message: Message, context: Context) -> Message:
    """Ranking metrics of the client's own validation or test samples."""
    config = _config(message)
    source = _source(message, context)
    local = _local_model(message, config, source)
    server_round = int(config.get(SERVER_ROUND, 0))
    state = _store(config, context, source).load(server_round, inclusive=True)
    split = str(config.get(SPLIT, "validation"))
    local_only = bool(int(config.get(LOCAL_ONLY, 0)))
    global_arrays = _arrays(message) if ARRAYS in message.content else None
    if global_arrays is not None:
        node_config = context.node_config
        record_global_model(node_config, config, source, global_arrays, server_round, server_round)
    evaluation = evaluate_split(local, global_arrays, state, split, local_only)
    sums = evaluation.sums
    metrics: dict = {**sums.to_dict(), "num-examples": int(sums.count)}
    for prefix, part in evaluation.breakdown_sums().items():
        metrics.update(part.to_dict(prefix))
    if int(config.get(RETURN_RANKS, 0)):
        if not source.simulated:
            raise ValueError("per-sample ranks are a research-mode output of simulation only")
        metrics["ranks"] = [int(r) for r in evaluation.ranks]
        metrics["targets"] = [int(t) for t in evaluation.targets]
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)


@app.query()
@_safely
def handle_query(message: Message, context: Context) -> Message:
    """The client's data profile (optionally with local differential privacy)."""
    config = _config(message)
    source = _source(message, context)
    profile = data_profile(source)
    epsilon = float(config.get(LDP_EPSILON, 0.0))
    if epsilon > 0:
        # Simulated clients draw seeded noise (reproducible runs); a device draws from
        # the OS entropy pool, so that nobody can recompute its noise.
        rng = (
            np.random.default_rng([int(config.get(SEED, 0)), source.key, 0x4C4450])
            if source.simulated
            else np.random.default_rng()
        )
        profile = privatize(profile, epsilon, float(config.get(LDP_RADIUS_KM, 50.0)), rng)
    metrics = {**profile, CLIENT_KEY: source.key if source.simulated else -1}
    return Message(RecordDict({PROFILE: MetricRecord(metrics)}), reply_to=message)


@app.query(SECURE_SUM_ACTION)
@_safely
def handle_population(message: Message, context: Context) -> Message:
    """One stage of the population prior's federated analytics (client.population)."""
    source = _source(message, context)
    return Message(handle_stage(message, context, source), reply_to=message)
