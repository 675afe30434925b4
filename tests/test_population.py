"""The population prior (fedgeo.population): contributions, sums, features, DP, and one
release through the client and server code of the federation (server.population_round)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from tiny import TINY_RUN

from client.app import handle_population
from fedgeo.data.protocol import ProtocolConfig, preprocess
from fedgeo.message_keys import CONTRIBUTION, STAGE_IN
from fedgeo.models import ModelConfig, SampleIndex, build_model
from fedgeo.population import (
    CandidateIndex,
    ContributionError,
    PopulationConfig,
    PopulationFeatures,
    PopulationPrior,
    check_contribution,
    contribution,
    gaussian_sigma,
    plain_sum,
    spent_epsilon,
)
from server.app import prepare, simulation_dataset
from server.population_round import build_release
from server.run_config import RunConfig

HOUR = 3600
# Four places on a line, 1 km apart; three users, one trajectory each (all training).
PLACES = {0: 0.00, 1: 0.01, 2: 0.02, 3: 0.03}
VISITS = {"a": [0, 1, 2, 1], "b": [0, 1, 0], "c": [3, 2, 3]}


@pytest.fixture(scope="module")
def city():
    rows = []
    for user, places in VISITS.items():
        for i, place in enumerate(places):
            rows.append((user, place, 0.0, PLACES[place], 1_000_000 + i * HOUR))
    table = pd.DataFrame(
        rows, columns=["user_id", "location_id", "latitude", "longitude", "timestamp"]
    )
    return preprocess(table, ProtocolConfig(train_frac=1.0, val_frac=0.0), name="hand-made")


def test_the_summed_prior_counts_users_per_place_and_per_transition(city):
    config = PopulationConfig(candidates=4)
    index = CandidateIndex(city.places, config.candidates)
    prior = PopulationPrior.from_sum(plain_sum(city.users, index, config), index, 3)
    np.testing.assert_array_equal(prior.visitors, [2, 2, 2, 1])
    expected = np.zeros((4, 4))
    for src, dst, users in [(0, 1, 2), (1, 2, 1), (2, 1, 1), (1, 0, 1), (3, 2, 1), (2, 3, 1)]:
        expected[src, dst] = users
    np.testing.assert_array_equal(prior.transitions.toarray(), expected)
    assert prior.transitions.nnz == 6  # sparse: only transitions that occur


def test_a_user_counts_once_per_place_and_transition_and_up_to_the_caps(city):
    index = CandidateIndex(city.places, 4)
    a = contribution(city.users[0], index, PopulationConfig(candidates=4))
    assert a[:4].tolist() == [1, 1, 1, 0]  # place 1 visited twice, counted once
    capped = contribution(
        city.users[0], index, PopulationConfig(candidates=4, max_places=1, max_transitions=1)
    )
    assert capped[:4].tolist() == [0, 1, 0, 0]  # the most visited place
    assert capped[4:].sum() == 1


def test_transitions_beyond_the_candidates_are_not_counted(city):
    index = CandidateIndex(city.places, 2)  # each place and its nearest one
    total = plain_sum(city.users, index, PopulationConfig(candidates=2))
    prior = PopulationPrior.from_sum(total, index, 3)
    assert prior.transitions.toarray()[0, 1] == 2
    assert index.transition_slots(np.array([0]), np.array([3]))[0] == -1


def test_features_read_what_the_other_users_do(city):
    config = PopulationConfig(candidates=4)
    index = CandidateIndex(city.places, 4)
    prior = PopulationPrior.from_sum(plain_sum(city.users, index, config), index, 3)
    features = PopulationFeatures(prior, index, config, city.users)
    # User a (index 0) after place 0: only b moved 0 -> 1 besides a.
    trans, visitors = features.rows(np.array([0, 2]), np.array([0, 0]))
    np.testing.assert_allclose(np.expm1(trans[0]), [0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(np.expm1(trans[1]), [0, 2, 0, 0], atol=1e-6)  # c made none
    np.testing.assert_allclose(np.expm1(visitors[0]), [1, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(np.expm1(visitors[1]), [2, 2, 1, 0], atol=1e-6)


def day_block_prior(city, **settings):
    config = PopulationConfig(candidates=4, **settings)
    index = CandidateIndex(city.places, 4, day_blocks=True)
    prior = PopulationPrior.from_sum(plain_sum(city.users, index, config), index, 3)
    return config, index, prior


def test_day_blocks_count_users_per_place_and_block_of_the_day(city):
    # Check-ins at 13h, 14h, 15h and 16h: blocks 3 (12-16h) and 4 (16-20h).
    config, index, prior = day_block_prior(city)
    assert index.length == 4 * (1 + 4) + 4 * 6
    expected = np.zeros((4, 6))
    expected[:, 3] = [2, 2, 2, 1]  # a and b at 0 and 1, a and c at 2, c at 3
    expected[1, 4] = 1  # a's last check-in, at place 1 at 16h
    np.testing.assert_array_equal(prior.block_visitors, expected)
    # The visitors and transitions are those without day blocks.
    plain_index = CandidateIndex(city.places, 4)
    plain = PopulationPrior.from_sum(plain_sum(city.users, plain_index, config), plain_index, 3)
    np.testing.assert_array_equal(prior.visitors, plain.visitors)
    assert (prior.transitions != plain.transitions).nnz == 0
    assert plain.block_visitors is None
    # A user counts a (place, block) once, up to max_places pairs, the most frequent
    # first: a's four pairs are made once each, so the tie goes to the smallest key.
    capped = contribution(city.users[0], index, PopulationConfig(candidates=4, max_places=1))
    assert capped[index.block_offset :].sum() == 1
    assert capped[index.block_offset + 0 * 6 + 3] == 1  # (place 0, block 3)
    # They travel with the prior.
    again = PopulationPrior.from_arrays(prior.to_arrays())
    np.testing.assert_array_equal(again.block_visitors, expected)


def test_day_block_features_read_what_the_other_users_do_at_that_time(city):
    config, index, prior = day_block_prior(city)
    features = PopulationFeatures(prior, index, config, city.users)
    rows = np.expm1(features.block_rows(np.array([0, 2, 0, 1]), np.array([3, 3, 4, 4])))
    np.testing.assert_allclose(rows[0], [1, 1, 1, 1], atol=1e-6)  # a at 12-16h: b and c
    np.testing.assert_allclose(rows[1], [2, 2, 1, 0], atol=1e-6)  # c at 12-16h: a and b
    np.testing.assert_allclose(rows[2], [0, 0, 0, 0], atol=1e-6)  # a's own 16h visit is out
    np.testing.assert_allclose(rows[3], [0, 1, 0, 0], atol=1e-6)  # b sees a's 16h visit


def test_day_blocks_widen_the_dp_sensitivity_by_the_pair_cap():
    config = PopulationConfig(max_places=64, max_transitions=64, dp_epsilon=1.0)
    assert config.sensitivity() == pytest.approx(math.sqrt(128))
    assert config.sensitivity(day_blocks=True) == pytest.approx(math.sqrt(192))
    ratio = config.noise_std(day_blocks=True) / config.noise_std()
    assert ratio == pytest.approx(math.sqrt(192 / 128))


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.zeros(7), r"shape \(7,\), expected \(8,\)"),
        (np.array([0, 0, -1, 0, 0, 0, 0, 0.0]), "slot 2 is -1.0"),
        (np.array([0, np.nan, 0, 0, 0, 0, 0, 0.0]), "slot 1 is nan"),
        (np.array([0, 0, 0, 0, 0, 0, 0, 3.0]), "slot 7 is 3.0"),
        (["a"] * 8, "not numeric"),
    ],
)
def test_malformed_contributions_are_rejected_with_the_reason(vector, message):
    with pytest.raises(ContributionError, match=message):
        check_contribution(vector, 8, "node 4")


def test_dp_noise_is_calibrated_for_every_release_and_accounted():
    sigma_one = gaussian_sigma(1.0, 1e-5, math.sqrt(128), releases=1)
    sigma_four = gaussian_sigma(1.0, 1e-5, math.sqrt(128), releases=4)
    assert sigma_four == pytest.approx(2 * sigma_one)
    assert spent_epsilon(sigma_four, 1e-5, math.sqrt(128), 4) == pytest.approx(1.0)
    assert spent_epsilon(0.0, 1e-5, 1.0, 1) == math.inf
    assert PopulationConfig().noise_std() == 0.0
    assert (
        PopulationConfig(dp_epsilon=4.0).noise_std() < PopulationConfig(dp_epsilon=1.0).noise_std()
    )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"candidates": 0}, "population-candidates"),
        ({"dp_epsilon": -1.0}, "population-dp-epsilon"),
        ({"refresh": -2}, "population-refresh"),
        ({"dp_delta": 1.0}, "population-dp-delta"),
    ],
)
def test_bad_settings_name_their_run_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        PopulationConfig(**kwargs)


def test_release_rounds_follow_the_refresh():
    assert PopulationConfig(refresh=0).release_rounds(10) == [1]
    assert PopulationConfig(refresh=4).release_rounds(10) == [1, 5, 9]
    assert PopulationConfig(refresh=4).releases(10) == 3


def test_the_model_uses_the_population_scores_only_when_switched_on(city):
    config = PopulationConfig(candidates=4)
    index = CandidateIndex(city.places, 4)
    prior = PopulationPrior.from_sum(plain_sum(city.users, index, config), index, 3)
    population = PopulationFeatures(prior, index, config, city.users)
    samples = SampleIndex(city.users)
    users, positions = samples.samples("train")
    on, off = (
        ModelConfig(
            embedding_dim=8, hidden_dim=8, window=4, population_prior=flag, history_scores=False
        ).without_prior()
        for flag in (True, False)
    )
    model_on, features_on = build_model(4, 3, on, seed=0, population=population)
    model_off, features_off = build_model(4, 3, off, seed=0)
    batch_on = features_on.build(samples, users, positions)
    batch_off = features_off.build(samples, users, positions)
    assert "population" in batch_on and "population" not in batch_off
    model_on.eval()
    model_off.eval()
    with torch.no_grad():
        # The gates start at zero: the untrained model ranks as without the prior ...
        torch.testing.assert_close(model_on(batch_on), model_off(batch_off))
        # ... and the population scores move it once the gates are trained.
        model_on.population_gate.bias.fill_(1.0)
        assert not torch.allclose(model_on(batch_on), model_off(batch_off))
    assert "population_gate.bias" in model_on.shared_state()
    assert ModelConfig.from_dict({}).population_prior is False  # older stored configs


def test_the_model_adds_day_block_scores_only_when_switched_on(city):
    config, index, prior = day_block_prior(city)
    population = PopulationFeatures(prior, index, config, city.users)
    samples = SampleIndex(city.users)
    users, positions = samples.samples("train")
    on, off = (
        ModelConfig(
            embedding_dim=8,
            hidden_dim=8,
            window=4,
            population_prior=True,
            population_day_blocks=flag,
            history_scores=False,
        ).without_prior()
        for flag in (True, False)
    )
    model_on, features_on = build_model(4, 3, on, seed=0, population=population)
    model_off, features_off = build_model(4, 3, off, seed=0, population=population)
    batch_on = features_on.build(samples, users, positions)
    batch_off = features_off.build(samples, users, positions)
    assert batch_on["population"].shape[1] == 6 and batch_off["population"].shape[1] == 4
    assert model_on.population_gate.out_features == 6
    model_on.eval()
    model_off.eval()
    with torch.no_grad():
        torch.testing.assert_close(model_on(batch_on), model_off(batch_off))  # gates at zero
        model_on.population_gate.bias[4:].fill_(1.0)  # the two day-block scores alone
        assert not torch.allclose(model_on(batch_on), model_off(batch_off))
    with pytest.raises(ValueError, match="model-population-prior"):
        ModelConfig(population_day_blocks=True)


# --- one release through the client and server code --------------------------------------


class InProcessNodes:
    """Delivers the server's messages to ClientApp handlers in this process (one context
    per node), with an optional hook that changes a reply."""

    def __init__(self, instruction: dict, nodes: list[int], tamper=None) -> None:
        self.contexts = {n: Context(0, n, {"partition-id": n - 1}, RecordDict(), {}) for n in nodes}
        self.tamper = tamper
        self.stages: list[str] = []

    def __call__(self, messages: list[Message]) -> list[Message]:
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            stage = str(message.content["config"]["stage"])
            self.stages.append(stage)
            reply = handle_population(message, self.contexts[node])
            if self.tamper is not None:
                reply = self.tamper(stage, node, message, reply)
            if reply is not None:
                replies.append(reply)
        return replies


pytestmark = pytest.mark.usefixtures("task_identity")  # conftest.py


@pytest.fixture(scope="module")
def tiny_setup():
    values = {
        **TINY_RUN,
        "model-population-prior": True,
        "population-cohort-size": 4,
        "population-neighbours": 3,
    }
    config = RunConfig.from_mapping(values)
    setup = prepare(config)
    dataset = simulation_dataset(config)
    return config, setup, dataset


def release(tiny_setup, tamper=None, **settings):
    config, setup, dataset = tiny_setup
    population = PopulationConfig(**{**config.population.to_dict(), **settings})
    nodes = list(range(1, len(dataset.users) + 1))
    transport = InProcessNodes(setup.instruction, nodes, tamper)
    prior, info = build_release(
        transport,
        nodes,
        population,
        setup.population_index,
        setup.instruction,
        release=1,
        releases=1,
        seed=0,
    )
    expected_users = list(dataset.users)
    return prior, info, transport, expected_users, population


def expected_prior(users, setup, population):
    index = setup.population_index
    return PopulationPrior.from_sum(plain_sum(users, index, population), index, len(users))


def assert_same_prior(a: PopulationPrior, b: PopulationPrior) -> None:
    np.testing.assert_array_equal(a.visitors, b.visitors)
    assert (a.transitions != b.transitions).nnz == 0


def test_a_secure_release_equals_the_plain_sum_of_every_client(tiny_setup):
    prior, info, transport, users, population = release(tiny_setup)
    assert info["cohorts"] == 2 and info["contributors"] == len(users) == 8
    assert {"setup", "share", "mask", "unmask"} <= set(transport.stages)
    assert_same_prior(prior, expected_prior(users, tiny_setup[1], population))
    plain, plain_info, _, _, _ = release(tiny_setup, secure_sum=False)
    assert plain_info["contributors"] == 8
    assert_same_prior(prior, plain)


@pytest.mark.parametrize("dropped", [{3}, {2, 7}])
def test_clients_dropping_mid_protocol_leave_the_sum_of_the_rest(tiny_setup, dropped):
    def drop(stage, node, message, reply):
        return None if stage == "mask" and node in dropped else reply

    prior, info, _, _, population = release(tiny_setup, tamper=drop)
    _, _, dataset = tiny_setup
    survivors = [u for i, u in enumerate(dataset.users) if i + 1 not in dropped]
    assert info["contributors"] == len(survivors) and info["dropped"] == len(dropped)
    assert_same_prior(prior, expected_prior(survivors, tiny_setup[1], population))


def test_a_malformed_plain_contribution_is_rejected_counted_and_not_summed(tiny_setup):
    def corrupt(stage, node, message, reply):
        if node == 5:
            vector = reply.content[CONTRIBUTION][CONTRIBUTION].numpy().copy()
            vector[0] = -3.0
            return Message(
                RecordDict({CONTRIBUTION: ArrayRecord({CONTRIBUTION: Array(vector)})}),
                reply_to=message,
            )
        if node == 6:
            short = np.zeros(5)
            return Message(
                RecordDict({CONTRIBUTION: ArrayRecord({CONTRIBUTION: Array(short)})}),
                reply_to=message,
            )
        return reply

    prior, info, _, _, population = release(tiny_setup, tamper=corrupt, secure_sum=False)
    assert info["rejected"] == 2 and info["contributors"] == 6
    assert any("slot 0 is -3.0" in e for e in info["errors"])
    assert any("shape (5,)" in e for e in info["errors"])
    _, _, dataset = tiny_setup
    rest = [u for i, u in enumerate(dataset.users) if i + 1 not in (5, 6)]
    assert_same_prior(prior, expected_prior(rest, tiny_setup[1], population))


def test_a_stage_without_setup_is_an_error_reply_not_a_crash(tiny_setup):
    _, setup, _ = tiny_setup
    config = {
        **setup.instruction,
        "stage": "mask",
        "session": "x",
        "secure-sum-config": json.dumps({"clients": [1, 2], "length": 3}),
    }
    content = RecordDict({"config": ConfigRecord(config), STAGE_IN: ConfigRecord({"member": 1})})
    message = Message(content, 1, "query.population")
    reply = handle_population(message, Context(0, 1, {"partition-id": 0}, RecordDict(), {}))
    assert reply.has_error() and "before this client's setup" in reply.error.reason


def test_a_secure_release_with_day_blocks_equals_the_plain_sum(tiny_setup):
    config, _, dataset = tiny_setup
    values = {**config.values, "model-population-day-blocks": True}
    with_blocks = RunConfig.from_mapping(values)
    setup = prepare(with_blocks)
    assert setup.population_index.blocks == 6
    nodes = list(range(1, len(dataset.users) + 1))
    prior, info = build_release(
        InProcessNodes(setup.instruction, nodes),
        nodes,
        with_blocks.population,
        setup.population_index,
        setup.instruction,
        release=1,
        releases=1,
        seed=0,
    )
    expected = expected_prior(list(dataset.users), setup, with_blocks.population)
    assert info["contributors"] == len(dataset.users)
    assert_same_prior(prior, expected)
    np.testing.assert_array_equal(prior.block_visitors, expected.block_visitors)
    assert prior.block_visitors.sum() > 0


def test_dp_noise_changes_the_release_and_is_recorded(tiny_setup):
    prior, info, _, users, population = release(tiny_setup, dp_epsilon=1.0)
    assert info["noise_std"] == pytest.approx(population.noise_std(1))
    assert info["dp_epsilon"] == 1.0
    exact = expected_prior(users, tiny_setup[1], population)
    assert not np.array_equal(prior.visitors, exact.visitors)
