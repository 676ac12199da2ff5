"""Scheduled batch jobs: a flow served as a Prefect deployment that runs on a schedule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fcn import FcnpipeError
from flows.runtime import Flow

__all__ = ["serve_on_schedule"]


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
    flow.serve(
        name=name, cron=cron, interval=interval, parameters=parameters, limit=1, global_limit=once,
        print_starting_message=False,
    )  # fmt: skip
