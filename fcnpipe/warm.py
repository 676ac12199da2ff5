"""The warm runner: a kept process that has imported torch, Prefect and GDAL, forked for each run.

A small run's own work takes a second or two, but importing torch, Prefect, rasterio and zarr
takes four to five seconds on two cores, every time. So, after a ``fcnpipe run`` that ran in its
own process, fcnpipe leaves a warm runner behind (detached, like the kept Prefect API in
``flows.api``): it imports what a run imports, listens on a Unix socket in fcnpipe's home
(``warm.sock``, mode 0600; a peer of another user is refused), and forks for each later ``fcnpipe
run``. The child takes the command's working folder, environment, arguments and standard streams
(passed over the socket, so a terminal stays a terminal), runs the command as the command line
would, and reports its exit status. The command passes SIGINT, SIGTERM and SIGHUP on to the child;
a command killed outright closes the socket, and the child then stops as if sent SIGTERM (what it
wrote resumes).

What the child runs is fresh: the project's own modules are imported in the runner only to load
the libraries they use, then dropped, so every run imports fcnpipe's current code (a fraction of a
second). A runner serves only commands like the one that started it: its key hashes the Python,
the installed packages (the site-packages folders' modification times), this module, and the
environment read at import time (``PREFECT_*``, ``DASK_*``, ``FCNPIPE_*``, thread counts, CUDA's,
torch's and GDAL's settings, ``HOME``); a command with another key runs in its own process and then
replaces the runner. Nothing starts CUDA or runs a torch operation before the fork. The runner stops
after ``FCNPIPE_API_IDLE_SECONDS`` (an hour) without a run, with ``fcnpipe api stop``, or when
replaced. ``FCNPIPE_WARM=0`` turns it off. Linux only (it forks).

This module is the command's side and the runner's record; fcnpipe/runner.py is the runner. Both
import only the standard library at module level (the front door imports this one).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.home import home

IN_RUNNER = False
"""True in a forked child: its command runs here and never hands over again."""


KEY_PREFIXES = (
    "PREFECT_", "DASK_", "FCNPIPE_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "CUDA_", "NVIDIA_",
    "PYTORCH_", "TORCH", "GDAL_", "CPL_", "PROJ_", "PYTHON", "LD_",
)  # fmt: skip
KEY_NAMES = ("HOME", "DO_NOT_TRACK")
NOT_KEY = ("FCNPIPE_WARM", "FCNPIPE_WARM_LOG_IMPORTS")

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals the command passes on to the child that runs it."""

HEADER = struct.Struct("!I")
GO = b"g"


def state_file() -> Path:
    """The runner's record: process, key, socket, and whether it listens yet."""
    return home() / "warm.json"


def socket_path() -> Path:
    """The runner's socket in fcnpipe's home, or under /tmp where that path is too long for one."""
    path = home() / "warm.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return Path("/tmp") / f"fcnpipe-{os.getuid()}-{digest}.sock"


def enabled() -> bool:
    """Whether runs go through a warm runner here: on Linux, unless ``FCNPIPE_WARM=0``."""
    return sys.platform == "linux" and os.environ.get("FCNPIPE_WARM", "1") != "0" and not IN_RUNNER


def key(environ: Mapping[str, str]) -> str:
    """What a runner must share with a command to run it (see the module's docstring)."""
    digest = hashlib.sha256()
    digest.update(sys.executable.encode())
    for folder in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        digest.update(f"{folder} {Path(folder).stat().st_mtime_ns}".encode())
    digest.update(f"{Path(__file__).resolve()} {Path(__file__).stat().st_mtime_ns}".encode())
    for name, value in sorted(environ.items()):
        if (name.startswith(KEY_PREFIXES) or name in KEY_NAMES) and name not in NOT_KEY:
            digest.update(f"{name}={value}\0".encode())
    return digest.hexdigest()[:16]


def alive(pid: int) -> bool:
    """Whether the process with this id is a warm runner (a recorded id may have been reused)."""
    try:
        return b"fcnpipe.runner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def runner() -> dict[str, Any] | None:
    """The runner's record, if its process is still there."""
    try:
        record = json.loads(state_file().read_text())
        return dict(record) if alive(int(record["pid"])) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(record: dict[str, Any]) -> None:
    """Replace the runner's record whole (a command may read it at any moment)."""
    scratch = state_file().with_name(f".warm.{os.getpid()}.json")
    scratch.write_text(json.dumps(record) + "\n")
    os.replace(scratch, state_file())


# The command's side.


def hand_over(argv: list[str]) -> int | None:
    """Run the command ``fcnpipe *argv`` in the warm runner: its exit status, or None if none can.

    None when turned off, when no runner with this command's key listens, or when it does not
    answer within a few seconds; the caller then runs the command itself.
    """
    if not enabled():
        return None
    record = runner()
    if record is None or not record.get("ready") or record.get("key") != key(os.environ):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(15)  # a fork on a busy machine; then the command runs itself
        conn.connect(str(record["socket"]))
        request = json.dumps(
            {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path0": sys.path[0]}
        ).encode()
        socket.send_fds(conn, [HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        replies = conn.makefile("rb")
        pid = int(json.loads(replies.readline())["pid"])  # the child's, before it runs anything
        conn.settimeout(None)
        conn.sendall(GO)  # from here the child runs the command: no running it here as well
    except (OSError, ValueError, KeyError, TypeError):
        conn.close()
        return None
    before = {number: signal.signal(number, lambda got, _: os.kill(pid, got)) for number in FORWARDED}
    try:
        for line in replies:
            reply = json.loads(line)
            if "exit" in reply:
                return int(reply["exit"])
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
        conn.close()
    print("error: the warm runner's process for this command ended without an exit status "
          "(killed?); FCNPIPE_WARM=0 runs commands in their own process.", file=sys.stderr)  # fmt: skip
    return 1


def start_if_absent(environ: Mapping[str, str]) -> None:
    """Start a runner for commands with this environment, detached, unless one runs (replacing another).

    ``environ`` is the command's environment as it started (a run adds to its own, e.g. the
    kept API's address).
    """
    if not enabled():
        return
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = key(environ)
    with open(folder / "warm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = runner()
        if record is not None and record.get("key") == wanted:
            return
        if record is not None:
            stop(record)
        log_file = folder / "warm.log"
        too_long = log_file.is_file() and log_file.stat().st_size > 1 << 20
        with open(log_file, "wb" if too_long else "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-P", "-m", "fcnpipe.runner"], env=dict(environ),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                cwd="/",  # holds no command's folder
            )  # fmt: skip
        record = {"pid": child.pid, "key": wanted, "socket": str(socket_path()), "ready": False,
                  "started": time.time()}  # fmt: skip
        write_record(record)


def stop(record: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Stop the runner (the runs it started go on); its record, if there was one."""
    record = record if record is not None else runner()
    if record is not None:
        pid = int(record["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if record is not None or runner() is None:
        state_file().unlink(missing_ok=True)
    return record
