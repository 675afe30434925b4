"""Configuration of the next-location model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODELS = ("memory", "lstm", "transformer", "flashback")
"""Names of the models (:attr:`ModelConfig.architecture`; their sequence encoders are in
:mod:`fedgeo.models.encoders`)."""
COORDINATE_MODELS = ("transformer", "flashback")
"""The models whose encoders read time intervals and distances between check-ins, and so
need the places' coordinates."""
TRAINING_MEMORIES = ("past", "leave-one-out")
"""Values of :attr:`ModelConfig.training_memory`."""
SHARED_SCORE_INITS = ("random", "zero")
"""Values of :attr:`ModelConfig.shared_score_init`."""
PRIOR_SCORE_PLACES = ("all", "new")
"""Values of :attr:`ModelConfig.prior_score_places`."""
OPTIONS_MISSING_FROM_OLDER_CONFIGS = {
    "shared_score_init": "random",
    "return_score": False,
    "prior_gate_bias": 0.0,
    "prior_score_places": "all",
    "population_prior": False,
    "architecture": "memory",
    "window_pointer": False,
    "history_scores": False,
}
"""What a stored configuration that lacks these options meant: it was written before they
existed (:meth:`ModelConfig.from_dict`). The first three came with memory model v2 (return
score: a config without them is memory model v1, which had no return score);
``prior_score_places`` with memory model v3 (a config without it, v2's included, had the
prior score lift every place); ``population_prior`` with the population prior (off before);
``architecture`` with the model zoo (the memory model before); ``window_pointer`` with the
window pointer (off before); ``history_scores`` with the history scores (off before).
docs/model.md names the versions."""


