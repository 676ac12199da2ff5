"""What the flows share: the Prefect session of a terminal run, the Dask task runner, progress bars.

Prefect reads its settings when it is imported, so ``flows.api``'s quiet settings are set on
importing this module; a value the user has set wins.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from flows.api import kept_api, local_api, quiet_environment, setting, wait_api

quiet_environment()

from prefect import Flow  # noqa: E402  (after the environment it reads)
from prefect.context import refresh_global_settings_context  # noqa: E402
from prefect.settings import (  # noqa: E402
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner  # noqa: E402
from prefect_dask.task_runners import DaskTaskRunner  # noqa: E402  (imports distributed)
from rich.console import Console  # noqa: E402

quiet_environment()  # again: distributed is loaded now, and its loggers take the level

# Prefect's background senders log under their class's name, outside "prefect" and its level: at
# exit, after an API that answered 503 for a while, EventsWorker counts down the events it still
# sends ("Still processing items: 34 items remaining...") under a run that is already complete.
for service in ("EventsWorker", "APILogWorker"):
    logging.getLogger(service).setLevel(setting("PREFECT_LOGGING_LEVEL"))

from fcn import FcnpipeError  # noqa: E402
from flows.progress import Meter, progress  # noqa: E402
from pipeline.cluster import (  # noqa: E402
    cpu_cluster_options,
    gpu_cluster,
    local_gpus,
    require_gpu_workers,
)
from pipeline.plan import BlockReport, Plan  # noqa: E402
from pipeline.settings import ClusterSettings  # noqa: E402
from pipeline.training.train import StepReport  # noqa: E402

__all__ = [
    "Flow",
    "block_runner",
    "dask_task_runner",
    "ensure_api",
    "prefect_session",
    "progress_bar",
    "shared_cluster",
    "tile_events",
    "tiles_from_workers",
    "worker_tiles",
]


def ensure_api() -> str:
    """The URL of the one Prefect API every process of a run reports to, once it answers.

    The user's server, or fcnpipe's kept local one (``flows.api``; started if there is none).
    Exported (``PREFECT_API_URL``) before any cluster starts, so Dask worker
    processes report to it rather than each starting an embedded server of their own.
    """
    url = get_current_settings().api.url
    if not url:
        url = local_api()
        refresh_global_settings_context()
    wait_api(url)
    os.environ["PREFECT_API_URL"] = url
    return url


HEARTBEAT_SETTINGS = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextmanager
def prefect_session() -> Iterator[str]:
    """A terminal run: one API for all processes, Prefect's own console logs kept quiet.

    On fcnpipe's kept local API, flow runs send no heartbeats (unless the user sets their
    frequency): heartbeats only serve a server's automations that mark silent runs as crashed, the
    kept API runs none, and ending each flow run waits up to a second for the heartbeat thread.
    """
    url = ensure_api()
    logger = logging.getLogger("prefect")
    level = logger.level
    logger.setLevel(setting("PREFECT_LOGGING_LEVEL"))  # also when Prefect was imported before us
    kept = kept_api()
    quiet = kept is not None and kept["url"] == url and not any(os.environ.get(s) for s in HEARTBEAT_SETTINGS)
    silent = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}) if quiet else nullcontext()
    with silent:
        yield url
    # Not in a ``finally``: after a failure the process says one sentence and exits, and Prefect's
    # services, drained at exit, stay as quiet as during the run (an API that is down would have
    # each queued event fail loudly).
    logger.setLevel(level)


def dask_task_runner(workers: int, address: str | None) -> TaskRunner[Any]:
    """A runner on an existing scheduler, or on a local cluster of ``workers`` CPU processes."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=cpu_cluster_options(workers)
    )


def block_runner(cluster: ClusterSettings, device: str) -> tuple[TaskRunner[Any], bool]:
    """The task runner for a run's blocks, and whether blocks must go to workers that declare a GPU.

    No option: this process, one block at a time. ``--workers N``: a local cluster of N CPU
    processes. ``--gpus N|all``: a local cluster of one worker per GPU. ``--dask-address``: that
    cluster, and with ``--gpus`` only its GPU workers (checked first: without any, the blocks
    would wait forever).
    """
    workers, gpus, address = cluster.workers, cluster.gpus, cluster.dask_address
    if gpus is None:
        if workers > 0 or address:
            return dask_task_runner(workers, address), False
        return ThreadPoolTaskRunner(max_workers=1), False
    if device not in ("auto", "cuda"):
        raise FcnpipeError(f"--gpus runs each worker on its own GPU; --device {device} contradicts it.")
    if address:
        require_gpu_workers(address)
        return DaskTaskRunner(address=address), True
    return DaskTaskRunner(cluster_class=functools.partial(gpu_cluster, local_gpus(gpus))), True


@contextmanager
def shared_cluster(cluster: ClusterSettings) -> Iterator[ClusterSettings]:
    """One local cluster for many runs (a batch), so workers start and load the model once.

    Yields where each run's blocks go: the settings given, or, when they ask for a local cluster
    of CPU workers or of one worker per GPU, that cluster's address (with ``--gpus`` kept, so
    blocks still go to the workers that declare one).
    """
    if cluster.dask_address or (cluster.workers == 0 and cluster.gpus is None):
        yield cluster
        return
    from distributed import LocalCluster

    if cluster.gpus is not None:
        local = gpu_cluster(local_gpus(cluster.gpus))
    else:
        local = LocalCluster(**cpu_cluster_options(cluster.workers))  # type: ignore[no-untyped-call]
    with local:
        yield ClusterSettings(gpus=cluster.gpus, dask_address=str(local.scheduler_address))


