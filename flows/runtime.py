"""What the flows share: the Dask task runner and the progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import TaskRunner
from prefect_dask.task_runners import DaskTaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.segment import BlockReport, Plan


def dask_task_runner(workers: int, address: str | None) -> TaskRunner[Any]:
    """A runner on an existing scheduler, or on a local cluster of ``workers`` processes.

    Local clusters bind to loopback, one thread per worker (the model uses the cores itself).
    """
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )


@contextmanager
def progress_bar(plan: Plan) -> Iterator[Callable[[BlockReport], None]]:
    """A tiles-done bar with Mpx/s and ETA; yields the function to call as each block finishes."""
    blocks = plan.blocks
    total = sum(len(blocks[i].tiles) for i in plan.todo)
    start = time.perf_counter()
    megapixels = 0.0
    columns: list[Any] = [
        TextColumn("[bold]segment"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
    ]  # fmt: skip
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("tiles", total=total, rate="")

        def advance(report: BlockReport) -> None:
            nonlocal megapixels
            megapixels += report.pixels / 1e6
            rate = megapixels / max(time.perf_counter() - start, 1e-9)
            progress.update(bar, advance=report.tiles, rate=f"{rate:.3f} Mpx/s")

        yield advance
