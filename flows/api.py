"""The Prefect API a terminal run reports to: one local server, started on first use and kept.

Prefect 3 runs every flow against an API. Left to itself it starts an embedded server for each
run: the command imports the server (~2 s) and waits for it to boot (~6 s), in series with
everything else, on every run. fcnpipe instead keeps one local server between runs: the first
``fcnpipe run`` starts Prefect's own API application (``create_app(ephemeral=True)``: API only, no
UI, no services) on 127.0.0.1 and a free port, detached, and records its address and process in
``$FCNPIPE_HOME/api.json``; later runs find it there and start at once. It stops by itself after
an hour with no request or open connection (``FCNPIPE_API_IDLE_SECONDS``), or with ``fcnpipe api
stop``. A user's own server (``PREFECT_API_URL``, or a Prefect profile that names one) is used
instead, untouched. This module imports nothing of Prefect's outside the server process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.home import home

QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "CRITICAL",  # the CLI prints its own progress, summary and errors
    "PREFECT_INTERNAL_LOGGING_LEVEL": "CRITICAL",  # e.g. events an unavailable API did not take
    "DO_NOT_TRACK": "1",  # client analytics
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's telemetry heartbeat
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    # The server can take longer than Prefect's 20 s to start on a small, busy machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # distributed's own lines (a worker restarted, a heartbeat racing the shutdown) are noise on a
    # terminal: a block that fails reaches the user through its task, as one sentence.
    "DASK_LOGGING__DISTRIBUTED": "critical",
    # A busy or restarting API must not fail a run: Prefect retries 408, 429, 502 and 503 five
    # times (2 s doubling to 32 s, about a minute); fcnpipe asks for eight (about eight and a half
    # minutes) and adds 500 and 504, which a server answers while its database is locked.
    "PREFECT_CLIENT_MAX_RETRIES": "8",
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,504",
}


def quiet_environment() -> None:
    """Set the settings above in this process's environment; a value the user has set wins.

    Dask reads its settings from the environment when it is imported, which may have happened
    already (a flow imports ``dask.base``): then its configuration is read again, and the
    ``distributed`` loggers, once distributed is loaded (call this again then), take the level.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "dask" in sys.modules:
        sys.modules["dask"].config.refresh()
    if "distributed" in sys.modules:
        level = os.environ["DASK_LOGGING__DISTRIBUTED"].upper()
        level = level if level in logging.getLevelNamesMapping() else "CRITICAL"
        # distributed.client has a level of its own in Dask's defaults, which no variable can set
        for name in ("distributed", "distributed.client"):
            logging.getLogger(name).setLevel(level)


def setting(key: str) -> str:
    """One of the settings above: the user's value, else ours (also if the environment was reset)."""
    return os.environ.get(key, QUIET_ENV[key])


EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception): ")
"""A traceback's last line: ``sqlalchemy.exc.OperationalError: …``."""


@dataclass(frozen=True)
class Launched:
    """A server this process started, and the file its error output goes to."""

    child: subprocess.Popen[bytes]
    log: Path

    def last_words(self) -> str:
        """The last exception the server reported (else its last line, else its exit status)."""
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.is_file() else []
        raised = [line for line in lines if EXCEPTION_LINE.match(line)]
        return (raised or lines or [f"exit status {self.child.returncode}"])[-1]


# The servers this process started, by URL: ``wait_api`` tells a server that stopped from one
# that never existed.
LAUNCHED: dict[str, Launched] = {}

IDLE_SECONDS = 3600.0
"""A kept server stops after this long with no request and no open connection."""


