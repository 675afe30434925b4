"""In-process federation for quick design sweeps (no Flower, no Ray).

Runs rounds of sample -> local training -> aggregation in one process with the same
library code the Flower apps use (model, local training, FedGeo's aggregators and
exclusion), so a design choice can be screened in minutes, on a GPU when one is there.
Results of record come from ``fedgeo simulate`` (Flower's engine); this script is how
FedGeo's default aggregation was chosen (docs/method.md).

    python experiments/design_sweep.py --data ../shared/data/foursquare-nyc/checkins.csv \\
        --name fedgeo-gm --exclusion --aggregation geometric-median --mu 0.01 --rounds 30

``--set OPTION=VALUE`` (repeatable) sets any model option (``fedgeo.models.ModelConfig``),
e.g. ``--set prior_score_places=all``; ``--prior-k`` the prior's neighbours per place.

Diagnostics that no strategy offers: ``--optimizer shared-adam`` (the clients divide by a
second moment the server keeps, :class:`SharedMomentAdam`), ``--users-per-client G`` (one
client trains on ``G`` users' data pooled), ``--place-rows visited`` and
``--server-optimizer`` (docs/results.md, the no-memory screens).

Prints one JSON line per round (drift, participants, seconds; validation metrics every
``--eval-every`` rounds) and a final line with test and validation metrics, each with the
return and new-place breakdown (docs/metrics.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgeo.data.loading import load_dataset  # noqa: E402
from fedgeo.geo.prior import AdjacencyPrior, PriorConfig  # noqa: E402
from fedgeo.metrics import BREAKDOWN_PREFIXES, MetricSums  # noqa: E402
from fedgeo.models import ModelConfig, SampleIndex, build_model  # noqa: E402
from fedgeo.training import TrainConfig, evaluate, train_local  # noqa: E402
from server.strategies.aggregation import get_aggregator  # noqa: E402
from server.strategies.exclusion import ExclusionConfig, participation_probability  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="check-in CSV (default: the synthetic city)")
    ap.add_argument("--name", default="run")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=100, help="clients per round")
    ap.add_argument("--epochs", type=int, default=2, help="local epochs")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--optimizer",
        default="adam",
        choices=("adam", "sgd", "shared-adam"),
        help="local optimizer: adam and sgd start fresh on every client; shared-adam divides "
        "each client's momentum by the server's second-moment estimate (SharedMomentAdam)",
    )
    ap.add_argument(
        "--moment-decay",
        type=float,
        default=0.5,
        help="shared-adam: the server's second moment v <- decay v + (1 - decay) mean_i g2_i",
    )
    ap.add_argument("--momentum", type=float, default=0.0, help="local SGD momentum")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--users-per-client",
        type=int,
        default=1,
        help="a diagnostic: each client trains on this many users' data pooled (users "
        "grouped at random once; needs --set user_embedding=false)",
    )
    ap.add_argument("--no-prior", action="store_true")
    ap.add_argument("--prior-k", type=int, default=10, help="neighbours per place in the prior")
    ap.add_argument("--exclusion", action="store_true")
    ap.add_argument("--aggregation", default="mean")
    ap.add_argument("--median-iters", type=int, default=10)
    ap.add_argument(
        "--place-rows",
        default="all",
        choices=("all", "visited"),
        help="rows of the place tables (place_bias, place_embedding): aggregated over all "
        "clients (all) or each row over the clients whose training data holds that place "
        "(visited; a row no client holds keeps its value)",
    )
    ap.add_argument("--mu", type=float, default=0.0, help="proximal term")
    ap.add_argument("--server-lr", type=float, default=1.0)
    ap.add_argument(
        "--server-optimizer",
        default="sgd",
        choices=("sgd", "adam", "fedexp"),
        help="server step on the aggregated update: sgd (FedAvg, step --server-lr), adam "
        "(FedAdam, Reddi et al. 2021: eta --server-lr, beta 1 0.9, beta 2 --beta-2, tau --tau) "
        "or fedexp (FedExP, Jhunjhunwala et al. 2023: an adaptive step of at least 1, eps --tau)",
    )
    ap.add_argument("--tau", type=float, default=1e-3, help="FedAdam adaptivity / FedExP epsilon")
    ap.add_argument("--beta-2", type=float, default=0.99, help="server adam: second-moment decay")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--validation-only",
        action="store_true",
        help="final line with validation metrics only (for screening designs)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a model option (fedgeo.models.ModelConfig field), e.g. prior_gate_bias=0",
    )
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset, _ = load_dataset(a.data) if a.data else load_dataset()
    cfg = ModelConfig(**model_options(a.set))
    cfg = cfg.without_prior() if a.no_prior else cfg
    prior_config = PriorConfig(k=a.prior_k)
    prior = AdjacencyPrior.from_places(dataset.places, prior_config) if cfg.uses_prior else None
    model, features = build_model(
        dataset.num_places, 1, cfg, prior, seed=a.seed, coordinates=dataset.places.coordinates()
    )
    model.to(device)
    global_state = {k: v.cpu().clone() for k, v in model.shared_state().items()}
    initial_personal = {k: v.cpu() for k, v in model.personal_state().items()}
    personal: dict[int, dict[str, torch.Tensor]] = {}
    users = dataset.users
    group_size = a.users_per_client
    if group_size < 1:
        raise SystemExit(f"design_sweep: --users-per-client must be >= 1, got {group_size}")
    grouped_conflicts = a.exclusion or cfg.user_embedding or a.place_rows == "visited"
    if group_size > 1 and (grouped_conflicts or a.optimizer == "shared-adam"):
        raise SystemExit(
            "design_sweep: --users-per-client > 1 needs --set user_embedding=false, and "
            "none of --exclusion, --place-rows visited, --optimizer shared-adam"
        )
    groups: list[np.ndarray] = []  # --users-per-client: the users of each client
    if group_size > 1:
        order = np.random.default_rng([a.seed, 7]).permutation(len(users))
        groups = [order[g : g + group_size] for g in range(0, len(users), group_size)]
    exclusion = ExclusionConfig(enabled=a.exclusion)
    probs = np.array(
        [
            participation_probability({"distinct_places": len(np.unique(u.places))}, exclusion)
            if a.exclusion
            else 1.0
            for u in users
        ]
    )
    aggregate = get_aggregator(a.aggregation, max_iter=a.median_iters)
    train_cfg = TrainConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        optimizer="adam" if a.optimizer == "shared-adam" else a.optimizer,
        momentum=a.momentum,
        device=device,
    )
    rng = np.random.default_rng(a.seed)
    server_adam = ServerAdam(a.server_lr, beta_2=a.beta_2, tau=a.tau)
    # --place-rows visited: each user's training places, found once for the whole run
    places_of = [training_places(u) for u in users] if a.place_rows == "visited" else []
    shared_v: dict[str, torch.Tensor] = {}  # shared-adam: server moments, model device
    started = time.time()

    def use_client(i: int) -> None:
        model.load_shared_state(global_state)
        model.load_personal_state(personal.get(i, initial_personal))

    def federated_metrics(split: str) -> dict[str, float]:
        parts: dict[str, list[MetricSums]] = {"": [], **{p: [] for p in BREAKDOWN_PREFIXES}}
        for i, user in enumerate(users):
            if len(user.split(split)):
                use_client(i)
                ev = evaluate(model, features, SampleIndex([user]), split, device=device)
                parts[""].append(ev.sums)
                for prefix, sums in ev.breakdown_sums().items():
                    parts[prefix].append(sums)
        metrics: dict[str, float] = {}
        for prefix, sums in parts.items():
            metrics.update(MetricSums.total(sums).finalize(prefix))
        return metrics

    def emit(record: dict) -> None:
        record["name"] = a.name
        print(json.dumps(record), flush=True)

    for rnd in range(1, a.rounds + 1):
        if group_size > 1:
            eligible = np.arange(len(groups))
        else:
            draws = np.random.default_rng([a.seed, rnd]).random(len(users))
            eligible = np.flatnonzero(draws < probs)
        chosen = rng.choice(eligible, size=min(a.clients, len(eligible)), replace=False)
        anchor = {k: v.to(device) for k, v in global_state.items()}
        replies = []
        holders: list[np.ndarray] = []  # the training places of each reply's client
        squares: list[tuple[dict[str, torch.Tensor], int]] = []  # shared-adam: mean g^2
        for i in chosen:
            use_client(int(i))
            train_cfg.seed = int(rnd * 100_000 + i)
            extra = _proximal(model, anchor, a.mu) if a.mu > 0 else None
            if a.optimizer == "shared-adam":
                stats, g2 = train_shared_adam(model, features, users[i], train_cfg, shared_v, extra)
            else:
                members = [users[j] for j in groups[i]] if group_size > 1 else [users[i]]
                stats = train_local(model, features, members, train_cfg, extra_loss=extra)
            if stats["num-examples"] == 0:
                continue
            if a.optimizer == "shared-adam":
                squares.append((g2, stats["num-examples"]))
            if group_size == 1:
                personal[int(i)] = {k: v.cpu() for k, v in model.personal_state().items()}
            arrays = {k: v.cpu().numpy() for k, v in model.shared_state().items()}
            replies.append((arrays, stats["num-examples"]))
            if places_of:
                holders.append(places_of[int(i)])
        result = aggregate(replies)
        if squares:
            update_shared_moments(shared_v, squares, a.moment_decay)
        if a.place_rows == "visited":
            visited_row_mean(result.arrays, global_state, replies, holders)
        server_lr = a.server_lr
        if a.server_optimizer == "fedexp":
            server_lr = fedexp_step(global_state, replies, result.arrays, a.tau)
        new_state = {}
        for key, old in global_state.items():
            value = torch.from_numpy(np.asarray(result.arrays[key])).to(old.dtype)
            if not old.dtype.is_floating_point:
                new_state[key] = value
            elif a.server_optimizer == "adam":
                new_state[key] = old + server_adam.step(key, value - old, rnd)
            else:
                new_state[key] = old + server_lr * (value - old)
        global_state = new_state
        record = {"round": rnd, "drift": result.drift, "participants": len(replies)}
        if a.server_optimizer == "fedexp":
            record["server_lr"] = round(server_lr, 3)
        record["seconds"] = round(time.time() - started, 1)
        if rnd % a.eval_every == 0:
            record["validation"] = federated_metrics("validation")
        emit(record)
    final: dict = {"round": "final"}
    if not a.validation_only:
        final["test"] = federated_metrics("test")
    final["validation"] = federated_metrics("validation")
    final["seconds"] = round(time.time() - started, 1)
    emit(final)


PLACE_TABLES = ("place_bias", "place_embedding.weight")
"""Shared arrays whose row ``l`` belongs to place ``l``."""


def training_places(user) -> np.ndarray:
    """The places a client's training samples can see (inputs and targets)."""
    if not len(user.train):
        return np.zeros(0, dtype=np.int64)
    return np.unique(user.places[: int(user.train.max()) + 1])


