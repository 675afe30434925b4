"""Flower's simulation engine, started in this process.

``flwr run`` on a simulation federation starts a ``flwr-simulation`` process whose
runtime (:func:`flwr.simulation.app.run_simulation_process`) hands the ServerApp and
ClientApp to the engine function :func:`flwr.simulation.run_simulation._run_simulation`
(Ray backend, one actor per CPU, virtual SuperNodes). ``fedgeo simulate`` and
``experiments.run`` call that same engine function directly, with app objects instead
of a FAB, so that a research script keeps its callbacks (progress bars, a traced grid,
several federations in one engine start), and on one machine with their clients in local
worker processes instead of Ray actors (:func:`process_backend`). The public wrapper
``run_simulation`` is deprecated in Flower 1.42 in favour of ``flwr run``; this module is
the one place that touches the engine, and flwr is pinned (constraints.txt) so that its
signature is known (tests/test_engine.py checks it).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Flower is imported when the engine starts (the CLI starts fast)
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

BackendConfig = dict[str, dict[str, Any]]

PROCESS_BACKEND = "process"
BACKENDS = (PROCESS_BACKEND, "ray")  # where simulated clients run (--backend)


def quiet_ray_environment() -> None:
    """Settings Ray reads at start: normal worker priority and today's GPU behaviour.

    Ray starts its workers at niceness 15; on a small machine anything else running
    would then starve the clients, so they run at normal priority unless the caller set
    ``RAY_worker_niceness``. ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` opts in to the
    behaviour Ray announces with a FutureWarning (a worker with no GPU leaves
    ``CUDA_VISIBLE_DEVICES`` alone), which silences the warning.
    """
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def run_engine(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_nodes: int,
    backend_config: BackendConfig,
    verbose: bool = False,
    load_client_app: Callable[[], ClientApp] | None = None,
    processes: int | None = None,
) -> None:
    """Run ``server_app`` against ``num_nodes`` virtual SuperNodes running ``client_app``
    until the ServerApp's main function returns. An exception in the ServerApp is raised
    here; the caller shuts Ray down.

    The clients run on Ray as ``backend_config`` says, or, with ``processes``, in that many
    local worker processes (:mod:`experiments.process_backend`; needs ``load_client_app``).
    """
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    if processes is not None:
        if load_client_app is None:
            raise ValueError("the process backend needs load_client_app")
        backend = process_backend(processes, load_client_app)
    else:
        quiet_ray_environment()
        backend = app_loader(load_client_app) if load_client_app else contextlib.nullcontext()
    with indexed_delivery(), backend:
        _run_simulation(
            num_supernodes=num_nodes,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config=backend_config,
            verbose_logging=verbose,
        )


@contextlib.contextmanager
def app_loader(load: Callable[[], ClientApp]) -> Iterator[None]:
    """The Ray backend gives its workers ``load`` as the ClientApp's loader.

    Flower 1.42's Ray backend sends the loader with every message it hands to a worker,
    pickled again each time (``RayBackend.process_message``). Its own loader is a closure
    over the ClientApp object, which cloudpickle serializes by value: about 1 ms of the
    process that also runs the ServerApp, per node message. A module-level function such
    as :func:`client.app.load_app` pickles as its name. The worker runs the same app
    either way; the backend's ``build`` is restored when the engine stops.
    """
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original_build = RayBackend.build

    @functools.wraps(original_build)
    def build(self, app_fn):  # noqa: ANN001, ANN202 (Flower's signature)
        return original_build(self, load)

    RayBackend.build = build
    try:
        yield
    finally:
        RayBackend.build = original_build


@contextlib.contextmanager
def process_backend(processes: int, load: Callable[[], ClientApp]) -> Iterator[None]:
    """The engine runs its clients in ``processes`` local worker processes
    (:class:`experiments.process_backend.ProcessBackend`) instead of Ray actors.

    Flower 1.42's engine builds its Ray backend inside ``vce_api.start_vce`` and hands it
    to ``run_api``; here ``run_api`` is given this backend instead. Nothing else of the
    engine changes; ``run_api`` is restored when the engine stops.
    """
    from flwr.server.superlink.fleet.vce import vce_api

    from experiments.process_backend import ProcessBackend

    original_run_api = vce_api.run_api

    @functools.wraps(original_run_api)
    def run_api(app_fn, backend_fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return original_run_api(app_fn, lambda: ProcessBackend(processes, load), *args, **kwargs)

    vce_api.run_api = run_api
    try:
        yield
    finally:
        vce_api.run_api = original_run_api


@contextlib.contextmanager
def indexed_delivery() -> Iterator[None]:
    """Deliver the ServerApp's messages to the simulated nodes in time proportional to the
    messages, not to nodes x messages.

    Flower 1.42's engine hands messages to its workers from a thread that, every 0.1 s,
    asks the in-memory link state for one message per node; each ask scans every stored
    message (``InMemoryLinkState.get_message_ins``), so a sweep costs nodes x messages:
    with 10,000 nodes and the final test's 10,000 messages, 10^8 checks every 0.1 s in
    the process that also runs the ServerApp. Here the link state notes each message it
    stores, per destination node, and the thread's sweep (``add_messages_to_queue``)
    visits only the nodes with a message waiting, one message per node per sweep as
    before, with the same validity checks (``_check_stored_messages``) and the same
    delivery mark. Messages reach the nodes in the same order; results do not change
    (tests/test_engine.py). Both are restored when the engine stops.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.supercore.date import now

    original_store = InMemoryLinkState.store_message_ins
    original_sweep = vce_api.add_messages_to_queue

    def store_message_ins(self, message):  # noqa: ANN001, ANN202 (Flower's signature)
        message_id = original_store(self, message)
        if message_id is not None:
            _new_messages(self).append((int(message.metadata.dst_node_id), message_id))
        return message_id

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:  # noqa: ANN001
        pending: dict[int, collections.deque[str]] = {}
        new = _new_messages(state)
        while not f_stop.is_set():
            with state.lock:
                while new:
                    node_id, message_id = new.popleft()
                    if node_id in nodes_mapping:
                        pending.setdefault(node_id, collections.deque()).append(message_id)
                delivered_at = now().isoformat()
                for node_id in list(pending):
                    waiting = pending[node_id]
                    while waiting:
                        message_id = waiting.popleft()
                        state._check_stored_messages({message_id})
                        message = state.message_ins_store.get(message_id)
                        if message is not None and message.metadata.delivered_at == "":
                            message.metadata.delivered_at = delivered_at
                            queue.put(message)
                            break
                    if not waiting:
                        del pending[node_id]
            f_stop.wait(0.1)

    InMemoryLinkState.store_message_ins = store_message_ins
    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield
    finally:
        InMemoryLinkState.store_message_ins = original_store
        vce_api.add_messages_to_queue = original_sweep


def _new_messages(state: Any) -> collections.deque[tuple[int, str]]:
    """(destination node, message id) of the messages ``state`` stored since the sweep
    last looked (kept on the state object)."""
    queue = getattr(state, "_fedgeo_new_messages", None)
    if queue is None:
        queue = collections.deque()
        state._fedgeo_new_messages = queue
    return queue


class ClusterError(RuntimeError):
    """A Ray cluster that cannot be used (unreachable, or without a CPU for a client)."""


def ray_address(option: str | None) -> str | None:
    """The cluster to attach to: the option, else Ray's own ``RAY_ADDRESS``, else None
    (start a local Ray instance)."""
    address = (option or os.environ.get("RAY_ADDRESS") or "").strip()
    return address or None


def resolve_backend(backend: str | None, address: str | None) -> str:
    """The backend a run uses: ``backend`` if given, else Ray on a cluster (``address``)
    and local worker processes otherwise. Raises ``ValueError`` for an unknown name and
    :class:`ClusterError` for a backend that cannot run on a cluster."""
    chosen = backend or ("ray" if address is not None else PROCESS_BACKEND)
    if chosen not in BACKENDS:
        raise ValueError(f"unknown backend {chosen!r}; valid backends: {', '.join(BACKENDS)}")
    if address is not None and chosen != "ray":
        raise ClusterError(
            f"the {chosen} backend runs on this machine only; a Ray cluster ({address}) "
            "needs the ray backend"
        )
    return chosen


def local_backend(cpus: int) -> BackendConfig:
    """Ray settings for a local instance on this machine: one CPU per client, ``cpus``
    workers, no dashboard, no worker logs forwarded to the driver. ``address="local"``
    starts a new instance even when a ``ray start`` cluster runs on this machine (Ray
    would otherwise attach to it)."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "address": "local",
            "num_cpus": cpus,
            "num_gpus": 0,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
            "include_dashboard": False,
        },
    }


def cluster_backend() -> BackendConfig:
    """Ray settings on a cluster :func:`connect_cluster` attached to: one CPU per client;
    the cluster's CPUs decide how many run at once."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}


def connect_cluster(
    address: str, *, cpus_per_client: float = 1.0, timeout_s: float = 10.0
) -> float:
    """Attach this process to the running Ray cluster at ``address`` (``HOST:PORT`` of its
    head, as ``ray start --head`` prints it, or ``auto``); return the cluster's CPUs.

    Raises :class:`ClusterError` with a one-line message when the head does not answer
    within ``timeout_s`` or the cluster has fewer CPUs than one client needs (then the
    connection is closed again). Nothing is started on the cluster here.
    """
    import ray

    quiet_ray_environment()
    if address != "auto":
        host, sep, port = address.removeprefix("ray://").rpartition(":")
        if not sep or not port.isdigit():
            raise ClusterError(f"Ray address {address!r} is not HOST:PORT")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout_s).close()
        except OSError as err:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {err}") from None
    # Workers on other nodes import the apps from the same paths (same environment).
    pythonpath = os.pathsep.join(sys.path)
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"cannot attach to the Ray cluster at {address}: {first}") from None
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if cpus < cpus_per_client:
        ray.shutdown()
        raise ClusterError(
            f"the Ray cluster at {address} has {cpus:g} CPU(s); each simulated client needs "
            f"{cpus_per_client:g}"
        )
    return cpus
