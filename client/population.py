"""The client's side of secure summation and of the population prior: its contribution,
the secure-sum stages, secure aggregation of its model update, and the population
features of its local model.

A client contributes its 0/1 vector (:func:`fedgeo.population.contribution`, from its
own training range), checked before anything leaves the device, with its share of the
DP noise when the server asks for noise. Under secure summation the vector only ever
leaves masked (:class:`fedgeo.secure_sum.ClientSession`); the session's secrets stay in
``context.state`` between the four stages. With the prior built, train and evaluate
instructions carry it (ArrayRecord ``population-prior``) and the client scores places
by what the *other* users do: the prior minus its own contribution.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.data_source import ClientSource
from fedgeo.message_keys import (
    CONFIG,
    CONTRIBUTION,
    MASKED,
    MODEL_CONFIG,
    POPULATION_CONFIG,
    POPULATION_NOISE_STD,
    POPULATION_PRIOR,
    POPULATION_RELEASE,
    SECURE_SUM_CONFIG,
    SEED,
    SESSION,
    STAGE,
    STAGE_IN,
    STAGE_OUT,
)
from fedgeo.models import FeatureBuilder, ModelConfig
from fedgeo.population import (
    CandidateIndex,
    PopulationConfig,
    PopulationFeatures,
    PopulationPrior,
    check_contribution,
    contribution,
)
from fedgeo.secure_sum import ClientSession, SecureSumConfig

STAGES = ("plain", "setup", "share", "mask", "unmask")
_INDEXES: dict[tuple[str, int, bool], CandidateIndex] = {}


def candidate_index(source: ClientSource, candidates: int, day_blocks: bool) -> CandidateIndex:
    """The public index space of the client's place table (built once per process)."""
    key = (source.places_key, candidates, day_blocks)
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[key] = CandidateIndex(source.data.places, candidates, day_blocks)
    return _INDEXES[key]


def counts_day_blocks(config: Mapping[str, Any]) -> bool:
    """Whether the instruction's model counts visitors by block of the day (its
    ``population_day_blocks``; False when the instruction carries no model)."""
    text = config.get(MODEL_CONFIG)
    if not text:
        return False
    return bool(ModelConfig.from_dict(json.loads(str(text))).population_day_blocks)


def population_config(config: Mapping[str, Any]) -> PopulationConfig:
    text = config.get(POPULATION_CONFIG)
    if not text:
        raise ValueError(f"the instruction has no '{POPULATION_CONFIG}'")
    return PopulationConfig(**json.loads(str(text)))


def noisy_contribution(source: ClientSource, config: Mapping[str, Any]) -> np.ndarray:
    """The client's checked contribution plus its share of the DP noise. Simulated
    clients draw seeded noise (reproducible runs); a device draws from the OS."""
    settings = population_config(config)
    index = candidate_index(source, settings.candidates, counts_day_blocks(config))
    vector = check_contribution(
        contribution(source.data.user, index, settings), index.length, "this client"
    )
    std = float(config.get(POPULATION_NOISE_STD, 0.0))
    if std > 0:
        release = int(config.get(POPULATION_RELEASE, 1))
        rng = (
            np.random.default_rng([int(config.get(SEED, 0)), release, source.key, 0x504F50])
            if source.simulated
            else np.random.default_rng()
        )
        vector = vector + rng.normal(0.0, std, vector.shape)
    return vector


def _session_record(config: Mapping[str, Any], client_key: int) -> str:
    """The node-state record of one client's session (a simulated node may serve several
    users, each with its own session)."""
    return f"fedgeo-secure-sum:{config.get(SESSION, '')}:{client_key}"