def visited_row_mean(
    aggregate: dict[str, np.ndarray],
    global_state: dict[str, torch.Tensor],
    replies: list[tuple[dict[str, np.ndarray], int]],
    holders: list[np.ndarray],
) -> None:
    """Replace each place-table row of ``aggregate`` by the example-weighted mean over
    the clients that hold that place: ``theta_l + sum_i w_i m_il (theta_il - theta_l) /
    sum_i w_i m_il`` (``m_il`` = 1 when client ``i`` saw place ``l``); rows nobody holds
    keep the global value."""
    for key in PLACE_TABLES:
        if key not in aggregate:
            continue
        old = global_state[key].double().numpy()
        num = np.zeros_like(old)
        den = np.zeros(old.shape[0])
        for (arrays, n), places in zip(replies, holders, strict=True):
            num[places] += n * (arrays[key][places].astype(np.float64) - old[places])
            den[places] += n
        new = old.copy()
        rows = den > 0
        new[rows] += num[rows] / den[rows].reshape((-1,) + (1,) * (old.ndim - 1))
        aggregate[key] = new.astype(aggregate[key].dtype)


def fedexp_step(
    global_state: dict[str, torch.Tensor],
    replies: list[tuple[dict[str, np.ndarray], int]],
    aggregate: dict[str, np.ndarray],
    eps: float,
) -> float:
    """FedExP's server step size (Jhunjhunwala et al., ICLR 2023), for any aggregate:
    ``max(1, mean_i |d_i|^2 / (2 (|d|^2 + eps)))`` with ``d_i`` client ``i``'s update and
    ``d`` the aggregated update, over every floating shared weight. When the clients'
    updates disagree (drift) their aggregate is short and the server extrapolates."""
    keys = [k for k, v in global_state.items() if v.dtype.is_floating_point]
    old = {k: global_state[k].double().numpy() for k in keys}
    clients = [sum(float(np.sum((arrays[k] - old[k]) ** 2)) for k in keys) for arrays, _ in replies]
    mean = sum(float(np.sum((np.asarray(aggregate[k]) - old[k]) ** 2)) for k in keys)
    return max(1.0, float(np.mean(clients)) / (2.0 * (mean + eps))) if clients else 1.0


