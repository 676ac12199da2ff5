"""The Prefect API a terminal run reports to: started as the command begins, waited for when needed.

Left to itself, Prefect starts its embedded server when the first flow runs: the caller imports the
server (~2 s here) and then waits for the server process to boot (~6 s), in series with everything
else. ``fcnpipe run`` instead starts the server process before it imports torch and Prefect, so
the server boots on another core while this process imports, and only waits for it (``wait_api``)
when the flow is about to run. This module imports nothing of Prefect's for that reason.

The server is Prefect's own application (``create_app(ephemeral=True)``: API only, no UI, no
services), on 127.0.0.1 and a free port, with the database Prefect would use. It stops when this
process exits, and on its own if this process dies without exiting (killed).
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "CRITICAL",  # the CLI prints its own progress, summary and errors
    "DO_NOT_TRACK": "1",  # client analytics
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's telemetry heartbeat
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    # The server can take longer than Prefect's 20 s to start on a small, busy machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # distributed's own lines (a worker restarted, a heartbeat racing the shutdown) are noise on a
    # terminal: a block that fails reaches the user through its task, as one sentence.
    "DASK_LOGGING__DISTRIBUTED": "critical",
}


def quiet_environment() -> None:
    """Set the settings above in this process's environment; a value the user has set wins."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def setting(key: str) -> str:
    """One of the settings above: the user's value, else ours (also if the environment was reset)."""
    return os.environ.get(key, QUIET_ENV[key])


EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception): ")
"""A traceback's last line: ``sqlalchemy.exc.OperationalError: …``."""


@dataclass(frozen=True)
class Launched:
    """A server this process started, and the file its error output goes to."""

    child: subprocess.Popen[bytes]
    log: IO[bytes]  # a file, not a pipe: a pipe nobody reads fills up and stalls the server

    def last_words(self) -> str:
        """The last exception the server reported (else its last line, else its exit status)."""
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        raised = [line for line in lines if EXCEPTION_LINE.match(line)]
        return (raised or lines or [f"exit status {self.child.returncode}"])[-1]


# The servers this process started, by URL: ``wait_api`` tells a server that stopped from one
# that never existed.
LAUNCHED: dict[str, Launched] = {}


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


def launch_api() -> str:
    """Start the embedded API in a child process, export its URL (``PREFECT_API_URL``), return it.

    Exported before Prefect is imported here, the URL is the one this process and the Dask workers
    it starts report to.
    """
    quiet_environment()
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115  (open as long as the server runs; closed by stop)
    child = subprocess.Popen(
        # -P: not the working folder first on the path, where a project's own flows/ would shadow ours
        [sys.executable, "-P", "-m", "flows.api", str(port), str(os.getpid())],
        env={**os.environ, "PREFECT_UI_ENABLED": "false"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/api"
    LAUNCHED[url] = Launched(child, log)
    atexit.register(stop, LAUNCHED[url])
    os.environ["PREFECT_API_URL"] = url
    return url


def stop(launched: Launched) -> None:
    """Stop a server this process started."""
    child = launched.child
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
    launched.log.close()


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


def exit_with_parent(parent: int) -> None:
    """End this process when ``parent`` is gone (it was killed before it could stop us)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def serve(port: int, parent: int) -> None:
    """The child: Prefect's API application on 127.0.0.1:``port`` until the parent stops it."""
    import uvicorn
    from prefect.server.api.server import create_app

    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    app = create_app(ephemeral=True, final=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