@dataclass
class ModelConfig:
    """Hyper-parameters and ablation switches of :class:`NextLocationModel`.

    The three ``prior_*`` switches are the uses of the global geographic adjacency
    prior; ``personal_memory`` and ``user_embedding`` are the on-device parts.
    """

    architecture: str = "memory"
    """Which model (run-config ``model``, ``--model``): how the recent check-ins are read
    (:data:`MODELS`; docs/model.md, *The model zoo*). ``memory`` is the GRU model with the
    on-device memory scores; every model has the same head and switches."""
    embedding_dim: int = 64
    """Size of place and time embeddings."""
    hidden_dim: int = 128
    """Size of the sequence encoder's state."""
    window: int = 20
    """How many recent check-ins the sequence encoder reads."""
    dropout: float = 0.1
    prior_init: bool = False
    """Seed place embeddings with the prior's spectral embedding. Off by default since
    memory model v4: the seeding lowered the ranking of places a user returns to and added
    nothing on new places (docs/model.md, *Prior uses*)."""
    prior_propagation: bool = True
    """Propagate place embeddings over the adjacency: E' = E + g * (A E)."""
    prior_score: bool = True
    """Add a learned, context-gated score from the adjacency row of the last place."""
    personal_memory: bool = True
    """Score places with the user's own visit, transition, time-slot and recency counts."""
    user_embedding: bool = True
    """A personal user vector (never leaves the device in a federation)."""
    memory_limit: int = 0
    """Use at most this many past check-ins for personal memory (0 = all)."""
    training_memory: str = "past"
    """Memory counts of *training* samples: ``"past"`` (the check-ins before the sample,
    like every evaluated sample) or ``"leave-one-out"`` (the user's whole training range
    minus the target check-in, as rich as an evaluated sample's). Evaluation always uses
    the past only."""
    shared_score_init: str = "zero"
    """Start of the shared neural score ``q . E'_l``: ``"zero"`` (its output layer starts
    at zero, so the untrained model ranks by the personal memory and the prior score only
    and the shared score grows from nothing as it learns) or ``"random"`` (PyTorch's
    default initialization of the query network; memory model v1)."""
    return_score: bool = True
    """Add a context-gated score, unconstrained in sign, for every place the user has
    visited before (freq > 0): the preferential-return term, which lets training set how
    likely a return is apart from how the counts rank the places returned to. Needs
    ``personal_memory`` (it reads the visit counts)."""
    return_bias: float = 4.0
    """Initial bias of the return score's gate (the log-odds boost of a visited place)."""
    prior_gate_bias: float = 0.0
    """Initial bias of the prior score's gate; the score's starting weight is
    ``softplus(prior_gate_bias)`` (0 gives 0.69, -4 gives 0.018)."""
    prior_score_places: str = "new"
    """Which places the prior score lifts: ``"new"`` (only places absent from the user's
    memory, freq = 0: the prior orders the places a user may explore and leaves the
    ranking of the visited ones to the personal memory; without ``personal_memory``, only
    places outside the recent window when ``window_pointer`` is on, else every place) or
    ``"all"`` (every place; memory model v2)."""

    population_prior: bool = False
    """Add context-gated scores from the population prior (:mod:`fedgeo.population`):
    how many *other* users moved from the last place to each place, and how many visited
    it, each split into places the user has and has not visited. The gates start at zero,
    so the untrained model is unchanged; the counts come from federated analytics."""

    population_day_blocks: bool = False
    """With ``population_prior``: also count, by federated analytics, the users who
    checked in at each place in each 4-hour block of the day, and add two context-gated
    scores (starting at zero): how many *other* users checked in at each place in the
    target's block, on places the user has and has not visited."""

    window_pointer: bool = False
    """Add context-gated scores for the places in the recent window the encoder reads:
    ``log(1 + count in the window)`` and ``0.8^age`` of the latest visit there (a copy
    mechanism). It reads only the sample's input, not the on-device memory, so the
    no-memory regime can rank the returns that dominate next-location targets from the
    first round; its gates start at softplus(1)."""

    history_scores: bool = True
    """Add context-gated scores, unconstrained in sign, from more of the user's own
    history (on the device, like the personal memory; :data:`HISTORY_FEATURES
    <fedgeo.models.features.HISTORY_FEATURES>`): visits on the target's weekday and near
    its time of day, hours and check-ins since the latest visit, second-order transitions,
    and the distance from the last place. The gates start at zero, so the untrained model
    is unchanged; training learns how much each weighs in which context. On by default
    (memory model v5); they read the personal memory, so a model without it
    (``personal_memory = False``) has none, and they need the places' coordinates."""

    def __post_init__(self) -> None:
        if self.architecture not in MODELS:
            raise ValueError(
                f"unknown model {self.architecture!r}; valid models: {', '.join(MODELS)}"
            )
        if self.training_memory not in TRAINING_MEMORIES:
            raise ValueError(
                f"model option training_memory (run-config model-training-memory) must be "
                f"one of {', '.join(TRAINING_MEMORIES)}, got {self.training_memory!r}"
            )
        if self.shared_score_init not in SHARED_SCORE_INITS:
            raise ValueError(
                f"model option shared_score_init (run-config model-shared-score-init) must "
                f"be one of {', '.join(SHARED_SCORE_INITS)}, got {self.shared_score_init!r}"
            )
        if self.prior_score_places not in PRIOR_SCORE_PLACES:
            raise ValueError(
                f"model option prior_score_places (run-config model-prior-score-places) "
                f"must be one of {', '.join(PRIOR_SCORE_PLACES)}, "
                f"got {self.prior_score_places!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(
                f"model option dropout (run-config model-dropout) must be in [0, 1), "
                f"got {self.dropout!r}"
            )
        if not self.personal_memory:  # the history scores read the personal memory
            self.history_scores = False
        if self.population_day_blocks and not self.population_prior:
            raise ValueError(
                "model option population_day_blocks (run-config model-population-day-blocks) "
                "needs population_prior (run-config model-population-prior = true)"
            )
        if self.training_memory == "leave-one-out" and self.memory_limit > 0:
            raise ValueError(
                "model option training_memory 'leave-one-out' needs memory_limit 0 (all)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a stored dict (a run's model config, a model file's metadata).

        Unknown keys raise ``ValueError`` naming them. A dict without the options added in
        memory models v2 and v3 was written before them, so those take their earlier values
        (:data:`OPTIONS_MISSING_FROM_OLDER_CONFIGS`): a global model saved then still loads."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        return cls(**{**OPTIONS_MISSING_FROM_OLDER_CONFIGS, **values})

    def without_prior(self) -> ModelConfig:
        """The same configuration with every use of the geographic prior switched off."""
        values = self.to_dict()
        values.update(prior_init=False, prior_propagation=False, prior_score=False)
        return ModelConfig(**values)

    @property
    def needs_coordinates(self) -> bool:
        """Whether the features need the places' coordinates (the distances that Flashback,
        the Transformer and the history scores read)."""
        return self.architecture in COORDINATE_MODELS or self.history_scores

    @property
    def uses_prior(self) -> bool:
        return self.prior_init or self.prior_propagation or self.prior_score