class BlockProgress:
    """Tiles done (those a resume skips included) with Mpx/s and ETA, told per tile as each is written.

    Tiles come from this process's thread or, on a cluster, as events from the workers; a block's
    report settles its count (a block retried after a lost worker tells its tiles again, and those
    are not counted twice).
    """

    def __init__(self, plan: Plan, update: Callable[[int, str], None], meter: Meter) -> None:
        self.update, self.meter = update, meter
        self.sizes = {i: len(plan.blocks[i].tiles) for i in plan.todo}
        self.told_of: dict[int, tuple[int, int]] = {}  # block -> (tiles, pixels) told so far
        self.megapixels = 0.0
        self.lock = threading.Lock()  # told from the thread that runs the blocks, or Dask's

    def tile(self, index: int, pixels: int) -> None:
        """A tile of block ``index`` was written (``pixels`` segmented)."""
        with self.lock:
            tiles, told = self.told_of.get(index, (0, 0))
            if tiles >= self.sizes.get(index, 0):
                return  # a retried block telling its tiles again
            self.told_of[index] = (tiles + 1, told + pixels)
            self.advance(1, pixels)

    def block(self, report: BlockReport) -> None:
        """A block finished: whatever of it was not told tile by tile counts now."""
        with self.lock:
            tiles, told = self.told_of.get(report.index, (0, 0))
            self.told_of[report.index] = (report.tiles, report.pixels)
            self.advance(max(report.tiles - tiles, 0), max(report.pixels - told, 0))

    def advance(self, tiles: int, pixels: int) -> None:
        self.megapixels += pixels / 1e6
        rate = self.megapixels / max(time.perf_counter() - self.meter.started, 1e-9)
        self.update(tiles, f"{rate:.3f} Mpx/s")


def worker_tiles(topic: str, index: int) -> Callable[[int], None] | None:
    """On a Dask worker: tell of each tile of block ``index`` as an event of ``topic`` (None elsewhere)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not in a worker
        return None
    return lambda pixels: worker.log_event(topic, [index, pixels])


@contextmanager
def tiles_from_workers(progress: BlockProgress) -> Iterator[str | None]:
    """Within the block, the Dask workers of this flow's task runner tell ``progress`` of each tile.

    Yields the event topic the blocks report to, or None when they run in this process. Says
    where the cluster's dashboard is.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if not isinstance(runner, DaskTaskRunner):
        yield None
        return
    if runner.client.dashboard_link:
        Console(stderr=True).print(f"Dask dashboard: {runner.client.dashboard_link}", highlight=False)
    with tile_events(runner.client, progress) as topic:
        yield topic


@contextmanager
def tile_events(client: Any, progress: BlockProgress) -> Iterator[str]:
    """A new event topic on ``client``'s cluster whose events (``[block, pixels]``) tell ``progress``."""
    topic = f"fcnpipe-tiles-{uuid.uuid4().hex}"
    client.subscribe_topic(topic, lambda event: progress.tile(*event[1]))
    try:
        yield topic
    finally:
        client.unsubscribe_topic(topic)


@contextmanager
def progress_bar(plan: Plan) -> Iterator[BlockProgress]:
    """The segment bar of a run: tell it of each tile, and of each block as it finishes."""
    blocks = plan.blocks
    total = sum(len(block.tiles) for block in blocks)
    todo = sum(len(blocks[i].tiles) for i in plan.todo)
    meter = Meter(total, done_before=total - todo)
    with progress("segment", "strips" if plan.streamed else "tiles", meter) as update:
        yield BlockProgress(plan, update, meter)


@contextmanager
def training_bar(arch: str, steps: int) -> Iterator[Callable[[StepReport], None]]:
    """Steps done with the loss, the best validation mean IU and the ETA of one stage.

    A resumed stage's first report says where it resumed; the ETA is from this run's steps.
    """
    meter = Meter(steps)
    console = Console(stderr=True)
    with progress(f"train {arch}", "steps", meter, console) as update:
        announced = False

        def advance(report: StepReport) -> None:
            nonlocal announced
            if meter.done == 0 and meter.done_before == 0 and report.step > 1:
                meter.done_before = report.step - 1  # resumed from last.pt
                meter.started = time.perf_counter()
            best = "—" if report.best_mean_iu is None else f"{report.best_mean_iu:.3f}"
            rate = report.step / max(report.seconds, 1e-9)
            update(1, f"loss {report.loss:.4g}, best mean IU {best}, {rate:.2f} steps/s")
            if not announced and MEASURED_AFTER <= report.step < report.steps:
                announced = True  # also where no bar is drawn (a log, a pipe): the cost, in words
                console.print(cost_line(arch, report), highlight=False)

        yield advance


MEASURED_AFTER = 5
"""Steps after which a stage's cost per step, measured here, is announced."""


def cost_line(arch: str, report: StepReport) -> str:
    """``fcn8s: 5.80 s per step on this machine, about 28 min more to reach step 300 (…)``."""
    per_step = report.seconds / report.step
    left = (report.steps - report.step) * per_step
    when = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
    return (
        f"{arch}: {per_step:.2f} s per step on this machine, about {when} more to reach step "
        f"{report.steps} (validations add to it)."
    )
