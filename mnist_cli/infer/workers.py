"""`mnist serve --workers N`: N processes answer on one listening socket.

uvicorn's supervisor starts them, restarts one that dies, and stops them all on a signal. Each
process opens and checks the model itself, from settings the parent leaves in the environment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import asdict
from typing import Any

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from mnist_cli.errors import MnistError
from mnist_cli.infer.backends import Backend
from mnist_cli.infer.feedback import Corrections
from mnist_cli.infer.httpguard import Limits
from mnist_cli.infer.server import ServeError, create_app, end_by_signal, uvicorn_settings

_SETTINGS = "MNIST_SERVE_WORKER"  # the environment variable that carries them to each process

# Signals that end a one-process server (their default action): they end all the workers too.
# uvicorn's own meanings stay for SIGTTIN and SIGTTOU (one worker more or fewer).
_STOPPING = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
_STOPPING += [signal.SIGUSR1, signal.SIGUSR2]


def serve_workers(
    model: Backend,
    sock: socket.socket,
    workers: int,
    *,
    device: str = "auto",
    limits: Limits | None = None,
    log_level: str = "info",
    allowed_hosts: Collection[str] | None = None,
    access_log: bool = False,
    corrections: Corrections | None = None,
) -> None:
    """`serve` in `workers` processes sharing `sock`, until a signal stops them; the process
    then ends by that signal, as one server does (exit 130 for Ctrl-C, 143 for SIGTERM).
    ServeError when a worker cannot open the model (replaced since `model` was checked)."""
    import uvicorn

    limits = limits or Limits()
    os.environ[_SETTINGS] = json.dumps(
        {
            "model": model.path,
            "backend": model.name.value,
            "device": device,
            "limits": asdict(limits),
            "allowed_hosts": None if allowed_hosts is None else list(allowed_hosts),
            "supervisor": os.getpid(),
            "corrections": None
            if corrections is None
            else [str(corrections.folder), corrections.most],
        }
    )
    settings = uvicorn_settings(limits, log_level, access_log)
    config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=workers, **settings)
    before = {sig: signal.getsignal(sig) for sig in _STOPPING}
    supervisor = _Supervisor(config, sockets=[sock])
    supervisor.run()
    for sig, handler in before.items():
        signal.signal(sig, handler)
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise ServeError(f"a worker could not open {model.path}; all workers were stopped")
    if supervisor.stopped_by is not None:
        end_by_signal(supervisor.stopped_by)


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, stopped by each signal that stops one server, and remembering it."""

    stopped_by: int | None = None

    def handle_signals(self) -> None:
        for sig in tuple(self.signal_queue):
            if sig in _STOPPING:
                self.signal_queue.remove(sig)
                self.stopped_by = self.stopped_by or sig
                self.should_exit.set()
        super().handle_signals()

    def init_processes(self) -> None:
        # Workers start with Ctrl-C ignored (exec keeps an ignored signal), until uvicorn
        # takes it over: a Ctrl-C while they import would print a traceback from each. The
        # supervisor still sees it, and stops them.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().init_processes()
        finally:
            signal.signal(signal.SIGINT, previous)


def worker_app() -> Any:
    """The app of one worker process, from the settings serve_workers left in the
    environment. A model that cannot be opened ends the worker with uvicorn's start-up failure
    code, which stops the supervisor instead of restarting the worker for ever."""
    from mnist_cli import console
    from mnist_cli.infer.backends import open_model

    settings = json.loads(os.environ[_SETTINGS])
    where = {"backend": settings["backend"], "device": settings["device"]}
    try:
        model = open_model(settings["model"], **where)
    except MnistError as error:
        console.print_error(error)
        sys.exit(STARTUP_FAILURE)
    _end_with_the_parent(settings["supervisor"])
    limits = Limits(**settings["limits"])
    kept = settings["corrections"]
    corrections = Corrections(*kept) if kept else None
    return create_app(
        model, limits, allowed_hosts=settings["allowed_hosts"], corrections=corrections
    )


def _end_with_the_parent(supervisor: int) -> None:
    """A worker whose supervisor was killed (SIGKILL gives it no chance to stop them) stops
    itself, gracefully, instead of holding the port for ever: on Linux the kernel sends it
    SIGTERM (PR_SET_PDEATHSIG), elsewhere a thread watches for a new parent. A supervisor
    killed while the worker was still starting is seen by its pid."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # gone already, before the kernel could be asked
        os.kill(os.getpid(), signal.SIGTERM)
    if sys.platform == "linux":
        return

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
