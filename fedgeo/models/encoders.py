"""Sequence encoders: how a model reads the user's recent check-ins.

Every model of the zoo shares the scoring head of :class:`NextLocationModel` (a shared
query against the place embeddings, plus the optional on-device memory, geographic prior
and population scores); they differ in how the window of recent check-ins (place and
hour-of-week embeddings, left-padded) becomes the state ``h`` the head reads. An encoder
takes ``x`` of shape ``(B, W, d)``, the padding mask ``valid`` ``(B, W)`` (the last
position is always a real check-in) and the batch (for encoders that read more of it,
such as Flashback's time gaps and distances) and returns ``(B, hidden_dim)``.

Adding a model is one class here and one line in :data:`ENCODERS` (docs/model.md, "The
model zoo").
"""

from __future__ import annotations

import torch
from torch import nn

from fedgeo.models.config import MODELS


class GRUEncoder(nn.Module):
    """A GRU over the window; the state after the last check-in (the memory model's)."""

    def __init__(self, d: int, hidden: int, window: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(d, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, batch: dict) -> torch.Tensor:
        _, h = self.rnn(x)
        return h[-1]


class LSTMEncoder(nn.Module):
    """An LSTM over the window: the recurrent baseline of the federated next-location
    literature (e.g. Feng et al., DeepMove, WWW 2018, without its history attention)."""

    def __init__(self, d: int, hidden: int, window: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(d, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, batch: dict) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return h[-1]


class TransformerEncoder(nn.Module):
    """Causal self-attention over the window (two layers, two heads, pre-norm). Each
    check-in's input is its place and hour-of-week embedding (``x``) plus three
    encodings: a learned one of its position in the window, and learned linear ones of
    its time interval and its distance to the last check-in, ``log(1 + Δt / 1 h)`` and
    ``log(1 + Δd / 1 km)`` (the interval-aware inputs of STAN, Luo et al., WWW 2021, as
    additive encodings). Each check-in attends to the check-ins before it and to itself;
    padding is never attended to. The output at the last check-in, projected to
    ``hidden``, is the state. Reads ``window_gap_hours`` and ``window_distance_km``."""

    def __init__(self, d: int, hidden: int, window: int, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.position = nn.Embedding(window, d)
        nn.init.normal_(self.position.weight, std=0.02)
        self.interval = nn.Linear(2, d)
        nn.init.normal_(self.interval.weight, std=0.02)
        nn.init.zeros_(self.interval.bias)
        layer = nn.TransformerEncoderLayer(
            d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, hidden)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, batch: dict) -> torch.Tensor:
        b, w, _ = x.shape
        intervals = torch.stack(
            [torch.log1p(batch["window_gap_hours"]), torch.log1p(batch["window_distance_km"])],
            dim=-1,
        )  # (B, W, 2); padding has 0 in both
        x = x + self.position.weight[None, :w] + self.interval(intervals)
        later = torch.triu(torch.ones(w, w, dtype=torch.bool, device=x.device), diagonal=1)
        blocked = later[None] | ~valid[:, None, :]  # (B, query, key): True = not allowed
        blocked = blocked & ~torch.eye(w, dtype=torch.bool, device=x.device)[None]
        heads = self.layers.layers[0].self_attn.num_heads
        mask = blocked.repeat_interleave(heads, dim=0)
        return self.out(self.layers(x, mask=mask)[:, -1])


FLASHBACK_LAMBDA_T = 0.1
"""Flashback's temporal decay per day (Yang et al. 2020, lambda_t)."""
FLASHBACK_LAMBDA_S_KM = 100.0 / 111.2
"""Flashback's spatial decay, 100 per degree as in the paper, per kilometre."""


class FlashbackEncoder(nn.Module):
    """Flashback (Yang et al., *Location Prediction over Sparse User Mobility Traces Using
    RNNs: Flashback in Hidden States!*, IJCAI 2020): a recurrent network whose state for
    the next check-in is the average of its hidden states at the past check-ins, each
    weighted by how close it is to the last check-in in time and space,

        w_i = (cos(2 pi dt_i / 1 day) + 1) / 2 * exp(-lambda_t dt_i) * exp(-lambda_s dd_i),

    with ``dt_i`` the time (days) and ``dd_i`` the distance (km) from check-in ``i`` to the
    last one: the same hour of an earlier day and nearby places weigh most. A GRU gives
    the hidden states (the paper's best variant besides its plain RNN); ``valid`` masks
    the padding. Reads ``window_gap_hours`` and ``window_distance_km`` from the batch."""

    def __init__(self, d: int, hidden: int, window: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(d, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, batch: dict) -> torch.Tensor:
        states, _ = self.rnn(x)  # (B, W, H)
        days = batch["window_gap_hours"] / 24.0
        decay = torch.exp(-FLASHBACK_LAMBDA_T * days)
        temporal = (torch.cos(2 * torch.pi * days) + 1) / 2 * decay
        spatial = torch.exp(-FLASHBACK_LAMBDA_S_KM * batch["window_distance_km"])
        weights = (temporal * spatial + 1e-10) * valid.to(states.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.einsum("bw,bwh->bh", weights, states)


ENCODERS: dict[str, type[nn.Module]] = {
    "memory": GRUEncoder,
    "lstm": LSTMEncoder,
    "transformer": TransformerEncoder,
    "flashback": FlashbackEncoder,
}
"""Model name -> sequence encoder (``model`` in the run config, ``--model``)."""
assert tuple(ENCODERS) == MODELS, "fedgeo.models.config.MODELS names the encoders"


def build_encoder(name: str, d: int, hidden: int, window: int) -> nn.Module:
    """The encoder of model ``name``; ``ValueError`` ending with the valid names."""
    if name not in ENCODERS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(ENCODERS)}")
    return ENCODERS[name](d, hidden, window)
