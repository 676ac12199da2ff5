"""The warm runner's process (``python -m fcnpipe.runner``): preload, listen, fork a child per command.

fcnpipe/warm.py says what the runner is for and holds the command's side; this is the other side.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from fcnpipe import warm
from fcnpipe.warm import GO, HEADER, key, runner, socket_path, state_file, write_record
from pipeline.home import home

PROJECT = ("fcn", "pipeline", "flows", "fcnpipe")
"""The project's packages: imported in the runner to load their libraries, then dropped."""

PRELOAD = ("fcnpipe.main", "flows.segment_mosaic", "flows.segment_batch", "flows.train", "flows.evaluate")
"""What the runner imports: every flow and the command line, so every library a run uses."""

LIBRARIES = (
    "prefect.flow_engine", "prefect.task_engine", "prefect.client.orchestration",
    "prefect.events.worker", "prefect.logging.handlers", "prefect.utilities.visualization",
    "fastapi", "starlette.applications", "anyio._backends._asyncio", "anyio.streams.memory",
    "opentelemetry.metrics", "opentelemetry._logs", "graphviz", "pydantic.color",
    "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "rasterio.warp", "rasterio.vrt", "zarr.codecs",
    "zarr.storage", "torch.nn.functional", "torch.utils.serialization", "torchvision.models",
    "rich._emoji_codes", "typer._adapters",
)  # fmt: skip
"""Libraries a run imports only inside functions (``FCNPIPE_WARM_LOG_IMPORTS=1`` lists what a run
still imports itself in ``warm.log``)."""


KEPT = ("fcnpipe", "fcnpipe.warm", "fcnpipe.runner", "__main__")
"""The project's modules the runner keeps: this one and the command's side, which its children share."""


def preload() -> None:
    """Import every library a run imports, then drop the project's own modules (children import them)."""
    import importlib

    for name in (*PRELOAD, *LIBRARIES):
        importlib.import_module(name)
    for name in list(sys.modules):
        if name.split(".")[0] in PROJECT and name not in KEPT:
            del sys.modules[name]
    import gc

    gc.collect()
    gc.freeze()  # children share these pages instead of copying them when the collector visits


def serve() -> None:
    """Listen for commands until idle, stopped, or replaced; fork a child for each."""
    wanted = key(os.environ)  # before preload, which sets Prefect's quiet settings in this environment
    idle = float(os.environ.get("FCNPIPE_API_IDLE_SECONDS", "3600"))
    began = time.perf_counter()
    preload()
    import torch

    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # a forked child could not use it
        say("CUDA was initialised while importing; not serving.")
        return
    threads = len(os.listdir("/proc/self/task"))
    say(f"ready, key {wanted}: preloaded in {time.perf_counter() - began:.1f} s, {threads} OS thread(s)")
    path = socket_path()
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(mask)
    listener.listen(16)
    record = {"pid": os.getpid(), "key": wanted, "socket": str(path), "ready": True, "started": time.time()}
    write_record(record)

    def stopped(number: int, _: Any) -> None:
        raise SystemExit(128 + number)

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    children: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.discard(pid)
                say(f"run {pid} ended with status {os.waitstatus_to_exitcode(status)}")
                last = time.monotonic()
            if not children and time.monotonic() - last > idle:
                return
            current = runner()
            if current is None or int(current["pid"]) != os.getpid():
                return  # replaced by a runner with another key
            if not select.select([listener], [], [], 1.0)[0]:
                continue
            conn, _ = listener.accept()
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                code = 70
                try:
                    listener.close()
                    code = child(conn)
                finally:
                    os._exit(code)
            conn.close()
            children.add(pid)
            say(f"run {pid} started")
    finally:
        listener.close()
        current = runner()
        if current is None or int(current["pid"]) == os.getpid():
            path.unlink(missing_ok=True)
            state_file().unlink(missing_ok=True)


def say(line: str) -> None:
    """One line of the runner's log (its standard error: ``warm.log`` in fcnpipe's home)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} warm runner {os.getpid()}: {line}", file=sys.stderr, flush=True)


def receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The command's request and its standard streams' descriptors."""
    head, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    while len(head) < HEADER.size:
        head += conn.recv(HEADER.size - len(head))
    (size,) = HEADER.unpack(head)
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise EOFError("the command closed its socket")
        body += chunk
    return json.loads(body), list(fds)


def take_streams(fds: list[int]) -> None:
    """The command's stdin, stdout and stderr become this process's, buffered as a new process's would be."""
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)), line_buffering=os.isatty(1)
    )
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)), line_buffering=True, errors="backslashreplace"
    )


def child(conn: socket.socket) -> int:
    """Run one command in this forked child and report its exit status; the status."""
    warm.IN_RUNNER = True
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    request, fds = receive(conn)
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    if conn.recv(1) != GO:
        return 0  # the command gave up waiting and runs itself
    take_streams(fds)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["fcnpipe", *request["argv"]]
    sys.path.insert(0, request["path0"])  # the command's first entry: the script's folder, or its own
    before = set(sys.modules)
    from prefect.context import refresh_global_settings_context

    from flows.api import quiet_environment

    quiet_environment()
    refresh_global_settings_context()  # the command's environment and working folder's settings
    done = threading.Event()

    def watch() -> None:
        """The command went away (killed): stop as if it had passed on SIGTERM."""
        with contextlib.suppress(OSError):
            conn.recv(1)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    code = run_command(request["argv"])
    done.set()
    log_imports(before)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    return code


def run_command(argv: list[str]) -> int:
    """``fcnpipe *argv`` as the command line runs it, then the interpreter's exit handlers; its status."""
    import atexit
    import traceback

    code = 0
    try:
        from fcnpipe.main import app

        app(args=argv, prog_name="fcnpipe")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # What the interpreter does on its way out, in its order: threading's exit hooks and the join
    # of non-daemon threads, then the exit handlers (Prefect drains its services there).
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    return code


def log_imports(before: set[str]) -> None:
    """With ``FCNPIPE_WARM_LOG_IMPORTS=1``: the libraries this run imported that the runner had not."""
    if os.environ.get("FCNPIPE_WARM_LOG_IMPORTS") != "1":
        return
    new = sorted(name for name in set(sys.modules) - before if name.split(".")[0] not in PROJECT)
    log = home() / "warm.log"
    with open(log, "a") as out:
        out.write(f"{time.ctime()}: {len(new)} modules imported in the run: {' '.join(new)}\n")


if __name__ == "__main__":
    serve()