def state_file() -> Path:
    """The kept server's address and process: ``api.json`` in fcnpipe's home."""
    return home() / "api.json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configured_api() -> bool:
    """Whether the user may name a Prefect API: environment, active profile, or a local settings file.

    Read without importing Prefect, which would cost the seconds this module saves; where in doubt
    (a ``prefect.toml``, a ``[tool.prefect]`` table, a ``.env`` naming Prefect), say yes: the run
    then lets Prefect's own settings decide, only without the head start.
    """
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        data = tomllib.loads(profiles.read_text())
        active = os.environ.get("PREFECT_PROFILE", data.get("active", "ephemeral"))
        if data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"):
            return True
    except (OSError, tomllib.TOMLDecodeError):
        pass
    if Path("prefect.toml").is_file():
        return True
    if Path(".env").is_file() and "PREFECT_" in Path(".env").read_text(errors="replace"):
        return True
    try:
        return "prefect" in tomllib.loads(Path("pyproject.toml").read_text()).get("tool", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False


def loaded_api() -> bool:
    """Whether Prefect is loaded in this process already with an API set (a test harness, a notebook)."""
    if "prefect.settings" not in sys.modules:
        return False
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether the API at ``url`` answers its health check now."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def kept_api() -> dict[str, Any] | None:
    """The kept server's record (``url``, ``pid``), if its process is still there."""
    try:
        record = json.loads(state_file().read_text())
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(record)


def local_api() -> str:
    """The kept local server's URL, started now if there is none; exported as ``PREFECT_API_URL``.

    Exported before Prefect is imported here, the URL is the one this process and the Dask workers
    it starts report to. Two runs starting at once start one server (a lock on the record).
    """
    quiet_environment()
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "api.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = kept_api()
        alive = record is not None and answers(record["url"])
        url = str(record["url"]) if record is not None and alive else start_server(folder)
    os.environ["PREFECT_API_URL"] = url
    return url


def start_server(folder: Path) -> str:
    """Start the kept server, detached (its own session: Ctrl-C of a run does not reach it)."""
    port = free_port()
    log = folder / "api.log"
    with open(log, "wb") as errors:
        child = subprocess.Popen(
            # -P: not the working folder first on the path, where a project's own flows/ would shadow ours
            [sys.executable, "-P", "-m", "flows.api", str(port), os.environ.get("FCNPIPE_API_IDLE_SECONDS",
                                                                                 str(IDLE_SECONDS))],
            env={**os.environ, "PREFECT_UI_ENABLED": "false"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    LAUNCHED[url] = Launched(child, log)
    state_file().write_text(json.dumps({"url": url, "pid": child.pid, "started": time.time()}) + "\n")
    return url


def stop_local_api() -> dict[str, Any] | None:
    """Stop the kept server, if there is one; its record."""
    record = kept_api()
    if record is not None:
        os.kill(int(record["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(int(record["pid"]), 0)
            except OSError:
                break
            time.sleep(0.1)
    state_file().unlink(missing_ok=True)
    return record


def wait_api(url: str) -> None:
    """Wait until the API at ``url`` answers its health check, or say in one sentence why not."""
    from fcn.errors import FcnpipeError  # here: importing fcn imports torch, which launching must not

    launched = LAUNCHED.get(url)
    patience = float(setting("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"))
    if launched is None:
        patience = min(patience, 10.0)  # a running server answers at once; one that is down never
    deadline = time.monotonic() + patience
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if launched is not None and launched.child.poll() is not None:
            raise FcnpipeError(f"Prefect's embedded server stopped while starting: {launched.last_words()}")
        if time.monotonic() > deadline:
            if launched is not None:
                raise FcnpipeError(
                    f"Prefect's embedded server did not answer within {patience:.0f} s (raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a busy machine)."
                )
            raise FcnpipeError(
                f"the Prefect API at PREFECT_API_URL={url} does not answer: start it "
                "(`prefect server start`) or unset PREFECT_API_URL to use an embedded one."
            )
        time.sleep(0.1)


class IdleWatch:
    """ASGI middleware that knows when the server last had anything to do."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.open = 0
        self.since = time.monotonic()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one request or connection, counting it as open while it lasts."""
        if scope["type"] not in ("http", "websocket"):  # the lifespan lasts as long as the server
            await self.app(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.since = time.monotonic()

    def idle_for(self) -> float:
        """Seconds with no request and no open connection (0 while one is open)."""
        return 0.0 if self.open else time.monotonic() - self.since


def serve(port: int, idle_seconds: float) -> None:
    """The child: Prefect's API application on 127.0.0.1:``port`` until idle or stopped."""
    import uvicorn
    from prefect.server.api.server import create_app

    watch = IdleWatch(create_app(ephemeral=True, final=True))
    config = uvicorn.Config(watch, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    server = uvicorn.Server(config)

    def stop_when_idle() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        watch.since = time.monotonic()  # idle from when it can first answer, not while it boots
        while not server.should_exit:
            time.sleep(min(5.0, idle_seconds / 4))
            if watch.idle_for() > idle_seconds:
                server.should_exit = True

    threading.Thread(target=stop_when_idle, daemon=True).start()
    server.run()


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]))
