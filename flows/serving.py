"""Scheduled batch jobs: a flow served as a Prefect deployment that runs on a schedule.

Prefect starts each run in a process of its own (multiprocessing's spawn), in the serving
command's process group, so the terminal's Ctrl-C reaches every run too. Left to Python, a run
caught starting up or exiting prints a traceback, and one caught working crashes without saying
how to go on. Here a run's Python starts with SIGINT blocked (``quiet_python.sh``) and takes it
only while its flow works: a Ctrl-C that came during start-up is taken as the flow begins, one
while it works stops it, and either ends the run Cancelled with what was written kept for the next
run; one while the process exits is never taken. The serving command itself stops as Prefect's
runner does: it pauses the deployment and waits for its runs.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from fcn import FcnpipeError
from flows.runtime import Flow
from pipeline import stopping

__all__ = ["SERVING_STOPPED", "serve_on_schedule", "stoppable"]

QUIET_PYTHON = Path(__file__).with_name("quiet_python.sh")
"""Starts a served run's Python with SIGINT ignored (an ignored signal stays ignored across exec)."""

RESUMES = "the next run resumes it: what was written is kept."

SERVING_STOPPED = "no more runs start; a run stopped midway is resumed by the next: what was written is kept."


def serve_on_schedule(
    flow: Flow[..., Any],
    parameters: dict[str, Any],
    *,
    name: str,
    cron: str | None,
    interval: timedelta | None,
    say: Callable[[str], None],
) -> None:
    """Serve ``flow`` with ``parameters`` as a deployment on a schedule until interrupted.

    Against the Prefect server in ``PREFECT_API_URL`` (an embedded one runs no scheduler). One
    run at a time, and a run that falls due while the previous one still works is cancelled
    rather than queued: the batch flow picks up whatever the skipped run would have found.
    Returns once Ctrl-C stopped the serving and the runs in flight.
    """
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise FcnpipeError(
            "a schedule needs a Prefect server: start one with `prefect server start` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (the address it prints)."
        )
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    with get_client(sync_client=True) as client:
        if client.api_healthcheck() is not None:
            raise FcnpipeError(f"no Prefect server answers at {url}; start one with `prefect server start`.")
    if cron is not None:
        try:
            CronSchedule(cron=cron)
        except ValueError:
            raise FcnpipeError(f"--cron {cron!r} is not a cron expression (e.g. '0 * * * *').") from None
    when = " and ".join(
        part
        for part in (f"on cron '{cron}'" if cron else "", f"every {interval}" if interval else "")
        if part
    )
    say(f"serving {flow.name} as deployment '{name}' {when} against {url}; Ctrl-C stops it.")
    once = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    with runs_hold_interrupts():
        stoppable(flow).serve(
            name=name, cron=cron, interval=interval, parameters=parameters, limit=1, global_limit=once,
            print_starting_message=False,
        )  # fmt: skip


def stoppable(flow: Flow[..., Any]) -> Flow[..., Any]:
    """``flow`` as a served run runs it: SIGINT or SIGTERM while it works ends the run Cancelled.

    The message says which signal came and that the next run resumes; the flow's name, parameters
    and description are the flow's own.
    """
    from prefect.states import Cancelled

    work = flow.fn

    @functools.wraps(work)
    def run(*args: Any, **kwargs: Any) -> Any:
        received: list[int] = []
        try:
            with stopping.on_signals(received), taking_interrupts():
                return work(*args, **kwargs)
        except (KeyboardInterrupt, stopping.Stopped):
            if not received:
                raise
            return Cancelled(message=f"stopped ({signal.Signals(received[0]).name}); {RESUMES}")

    return Flow(fn=run, name=flow.name, description=flow.description, version=flow.version)


@contextmanager
def runs_hold_interrupts() -> Iterator[None]:
    """Within the block, the runs this process starts begin with SIGINT blocked (``QUIET_PYTHON``).

    Where the script lost its executable bit (a copy that kept no modes), runs start as Prefect
    starts them: a Ctrl-C still stops one at work, and one starting or exiting may print a traceback.
    """
    if not os.access(QUIET_PYTHON, os.X_OK):
        yield
        return
    os.environ["FCNPIPE_RUN_PYTHON"] = sys.executable
    multiprocessing.set_executable(str(QUIET_PYTHON))
    try:
        yield
    finally:
        multiprocessing.set_executable(sys.executable)


@contextmanager
def taking_interrupts() -> Iterator[None]:
    """Within the block, SIGINT reaches this thread, one held pending since the process began included.

    On the way out it is blocked again, so a Ctrl-C while the process exits is never taken.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending one arrives here
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
