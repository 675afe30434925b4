"""The FedGeo next-location model.

Scores over all ``L`` places for a batch built by :class:`~fedgeo.models.features.FeatureBuilder`::

    E'      = E + g_p * (A E)                      prior propagation (A: normalized adjacency)
    x_t     = E'[place_t] + T[hour_t]              recent check-ins
    h       = GRU(x_1 .. x_W)
    q       = MLP([h, T_q[target hour], log gap, log history, u])   u: personal user vector
    s_l     = q . E'_l + b_l                                        shared neural score
            + sum_f softplus(G_f q + c_f) * M_f[l]                  personal memory (on device)
            + (G_r q + c_r) * 1[freq[l] > 0]                         return score (optional)
            + softplus(G_a q + c_a) * A_row(last)[l]                 prior score
            + sum_f (G_h q + c_h)_f * H_f[l]                          history scores (optional)
            + sum_f (G_p q + c_p)_f * P_f[l]                          population score (optional)
            + sum_f softplus(G_w q + c_w)_f * W_f[l]                  window pointer (optional)

Parameter names starting with ``user_embedding`` are personal: a federation never
sends them (see :meth:`NextLocationModel.shared_state`). The adjacency ``A`` is a
buffer built from public coordinates, not a learned parameter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedgeo.models.config import ModelConfig
from fedgeo.models.encoders import build_encoder
from fedgeo.models.features import (
    DAY_BLOCK_FEATURES,
    FREQ,
    HISTORY_FEATURES,
    HOURS_PER_WEEK,
    MEMORY_FEATURES,
    POPULATION_FEATURES,
    WINDOW_COUNT,
    WINDOW_FEATURES,
    window_pointer_features,
)

PERSONAL_PREFIXES = ("user_embedding.",)
PLACE_PARAMETERS = ("place_embedding.weight", "place_bias")
"""The per-place parameters: one row or entry per place (``TrainConfig.place_lr_scale``)."""


class NextLocationModel(nn.Module):
    """Next-location model over ``num_places`` places for ``num_users`` users."""

    def __init__(
        self,
        num_places: int,
        num_users: int,
        config: ModelConfig | None = None,
        prior_matrix: torch.Tensor | None = None,
        prior_embedding: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        cfg = config or ModelConfig()
        self.config = cfg
        self.num_places = num_places
        self.num_users = num_users
        d = cfg.embedding_dim
        self.place_embedding = nn.Embedding(num_places + 1, d, padding_idx=num_places)
        nn.init.normal_(self.place_embedding.weight, std=0.1)
        if cfg.prior_init:
            if prior_embedding is None:
                raise ValueError("prior_init needs prior_embedding (the spectral embedding)")
            self._seed_from_prior(np.asarray(prior_embedding, dtype=np.float32))
        with torch.no_grad():
            self.place_embedding.weight[num_places].zero_()
        self.place_bias = nn.Parameter(torch.zeros(num_places))
        self.hour_embedding = nn.Embedding(HOURS_PER_WEEK + 1, d, padding_idx=HOURS_PER_WEEK)
        self.target_hour_embedding = nn.Embedding(HOURS_PER_WEEK, d)
        if cfg.architecture == "memory":  # kept as is: saved memory models load unchanged
            self.gru = nn.GRU(d, cfg.hidden_dim, batch_first=True)
        else:
            self.encoder = build_encoder(cfg.architecture, d, cfg.hidden_dim, cfg.window)
        user_dim = d if cfg.user_embedding else 0
        if cfg.user_embedding:
            self.user_embedding = nn.Embedding(num_users, d)
            nn.init.zeros_(self.user_embedding.weight)
        self.dropout = nn.Dropout(cfg.dropout)
        self.query = nn.Sequential(
            nn.Linear(cfg.hidden_dim + d + 2 + user_dim, 2 * d),
            nn.GELU(),
            nn.Linear(2 * d, d),
        )
        if cfg.shared_score_init == "zero":
            nn.init.zeros_(self.query[2].weight)
            nn.init.zeros_(self.query[2].bias)
        gate_in = cfg.hidden_dim + d + 2
        if cfg.personal_memory:
            self.memory_gate = nn.Linear(gate_in, len(MEMORY_FEATURES))
            nn.init.zeros_(self.memory_gate.weight)
            nn.init.constant_(self.memory_gate.bias, 1.0)
            if cfg.return_score:
                self.return_gate = nn.Linear(gate_in, 1)
                nn.init.zeros_(self.return_gate.weight)
                nn.init.constant_(self.return_gate.bias, cfg.return_bias)
        if cfg.prior_propagation:
            if prior_matrix is None:
                raise ValueError("prior_propagation needs prior_matrix")
            self.propagation_gate = nn.Parameter(torch.tensor(0.5))
        if cfg.prior_score:
            self.prior_gate = nn.Linear(gate_in, 1)
            nn.init.zeros_(self.prior_gate.weight)
            nn.init.constant_(self.prior_gate.bias, cfg.prior_gate_bias)
        if cfg.population_prior:
            scores = len(POPULATION_FEATURES) + (
                len(DAY_BLOCK_FEATURES) if cfg.population_day_blocks else 0
            )
            self.population_gate = nn.Linear(gate_in, scores)
            nn.init.zeros_(self.population_gate.weight)
            nn.init.zeros_(self.population_gate.bias)
        if cfg.history_scores:
            self.history_gate = nn.Linear(gate_in, len(HISTORY_FEATURES))
            nn.init.zeros_(self.history_gate.weight)
            nn.init.zeros_(self.history_gate.bias)
        if cfg.window_pointer:
            self.window_gate = nn.Linear(gate_in, len(WINDOW_FEATURES))
            nn.init.zeros_(self.window_gate.weight)
            nn.init.constant_(self.window_gate.bias, 1.0)
        if prior_matrix is not None and cfg.prior_propagation:
            self.register_buffer("prior_matrix", prior_matrix.coalesce(), persistent=False)
        else:
            self.prior_matrix = None

    def _seed_from_prior(self, embedding: np.ndarray) -> None:
        if embedding.shape[0] != self.num_places:
            raise ValueError(
                f"prior embedding has {embedding.shape[0]} rows, model has {self.num_places} places"
            )
        d = self.config.embedding_dim
        k = min(d, embedding.shape[1])
        seed = torch.from_numpy(embedding[:, :k]).float()
        seed = seed / seed.std().clamp_min(1e-6) * 0.1
        with torch.no_grad():
            self.place_embedding.weight[: self.num_places, :k] = seed

    def place_table(self) -> torch.Tensor:
        """Place embeddings after prior propagation, ``(L, d)``."""
        table = self.place_embedding.weight[: self.num_places]
        if self.prior_matrix is not None:
            table = table + self.propagation_gate * torch.sparse.mm(self.prior_matrix, table)
        return table

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores ``(B, L)`` (unnormalized log-probabilities) over all places."""
        table = self.place_table()
        padded = torch.cat([table, self.place_embedding.weight[self.num_places :]], dim=0)
        x = padded[batch["window_places"]] + self.hour_embedding(batch["window_hours"])
        x = self.dropout(x)
        if self.config.architecture == "memory":
            _, h = self.gru(x)
            h = h[-1]
        else:
            h = self.encoder(x, batch["window_places"] != self.num_places, batch)
        context = torch.cat(
            [
                h,
                self.target_hour_embedding(batch["target_hour"]),
                batch["log_gap"][:, None],
                batch["log_history"][:, None],
            ],
            dim=1,
        )
        parts = [context]
        if self.config.user_embedding:
            parts.append(self.user_embedding(batch["users"]))
        q = self.query(self.dropout(torch.cat(parts, dim=1)))
        scores = q @ table.T + self.place_bias
        if self.config.personal_memory:
            gates = nn.functional.softplus(self.memory_gate(context))
            scores = scores + torch.einsum("bf,bfl->bl", gates, batch["memory"])
            if self.config.return_score:
                seen = (batch["memory"][:, FREQ] > 0).to(scores.dtype)
                scores = scores + self.return_gate(context) * seen
        if self.config.history_scores:
            gates = self.history_gate(context)
            scores = scores + torch.einsum("bf,bfl->bl", gates, batch["history"])
        pointer = None
        if self.config.window_pointer:
            gates = nn.functional.softplus(self.window_gate(context))
            pointer = window_pointer_features(batch["window_places"], self.num_places)
            scores = scores + torch.einsum("bf,bfl->bl", gates, pointer.to(scores.dtype))
        if self.config.population_prior and "population" in batch:
            gates = self.population_gate(context)
            scores = scores + torch.einsum("bf,bfl->bl", gates, batch["population"])
        if self.config.prior_score and "prior_row" in batch:
            gate = nn.functional.softplus(self.prior_gate(context))
            prior_row = batch["prior_row"]
            if self.config.prior_score_places == "new":
                if self.config.personal_memory:
                    known = batch["memory"][:, FREQ] > 0
                elif pointer is not None:  # without memory, the window is what is known
                    known = pointer[:, WINDOW_COUNT] > 0
                else:
                    known = None
                if known is not None:
                    prior_row = prior_row * (~known).to(prior_row.dtype)
            scores = scores + gate * prior_row
        return scores

    # --- shared / personal split -------------------------------------------------

    @staticmethod
    def is_personal(name: str) -> bool:
        """Whether a state-dict entry is personal (kept on the device)."""
        return name.startswith(PERSONAL_PREFIXES)

    def shared_state(self) -> dict[str, torch.Tensor]:
        """The parameters a federation averages (detached copies, stable order)."""
        return {
            k: v.detach().clone() for k, v in self.state_dict().items() if not self.is_personal(k)
        }

    def personal_state(self) -> dict[str, torch.Tensor]:
        """The parameters that never leave the device."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if self.is_personal(k)}

    def load_shared_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load shared parameters; every shared key must be present with its shape."""
        own = {k: v for k, v in self.state_dict().items() if not self.is_personal(k)}
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(f"shared state mismatch: missing {missing}, unexpected {extra}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(
                    f"shared state '{key}': shape {tuple(value.shape)}, "
                    f"expected {tuple(own[key].shape)}"
                )
        self.load_state_dict(state, strict=False)

    def load_personal_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load personal parameters saved by :meth:`personal_state`."""
        self.load_state_dict(state, strict=False)

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of trainable shared parameters."""
        return [(n, p) for n, p in self.named_parameters() if not self.is_personal(n)]