def handle_stage(message: Message, context: Context, source: ClientSource) -> RecordDict:
    """One stage of the population protocol for this client. Returns the reply's content."""
    config = dict(message.content.get(CONFIG, {}))
    stage = str(config.get(STAGE, ""))
    if stage not in STAGES:
        raise ValueError(f"unknown population stage {stage!r} (one of {', '.join(STAGES)})")
    if stage == "plain":
        vector = noisy_contribution(source, config)
        return RecordDict({CONTRIBUTION: ArrayRecord({CONTRIBUTION: Array(vector)})})
    cohort = SecureSumConfig.from_json(str(config[SECURE_SUM_CONFIG]))
    record_name = _session_record(config, source.key)
    inputs = dict(message.content.get(STAGE_IN, {}))
    if "member" not in inputs:
        raise ValueError(f"population stage {stage!r} without this client's cohort id")
    member = int(inputs["member"])
    kept: dict[str, Any] = {}  # a model update kept since training (secure aggregation)
    if stage == "setup":
        session = ClientSession(cohort, member)
        out: dict[str, Any] = session.setup()
    else:
        saved = context.state.get(record_name)
        if not isinstance(saved, ConfigRecord):
            raise ValueError(f"secure-sum stage {stage!r} before this client's setup")
        session = ClientSession.from_bytes(cohort, member, bytes(saved["session"]))
        kept = {"vector": saved["vector"]} if "vector" in saved else {}
        if stage == "share":
            keys = {
                int(v): {"c": bytes(c), "s": bytes(s)}
                for v, c, s in zip(inputs["ids"], inputs["c"], inputs["s"], strict=True)
            }
            boxes = session.share(keys)
            out = {"to": list(boxes), "box": list(boxes.values())}
        elif stage == "mask":
            boxes = {int(v): bytes(b) for v, b in zip(inputs["ids"], inputs["box"], strict=True)}
            if kept:  # a model update kept at training time (secure aggregation)
                vector = np.frombuffer(bytes(kept["vector"]), dtype=np.float64)
            else:
                vector = noisy_contribution(source, config)
            masked = session.mask(vector, boxes)
            context.state[record_name] = ConfigRecord({"session": session.to_bytes()})
            return RecordDict({MASKED: ArrayRecord({MASKED: Array(masked)})})
        else:  # unmask: the session ends here
            shares = session.unmask(
                [int(v) for v in inputs.get("sent", [])],
                [int(v) for v in inputs.get("dropped", [])],
            )
            del context.state[record_name]
            return RecordDict(
                {
                    STAGE_OUT: ConfigRecord(
                        {
                            "b-ids": list(shares["b"]),
                            "b": list(shares["b"].values()),
                            "s-ids": list(shares["s"]),
                            "s": list(shares["s"].values()),
                        }
                    )
                }
            )
    context.state[record_name] = ConfigRecord({"session": session.to_bytes(), **kept})
    return RecordDict({STAGE_OUT: ConfigRecord(out)})


def start_secure_update(
    message: Message,
    context: Context,
    source: ClientSource,
    arrays: Mapping[str, np.ndarray],
    num_examples: int,
) -> ConfigRecord:
    """Secure aggregation of a train round: keep ``[n, n * arrays]`` (flattened in the
    arrays' order) on the client for the mask stage and return the setup stage's reply
    (the client's public keys), sent with the train reply instead of the arrays."""
    config = dict(message.content.get(CONFIG, {}))
    inputs = dict(message.content.get(STAGE_IN, {}))
    cohort = SecureSumConfig.from_json(str(config[SECURE_SUM_CONFIG]))
    session = ClientSession(cohort, int(inputs["member"]))
    n = float(num_examples)
    parts = [np.array([n])] + [n * np.asarray(a, dtype=np.float64).ravel() for a in arrays.values()]
    vector = np.concatenate(parts)
    context.state[_session_record(config, source.key)] = ConfigRecord(
        {"session": session.to_bytes(), "vector": vector.tobytes()}
    )
    return ConfigRecord(session.setup())


def with_population(
    features: FeatureBuilder, message: Message, source: ClientSource, config: Mapping[str, Any]
) -> FeatureBuilder:
    """A copy of ``features`` that reads the instruction's population prior (minus this
    client's own contribution). Raises ``ValueError`` when the model uses the prior and
    the instruction carries none."""
    record = message.content.get(POPULATION_PRIOR)
    if not isinstance(record, ArrayRecord):
        raise ValueError(
            f"the model uses the population prior but the instruction has no ArrayRecord "
            f"'{POPULATION_PRIOR}'"
        )
    prior = PopulationPrior.from_arrays({k: v.numpy() for k, v in record.items()})
    if prior.num_places != len(source.data.places):
        raise ValueError(
            f"population prior has {prior.num_places} places, this client's place table "
            f"{len(source.data.places)}"
        )
    settings = population_config(config)
    day_blocks = features.config.population_day_blocks  # the model that reads the prior
    index = candidate_index(source, settings.candidates, day_blocks)
    out = copy.copy(features)
    out.population = PopulationFeatures(prior, index, settings, [source.data.user])
    return out
