"""Where blocks run: a local Dask cluster of CPU workers or of one worker per GPU, or an existing one.

No Prefect here: ``flows/runtime.py`` wraps these clusters in a task runner, and the benchmarks
use them directly. Every local cluster binds to loopback.

GPU workers declare the resource ``GPU=1`` and see one device each (``CUDA_VISIBLE_DEVICES``), so a
worker's ``cuda`` is its own GPU and the model is loaded once per worker and GPU. On a cluster of
mixed machines, start one ``dask worker --resources GPU=1`` per GPU with that variable set, and
blocks annotated with the resource run only there.
"""

from __future__ import annotations

import os
from typing import Any

from fcn import FcnpipeError

GPU = "GPU"  # the resource a GPU worker declares: dask worker --resources GPU=1
LOOPBACK = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}  # None would still bind :8787
PRELOAD = ["pipeline.quiet_worker"]  # local workers leave Ctrl-C to the command


def cpu_cluster_options(workers: int) -> dict[str, Any]:
    """``distributed.LocalCluster`` options: ``workers`` processes of one thread (torch uses the cores)."""
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "preload": PRELOAD, **LOOPBACK}


def local_gpus(asked: str) -> list[int]:
    """The CUDA devices ``--gpus N|all`` (as ClusterSettings took it) means on this machine.

    One sentence if there are too few.
    """
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = available if asked == "all" else int(asked)  # its form is checked by ClusterSettings
    if available == 0:
        raise FcnpipeError(
            "--gpus was given but this machine has no CUDA GPU; leave it out to run on the CPU."
        )
    if count > available:
        raise FcnpipeError(f"--gpus {count} was asked for but this machine has {available} CUDA GPU(s).")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [int(d) for d in visible.split(",")] if visible and visible.replace(",", "").isdigit() else None
    return (ids or list(range(available)))[:count]


def gpu_cluster(devices: list[int], **kwargs: Any) -> Any:
    """A local cluster with one worker process per GPU, each pinned to its device, declaring ``GPU=1``."""
    from distributed import Nanny, Scheduler, SpecCluster

    worker = {"nthreads": 1, "resources": {GPU: 1}, "host": LOOPBACK["host"], "preload": PRELOAD}
    workers = {
        f"gpu-{device}": {"cls": Nanny, "options": {**worker, "env": {"CUDA_VISIBLE_DEVICES": str(device)}}}
        for device in devices
    }
    scheduler = {"cls": Scheduler, "options": dict(LOOPBACK)}
    return SpecCluster(workers=workers, scheduler=scheduler, **kwargs)  # type: ignore[no-untyped-call]


def require_gpu_workers(address: str) -> None:
    """Refuse, in one sentence, a cluster where no worker declares a GPU (blocks would wait forever)."""
    from distributed import Client

    try:
        with Client(address, timeout="20s") as client:  # type: ignore[no-untyped-call]
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
    except OSError as exc:
        raise FcnpipeError(f"no Dask scheduler answers at {address} ({exc}).") from None
    if not any(w.get("resources", {}).get(GPU, 0) >= 1 for w in workers):
        raise FcnpipeError(
            f"no worker of the Dask cluster at {address} declares a GPU; start one per GPU with "
            f"'CUDA_VISIBLE_DEVICES=N dask worker {address} --nthreads 1 --resources {GPU}=1', "
            "or leave out --gpus to run on any worker."
        )