class ServerAdam:
    """FedAdam's server step on the mean update ``delta`` (Reddi et al. 2021):
    ``m = b1 m + (1 - b1) delta``, ``v = b2 v + (1 - b2) delta^2``,
    step ``eta_t m / (sqrt(v) + tau)`` with Flower's bias-corrected
    ``eta_t = eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))`` in round ``t``."""

    def __init__(self, eta: float, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3):
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def step(self, key: str, delta: torch.Tensor, server_round: int) -> torch.Tensor:
        m = self.m.get(key, torch.zeros_like(delta))
        v = self.v.get(key, torch.zeros_like(delta))
        self.m[key] = m = self.beta_1 * m + (1 - self.beta_1) * delta
        self.v[key] = v = self.beta_2 * v + (1 - self.beta_2) * delta * delta
        t = server_round + 1.0
        eta = self.eta * (1 - self.beta_2**t) ** 0.5 / (1 - self.beta_1**t)
        return eta * m / (v.sqrt() + self.tau)


class SharedMomentAdam(torch.optim.Optimizer):
    """Adam whose second moment is the server's, held fixed during local training.

    ``m <- b1 m + (1 - b1) g``; ``p <- p - lr (m / (1 - b1^t)) / (sqrt(v_s) + eps)`` with
    ``v_s`` the server's estimate of each parameter's mean squared gradient over the
    clients. A fresh Adam on a client divides by that client's own gradients, so a few
    steps move every parameter by about ``lr`` whatever its gradient's size and the mean
    of the clients' updates loses how strongly each parameter was pulled; a preconditioner
    common to all clients keeps every update linear in its gradients (as Local AMSGrad's
    shared second moment does, Chen, Li and Li 2020). Parameters with no server moment
    (personal ones, and all of them in the first round) use their own, as Adam does.
    Records each parameter's mean squared gradient over the steps, for the server."""

    def __init__(
        self,
        named: list[tuple[str, torch.nn.Parameter]],
        lr: float,
        shared_v: dict[str, torch.Tensor],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.names = {id(p): n for n, p in named}
        super().__init__([p for _, p in named], {"lr": lr, "betas": betas, "eps": eps})
        self.shared_v = shared_v

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: D102
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                shared = self.shared_v.get(self.names[id(p)])
                if not state:
                    state["t"] = 0
                    state["m"], state["g2"] = torch.zeros_like(p), torch.zeros_like(p)
                    if shared is None:
                        state["v"] = torch.zeros_like(p)
                state["t"] += 1
                t = state["t"]
                state["m"].mul_(b1).add_(g, alpha=1 - b1)
                state["g2"].add_(g * g)
                if shared is None:
                    state["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                    v = state["v"] / (1 - b2**t)
                else:
                    v = shared
                m_hat = state["m"] / (1 - b1**t)
                p.addcdiv_(m_hat, v.sqrt().add_(group["eps"]), value=-group["lr"])

    def mean_squares(self, names: set[str]) -> dict[str, torch.Tensor]:
        """The mean squared gradient over the local steps of each parameter in ``names``
        (on the parameter's device, where the server's moments stay)."""
        return {
            self.names[id(p)]: state["g2"] / state["t"]
            for group in self.param_groups
            for p in group["params"]
            if self.names[id(p)] in names and (state := self.state.get(p))
        }


def train_shared_adam(
    model, features, user, cfg: TrainConfig, shared_v: dict[str, torch.Tensor], extra_loss
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One client's local epochs with :class:`SharedMomentAdam`; returns
    :func:`~fedgeo.training.train_local`'s stats and the shared parameters' mean squared
    gradients."""
    optimizer = SharedMomentAdam(list(model.named_parameters()), cfg.lr, shared_v)
    stats = train_local(model, features, [user], cfg, extra_loss=extra_loss, optimizer=optimizer)
    names = {n for n, _ in model.shared_parameters()}
    return stats, optimizer.mean_squares(names)


def update_shared_moments(
    shared_v: dict[str, torch.Tensor],
    squares: list[tuple[dict[str, torch.Tensor], int]],
    decay: float,
) -> None:
    """The server's second moments: ``v <- decay v + (1 - decay) sum_i n_i g2_i / sum_i
    n_i`` over the round's clients ``i`` (``n_i`` examples); the first round sets ``v`` to
    the mean."""
    total = sum(n for _, n in squares)
    for name in squares[0][0]:
        mean = sum(g2[name] * (n / total) for g2, n in squares)
        old = shared_v.get(name)
        shared_v[name] = mean if old is None else decay * old + (1 - decay) * mean


def model_options(pairs: list[str]) -> dict[str, object]:
    """``OPTION=VALUE`` pairs as ModelConfig keyword arguments (values parsed as JSON when
    they are JSON, else kept as strings)."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"design_sweep: --set needs OPTION=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _proximal(model, anchor: dict[str, torch.Tensor], mu: float):
    names = [n for n, _ in model.shared_parameters()]

    def term(m) -> torch.Tensor:
        params = dict(m.named_parameters())
        return 0.5 * mu * sum(((params[n] - anchor[n]) ** 2).sum() for n in names)

    return term


if __name__ == "__main__":
    main()
