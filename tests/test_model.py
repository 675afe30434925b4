"""The next-location model: features use only the past, shared/personal split, priors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgeo.data.dataset import Places, UserData
from fedgeo.geo.prior import AdjacencyPrior, PriorConfig
from fedgeo.models import FeatureBuilder, ModelConfig, SampleIndex, build_model
from fedgeo.models.features import (
    HISTORY_FEATURES,
    MEMORY_FEATURES,
    WINDOW_COUNT,
    hour_of_week,
    window_pointer_features,
)

SMALL = dict(embedding_dim=8, hidden_dim=16, window=4, dropout=0.0, history_scores=False)
"""A tiny model; the history scores (on by default) have their own tests below."""


def make_places(n: int = 12, seed: int = 0) -> Places:
    rng = np.random.default_rng(seed)
    return Places(
        np.arange(100, 100 + n),
        40.7 + rng.uniform(0, 0.1, n),
        -74.0 + rng.uniform(0, 0.1, n),
    )


def make_user(places: list[int], start: int = 1_700_000_000, step: int = 3600) -> UserData:
    n = len(places)
    return UserData(
        user_id=7,
        places=np.asarray(places, dtype=np.int64),
        times=start + step * np.arange(n, dtype=np.int64),
        local_offsets=np.zeros(n, dtype=np.int32),
        traj_start=np.zeros(n, dtype=np.int64),
        train=np.arange(1, n - 2, dtype=np.int64),
        validation=np.array([n - 2], dtype=np.int64),
        test=np.array([n - 1], dtype=np.int64),
    )


def test_hour_of_week_starts_monday():
    monday_midnight = 1_704_067_200  # 2024-01-01 00:00 UTC, a Monday
    assert hour_of_week(np.array([monday_midnight]))[0] == 0
    assert hour_of_week(np.array([monday_midnight + 3600 * 25]))[0] == 25
    assert hour_of_week(np.array([monday_midnight + 3600 * 168]))[0] == 0


def test_memory_features_count_only_the_past():
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4])
    cfg = ModelConfig(**SMALL, prior_init=False, prior_propagation=False, prior_score=False)
    fb = FeatureBuilder(12, cfg)
    index = SampleIndex([user])
    batch = fb.build(index, np.array([0]), np.array([6]))  # history 0,1,0,2,0,1 ; last = 1
    memory = batch["memory"][0].numpy()
    freq = memory[MEMORY_FEATURES.index("freq")]
    trans = memory[MEMORY_FEATURES.index("trans")]
    np.testing.assert_allclose(np.expm1(freq)[[0, 1, 2, 3, 4]], [3, 2, 1, 0, 0], atol=1e-5)
    # transitions out of place 1 before position 6: 1->0 once (positions 1->2)
    np.testing.assert_allclose(np.expm1(trans)[[0, 1, 2, 3]], [1, 0, 0, 0], atol=1e-5)
    recency = memory[MEMORY_FEATURES.index("recency")]
    assert recency[1] == pytest.approx(1.0)  # the last check-in
    assert recency[3] == 0.0 and recency[4] == 0.0  # the target and the future
    assert batch["target"].item() == 3
    assert batch["window_places"][0].tolist() == [0, 2, 0, 1]


def test_leave_one_out_training_memory_counts_the_training_range_minus_the_target():
    # n = 8 check-ins: training targets are positions 1..5, so the training range is 0..5.
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4])
    plain = dict(**SMALL, prior_init=False, prior_propagation=False, prior_score=False)
    past = FeatureBuilder(12, ModelConfig(**plain))
    loo = FeatureBuilder(12, ModelConfig(**plain, training_memory="leave-one-out"))
    index = SampleIndex([user])
    assert index.train_end.tolist() == [6]
    # Position 3 (target place 2, last place 0): range 0,1,0,2,0,1 without position 3.
    batch = loo.build(index, np.array([0]), np.array([3]), training=True)
    memory = np.expm1(batch["memory"][0].numpy())
    freq, trans, slot = (memory[MEMORY_FEATURES.index(f)] for f in ("freq", "trans", "slot"))
    np.testing.assert_allclose(freq[[0, 1, 2, 3, 4]], [3, 2, 0, 0, 0], atol=1e-5)
    # Transitions out of place 0 in the range: 0->1 twice (positions 1, 5); 0->2 is the target.
    np.testing.assert_allclose(trans[[0, 1, 2]], [0, 2, 0], atol=1e-5)
    assert slot[2] == pytest.approx(0.0, abs=1e-6) and np.all(slot <= freq + 1e-5)
    # Check-ins after the training range (validation, test) are never counted.
    assert freq[3] == pytest.approx(0.0, abs=1e-6) and freq[4] == pytest.approx(0.0, abs=1e-6)
    # Everything else, and every evaluated sample, is as with the past-only memory.
    reference = past.build(index, np.array([0]), np.array([3]), training=True)
    for key in reference:
        if key != "memory":
            assert torch.equal(batch[key], reference[key]), key
    recency = MEMORY_FEATURES.index("recency")
    assert torch.equal(batch["memory"][0, recency], reference["memory"][0, recency])
    for position in (3, 6, 7):  # a training sample evaluated, validation, test
        a = loo.build(index, np.array([0]), np.array([position]))
        b = past.build(index, np.array([0]), np.array([position]))
        assert torch.equal(a["memory"], b["memory"]), position
    with pytest.raises(ValueError, match="training samples only"):
        loo.build(index, np.array([0]), np.array([6]), training=True)


def test_training_memory_option_is_checked():
    with pytest.raises(ValueError, match="model-training-memory"):
        ModelConfig(training_memory="future")
    with pytest.raises(ValueError, match="memory_limit"):
        ModelConfig(training_memory="leave-one-out", memory_limit=5)


def test_zero_shared_score_init_starts_the_model_as_its_memory_and_prior():
    """With ``shared_score_init = "zero"`` the untrained model's scores are exactly its
    gated memory and prior scores: the shared network adds nothing until it learns."""
    places = make_places()
    prior = AdjacencyPrior.from_places(places, PriorConfig(k=3))
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4, 5, 6])
    index = SampleIndex([user])
    cfg = ModelConfig(**SMALL, return_score=False)  # defaults: zero start, prior gate 0
    model, features = build_model(12, 1, cfg, prior, seed=3)
    model.eval()
    batch = features.build(index, np.zeros(3, dtype=np.int64), np.array([4, 6, 8]))
    new = (batch["memory"][:, MEMORY_FEATURES.index("freq")] == 0).float()
    with torch.no_grad():
        scores = model(batch)
        gates = torch.nn.functional.softplus(torch.ones(len(MEMORY_FEATURES)))
        expected = torch.einsum("f,bfl->bl", gates, batch["memory"])
        prior_weight = torch.nn.functional.softplus(torch.tensor(0.0))
        expected += prior_weight * batch["prior_row"] * new  # new places only (the default)
    torch.testing.assert_close(scores, expected)
    # Memory model v1: random shared score, prior gate at softplus(0).
    before = ModelConfig(**SMALL, return_score=False, shared_score_init="random", prior_gate_bias=0)
    random_model, _ = build_model(12, 1, before, prior, seed=3)
    random_model.eval()
    with torch.no_grad():
        assert not torch.allclose(random_model(batch), expected)
        assert float(random_model.prior_gate.bias) == 0.0
    # Training moves the zero-started shared score.
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(batch), batch["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model.query[2].weight.detach().abs().sum()) > 0


def test_return_score_lifts_visited_places_by_its_gate():
    """The return score adds the same learned amount to every place the user visited
    before, so it moves how likely a return is without reordering the visited places."""
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4, 5, 6])
    index = SampleIndex([user])
    base = dict(**SMALL, shared_score_init="zero")
    plain_cfg = ModelConfig(**base, return_score=False).without_prior()
    plain, features = build_model(12, 1, plain_cfg, seed=1)
    cfg = ModelConfig(**base, return_score=True, return_bias=2.5).without_prior()
    model, _ = build_model(12, 1, cfg, seed=1)
    plain.eval()
    model.eval()
    batch = features.build(index, np.zeros(2, dtype=np.int64), np.array([4, 8]))
    seen = (batch["memory"][:, MEMORY_FEATURES.index("freq")] > 0).float()
    assert seen[0].tolist() == [1, 1, 1] + [0] * 9  # places 0, 1, 2 before position 4
    with torch.no_grad():
        torch.testing.assert_close(model(batch), plain(batch) + 2.5 * seen)
    # The gate is shared (it is sent and averaged), and learned.
    assert "return_gate.bias" in model.shared_state()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = torch.nn.functional.cross_entropy(model(batch), batch["target"])
    loss.backward()
    optimizer.step()
    assert float(model.return_gate.bias.detach()) != 2.5


def test_prior_score_lifts_only_new_places_by_default():
    """With ``prior_score_places = "new"`` the prior score never reorders the places the
    user visited (the personal memory ranks those); with ``"all"`` it lifts every
    neighbour of the last place. Without personal memory no place is known as visited."""
    places = make_places()
    prior = AdjacencyPrior.from_places(places, PriorConfig(k=4))
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4, 5, 6])
    index = SampleIndex([user])
    base = dict(**SMALL, prior_init=False, prior_propagation=False, prior_gate_bias=1.0)
    no_prior, _ = build_model(12, 1, ModelConfig(**base, prior_score=False), seed=2)
    new_only, features = build_model(12, 1, ModelConfig(**base), prior, seed=2)
    every, _ = build_model(12, 1, ModelConfig(**base, prior_score_places="all"), prior, seed=2)
    batch = features.build(index, np.zeros(2, dtype=np.int64), np.array([4, 8]))
    visited = batch["memory"][:, MEMORY_FEATURES.index("freq")] > 0
    lift = torch.nn.functional.softplus(torch.tensor(1.0)) * batch["prior_row"]
    assert bool((lift[visited] > 0).any()) and bool((lift[~visited] > 0).any())
    for model in (no_prior, new_only, every):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(new_only(batch), no_prior(batch) + lift * ~visited)
        torch.testing.assert_close(every(batch), no_prior(batch) + lift)
    memoryless = ModelConfig(**base, personal_memory=False)
    assert memoryless.prior_score_places == "new"
    # Without memory but with the window pointer, the window's places are the known ones.
    pointer_base = dict(base, personal_memory=False, window_pointer=True)
    no_prior, _ = build_model(12, 1, ModelConfig(**pointer_base, prior_score=False), seed=2)
    new_only, features = build_model(12, 1, ModelConfig(**pointer_base), prior, seed=2)
    batch = features.build(index, np.zeros(2, dtype=np.int64), np.array([4, 8]))
    in_window = window_pointer_features(batch["window_places"], 12)[:, WINDOW_COUNT] > 0
    assert bool((lift * in_window > 0).any())
    with torch.no_grad():
        lifted = no_prior.eval()(batch) + lift * ~in_window
        torch.testing.assert_close(new_only.eval()(batch), lifted)
    with pytest.raises(ValueError, match="model-prior-score-places"):
        ModelConfig(prior_score_places="visited")


def test_a_config_stored_before_the_return_score_builds_that_model():
    """Model configs stored before memory model v2 (a global model file's metadata, a run's
    model-config JSON) lack the new options: they rebuild the model they described, so the
    arrays saved with them still load."""
    old = ModelConfig(**SMALL, return_score=False, shared_score_init="random", prior_gate_bias=0)
    stored = {
        k: v
        for k, v in old.to_dict().items()
        if k not in ("return_score", "shared_score_init", "prior_gate_bias", "return_bias")
    }
    assert ModelConfig.from_dict(stored) == old
    saved, _ = build_model(12, 1, old.without_prior(), seed=0)
    model, _ = build_model(12, 1, ModelConfig.from_dict(stored).without_prior(), seed=0)
    model.load_shared_state(saved.shared_state())
    # A complete dict is taken as it is.
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    # A stop-11 config (return score, zero start) lacks only prior_score_places: then the
    # prior score lifted every place.
    stop11 = ModelConfig(**SMALL, prior_gate_bias=-4.0, prior_score_places="all").to_dict()
    del stop11["prior_score_places"]
    assert ModelConfig.from_dict(stop11).prior_score_places == "all"
    assert ModelConfig.from_dict(stop11).return_score is True


def test_shared_score_init_option_is_checked():
    with pytest.raises(ValueError, match="model-shared-score-init"):
        ModelConfig(shared_score_init="ones")


def test_centralized_command_passes_the_model_start_options():
    import argparse

    from fedgeo.cli.centralized_cmd import add_model_arguments, model_config_from_args

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert model_config_from_args(parser.parse_args([])) == ModelConfig()
    argv = ["--shared-score-init", "random", "--prior-gate-bias", "-4", "--no-return-score"]
    argv += ["--prior-score-places", "all"]
    cfg = model_config_from_args(parser.parse_args(argv))
    assert (cfg.shared_score_init, cfg.prior_gate_bias, cfg.return_score) == ("random", -4, False)
    assert cfg.prior_score_places == "all"
    assert not cfg.prior_init
    assert model_config_from_args(parser.parse_args(["--prior-init"])).prior_init
    assert not model_config_from_args(parser.parse_args(["--no-prior-init"])).prior_init
    assert model_config_from_args(parser.parse_args(["--history-scores"])).history_scores
    assert not model_config_from_args(parser.parse_args(["--no-history-scores"])).history_scores
    assert not model_config_from_args(parser.parse_args(["--no-personal-memory"])).history_scores
    assert model_config_from_args(parser.parse_args(["--dropout", "0.3"])).dropout == 0.3


def test_features_unchanged_when_future_changes():
    a = make_user([0, 1, 0, 2, 0, 1, 3, 4, 5, 6])
    b = make_user([0, 1, 0, 2, 0, 1, 3, 9, 9, 9])
    b.times = a.times.copy()
    b.times[7:] += 10_000
    cfg = ModelConfig(**SMALL, prior_init=False, prior_propagation=False, prior_score=False)
    fb = FeatureBuilder(12, cfg)
    fa = fb.build(SampleIndex([a]), np.array([0]), np.array([6]))
    fbb = fb.build(SampleIndex([b]), np.array([0]), np.array([6]))
    for key in fa:
        assert torch.equal(fa[key], fbb[key]), key


def test_window_is_left_padded_for_short_history():
    user = make_user([3, 4, 5, 6, 7])
    cfg = ModelConfig(**SMALL, prior_init=False, prior_propagation=False, prior_score=False)
    batch = FeatureBuilder(12, cfg).build(SampleIndex([user]), np.array([0]), np.array([2]))
    assert batch["window_places"][0].tolist() == [12, 12, 3, 4]
    assert batch["window_hours"][0, :2].tolist() == [168, 168]


def test_position_zero_is_rejected():
    user = make_user([3, 4, 5, 6, 7])
    cfg = ModelConfig(**SMALL, prior_init=False, prior_propagation=False, prior_score=False)
    with pytest.raises(ValueError, match="earlier check-in"):
        FeatureBuilder(12, cfg).build(SampleIndex([user]), np.array([0]), np.array([0]))


def _prior(places: Places) -> AdjacencyPrior:
    return AdjacencyPrior.from_places(places, PriorConfig(k=3))


def test_model_scores_all_places_and_is_seeded():
    places = make_places()
    prior = _prior(places)
    user = make_user([0, 1, 2, 3, 1, 2, 3, 4, 5, 1])
    cfg = ModelConfig(**SMALL)
    m1, fb = build_model(len(places), 1, cfg, prior, seed=3)
    m2, _ = build_model(len(places), 1, cfg, prior, seed=3)
    batch = fb.build(SampleIndex([user]), np.array([0, 0]), np.array([3, 5]))
    m1.eval()
    m2.eval()
    s1, s2 = m1(batch), m2(batch)
    assert s1.shape == (2, len(places))
    assert torch.equal(s1, s2)


def test_prior_switches_need_a_prior_and_are_independent():
    places = make_places()
    with pytest.raises(ValueError, match="prior"):
        build_model(len(places), 1, ModelConfig(**SMALL), None)
    model, fb = build_model(len(places), 1, ModelConfig(**SMALL).without_prior(), None)
    assert model.prior_matrix is None and fb.prior_rows is None
    cfg = ModelConfig(**SMALL, prior_init=False, prior_score=False)
    model, fb = build_model(len(places), 1, cfg, _prior(places))
    assert model.prior_matrix is not None and fb.prior_rows is None


def test_prior_init_seeds_place_embeddings_with_the_spectral_embedding():
    from fedgeo.geo.embedding import spectral_embedding

    places = make_places(30)
    prior = _prior(places)
    model, _ = build_model(len(places), 1, ModelConfig(**SMALL, prior_init=True), prior, seed=0)
    spectral = spectral_embedding(prior, SMALL["embedding_dim"], seed=0)
    weights = model.place_embedding.weight[:30].detach().numpy()
    corr = [abs(np.corrcoef(weights[:, j], spectral[:, j])[0, 1]) for j in range(4)]
    assert min(corr) > 0.99


def test_shared_and_personal_state_are_disjoint():
    places = make_places()
    model, _ = build_model(len(places), 3, ModelConfig(**SMALL), _prior(places))
    shared, personal = model.shared_state(), model.personal_state()
    assert set(personal) == {"user_embedding.weight"}
    assert not set(shared) & set(personal)
    assert set(shared) | set(personal) == set(model.state_dict())
    assert "prior_matrix" not in shared  # the prior is rebuilt from public data, never sent
    other, _ = build_model(len(places), 3, ModelConfig(**SMALL), _prior(places), seed=9)
    other.load_shared_state(shared)
    for key, value in shared.items():
        assert torch.equal(other.state_dict()[key], value)


def test_load_shared_state_rejects_wrong_shapes_and_keys():
    places = make_places()
    model, _ = build_model(len(places), 1, ModelConfig(**SMALL), _prior(places))
    shared = model.shared_state()
    bad = dict(shared)
    bad["place_bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="place_bias"):
        model.load_shared_state(bad)
    missing = dict(shared)
    missing.pop("place_bias")
    with pytest.raises(ValueError, match="missing"):
        model.load_shared_state(missing)


def test_personal_memory_switch_removes_memory_inputs():
    places = make_places()
    cfg = ModelConfig(**SMALL, personal_memory=False, user_embedding=False).without_prior()
    model, fb = build_model(len(places), 1, cfg, None)
    user = make_user([0, 1, 2, 3, 1, 2, 3, 4, 5, 1])
    batch = fb.build(SampleIndex([user]), np.array([0]), np.array([4]))
    assert "memory" not in batch
    assert model(batch).shape == (1, len(places))
    assert model.personal_state() == {}


def test_window_pointer_features_count_and_date_the_window_only():
    from fedgeo.models.features import WINDOW_FEATURES

    # padding (index 5), then places 2, 3, 2: place 2 twice, last seen now; 3 once, age 1.
    pointer = window_pointer_features(torch.tensor([[5, 2, 3, 2]]), num_places=5)[0]
    count = pointer[WINDOW_FEATURES.index("window-count")]
    recency = pointer[WINDOW_FEATURES.index("window-recency")]
    np.testing.assert_allclose(count.numpy(), np.log1p([0, 0, 2, 1, 0]), atol=1e-6)
    np.testing.assert_allclose(recency.numpy(), [0, 0, 1.0, 0.8, 0], atol=1e-6)


def test_window_pointer_ranks_recent_places_first_without_memory():
    """Untrained and without the on-device memory, the window pointer alone already
    ranks the places of the recent window above every other; it is a shared parameter."""
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4])
    base = dict(SMALL, personal_memory=False, prior_propagation=False, prior_score=False)
    index = SampleIndex([user])
    model, features = build_model(12, 1, ModelConfig(**base, window_pointer=True), seed=0)
    batch = features.build(index, np.array([0]), np.array([6]))  # window 0, 2, 0, 1
    with torch.no_grad():
        scores = model.eval()(batch)[0]
    in_window = torch.tensor([0, 1, 2])
    others = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert scores[in_window].min() > scores[others].max()
    assert scores[0] > scores[1] > scores[2]  # twice in the window > last check-in > once
    assert any(k.startswith("window_gate.") for k in model.shared_state())
    plain, _ = build_model(12, 1, ModelConfig(**base), seed=0)
    assert not any(k.startswith("window_gate.") for k in plain.state_dict())


def test_history_features_count_only_the_past():
    monday_midnight = 1_704_067_200
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4], start=monday_midnight)  # one check-in an hour
    places = make_places()
    cfg = ModelConfig(
        **{**SMALL, "history_scores": True}, prior_propagation=False, prior_score=False
    )
    fb = FeatureBuilder(12, cfg, coordinates=places.coordinates())
    # Position 6 (06:00, target 3): history 0,1,0,2,0,1 at 00:00..05:00; last two 0, 1.
    history = fb.build(SampleIndex([user]), np.array([0]), np.array([6]))["history"][0].numpy()
    feature = {name: history[i] for i, name in enumerate(HISTORY_FEATURES)}
    np.testing.assert_allclose(np.expm1(feature["weekday"])[:5], [3, 2, 1, 0, 0], atol=1e-5)
    # within 2 hours of 06:00: the check-ins at 04:00 (place 0) and 05:00 (place 1)
    np.testing.assert_allclose(np.expm1(feature["time-of-day"])[:5], [1, 1, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(np.expm1(feature["hours-since"])[:5], [2, 1, 3, 0, 0], atol=1e-5)
    np.testing.assert_allclose(np.expm1(feature["checkins-since"])[:5], [2, 1, 3, 0, 0], atol=1e-5)
    # 0 -> 1 -> 0 once (positions 0..2); 0 -> 1 -> 3 is the target itself
    np.testing.assert_allclose(np.expm1(feature["second-order"])[:5], [1, 0, 0, 0, 0], atol=1e-5)
    lat, lon = np.radians(places.latitude), np.radians(places.longitude)
    flat_km = 6371.0 * np.hypot(lat[0] - lat[1], (lon[0] - lon[1]) * np.cos(lat[1]))
    assert np.expm1(feature["km-visited"][0]) == pytest.approx(flat_km, rel=1e-3)
    assert feature["km-visited"][1] == 0.0  # the last place itself
    assert np.all(feature["km-visited"][3:] == 0) and np.all(feature["km-new"][:3] == 0)
    assert np.all(feature["km-new"][3:] > 0)


def test_history_scores_start_silent_and_are_shared():
    user = make_user([0, 1, 0, 2, 0, 1, 3, 4])
    coordinates = make_places().coordinates()
    base = dict(**SMALL, prior_init=False, prior_propagation=False, prior_score=False)
    plain, plain_features = build_model(12, 1, ModelConfig(**base), seed=0)
    model, features = build_model(
        12, 1, ModelConfig(**{**base, "history_scores": True}), seed=0, coordinates=coordinates
    )
    index = SampleIndex([user])
    batch = features.build(index, np.array([0]), np.array([6]))
    with torch.no_grad():
        np.testing.assert_allclose(
            model.eval()(batch).numpy(),
            plain.eval()(plain_features.build(index, np.array([0]), np.array([6]))).numpy(),
            atol=1e-6,
        )
    assert {"history_gate.weight", "history_gate.bias"} <= set(model.shared_state())
    with torch.no_grad():  # a trained gate on "hours since" moves the visited places only
        model.history_gate.bias[HISTORY_FEATURES.index("hours-since")] = -1.0
        moved = model(batch) - plain(plain_features.build(index, np.array([0]), np.array([6])))
    assert torch.all(moved[0, :3] < 0) and torch.all(moved[0, 3:] == 0)


def test_history_scores_are_on_with_the_memory_and_need_coordinates():
    assert ModelConfig().history_scores
    assert not ModelConfig(history_scores=True, personal_memory=False).history_scores
    with pytest.raises(ValueError, match="coordinates"):
        FeatureBuilder(12, ModelConfig(**{**SMALL, "history_scores": True}))
    assert ModelConfig.from_dict({}).history_scores is False  # a config stored before them
