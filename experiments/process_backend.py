"""A backend for Flower's simulation engine that runs the ClientApp in local worker
processes, one message at a time per process, over a pipe.

Flower 1.42's engine hands every node message to a backend (``Backend.process_message``,
called from one engine thread per worker). Its Ray backend submits each message as a Ray
actor call: about 7 ms of round trip per message on a 2-core machine even for a ClientApp
that does nothing, most of it in the process that also runs the ServerApp. This backend
keeps the engine (link state, delivery, contexts, error replies) and replaces only the
transport: ``workers`` processes started with ``spawn``, each loading the ClientApp once
and answering ``(message, context)`` pairs sent over its own pipe (pickled, as Ray
pickles them). It runs on one machine; a Ray cluster still needs the Ray backend.

Like a Ray worker with one CPU, a worker process runs with ``OMP_NUM_THREADS=1`` unless
the caller set it, so a client computes exactly what it computes under Ray (tested bit for
bit). A worker that dies (killed, out of memory, a crash in native code) costs only the
message it was running: that node's reply is an error, a new worker takes its place.
Workers ignore Ctrl-C (the engine's process stops them) and exit when their pipe closes,
so none outlives the process that started them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.server.superlink.fleet.vce.backend import Backend

STOP = None  # sent to a worker: exit
_OK, _APP_ERROR, _LOAD_ERROR = "ok", "app-error", "load-error"
_STOP_WAIT_S = 5.0
_SPAWN_LOCK = threading.Lock()


class ProcessBackend(Backend):
    """Run the ClientApp in ``workers`` local processes (see the module docstring).

    ``load_app`` returns the ClientApp in a worker; it must pickle by reference (a
    module-level function such as :func:`client.app.load_app`), since each worker
    imports it after setting its thread count.
    """

    def __init__(self, workers: int, load_app: Callable[[], ClientApp]) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        try:
            self._loader = pickle.dumps(load_app)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise ValueError(
                f"the process backend needs a module-level ClientApp loader, got {load_app!r}"
            ) from err
        self._workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Start the worker processes (``app_fn``, the engine's in-process loader, is not
        used: the workers load the app with ``load_app``)."""
        for _ in range(self._workers):
            self._idle.put(self._start_worker())

    @property
    def num_workers(self) -> int:
        return self._workers

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.process.pid for w in self._all]

    def is_worker_idle(self) -> bool:
        return not self._idle.empty()

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """Run the ClientApp on ``message`` in an idle worker; return its reply and the
        node's updated context. Raises ``ClientAppException`` when the app raised or the
        worker died, ``LoadClientAppError`` when the app cannot be loaded."""
        worker = self._idle.get()
        try:
            worker.conn.send((message, context))
            status, first, second = worker.conn.recv()
        except (EOFError, OSError):
            code = worker.stop()
            self._all.remove(worker)
            worker = self._start_worker()
            raise ClientAppException(
                f"the worker process running this node's ClientApp exited (code {code})"
            ) from None
        finally:
            self._idle.put(worker)
        if status == _LOAD_ERROR:
            raise LoadClientAppError(first)
        if status == _APP_ERROR:
            raise ClientAppException(first)
        return first, second

    def terminate(self) -> None:
        """Stop every worker (asked first, then terminated, then killed)."""
        for worker in self._all:
            worker.stop()
        self._all.clear()

    def _start_worker(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child, self._loader), name="fedgeo-client-worker", daemon=True
        )
        # Like a Ray worker with one CPU: one OpenMP/BLAS thread unless the caller chose.
        # The lock keeps two engine threads replacing dead workers from interleaving
        # their changes to this process's environment.
        with _SPAWN_LOCK, _environment(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")):
            process.start()
        child.close()
        worker = _Worker(process, parent)
        self._all.append(worker)
        return worker


class _Worker:
    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    def stop(self) -> int | None:
        """Ask the process to exit, then end it; return its exit code."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(STOP)
        self.process.join(_STOP_WAIT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_STOP_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        return self.process.exitcode


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """``values`` in this process's environment (which a spawned process inherits) while
    the block runs."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _serve(conn: Connection, loader: bytes) -> None:
    """A worker process: load the app once, then answer messages until told to stop or
    the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    app: ClientApp | None = None
    load_error: str | None = None
    try:
        app = pickle.loads(loader)()
    except Exception as ex:  # noqa: BLE001 (reported with every message instead)
        load_error = f"{type(ex).__name__}: {ex}"
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is STOP:
            return
        message, context = item
        if app is None:
            conn.send((_LOAD_ERROR, load_error, None))
            continue
        try:
            reply = app(message=message, context=context)
        except Exception as ex:  # noqa: BLE001 (the engine turns it into an error reply)
            detail = traceback.format_exception_only(type(ex), ex)[-1].strip()
            conn.send((_APP_ERROR, detail, None))
            continue
        conn.send((_OK, reply, context))
