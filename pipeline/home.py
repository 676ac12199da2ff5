"""fcnpipe's home: the folder for what it keeps between runs (models, the kept API, the warm runner).

Standard library only: the command line's front door reads it.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$FCNPIPE_HOME``, or ``~/.cache/fcnpipe``."""
    value = os.environ.get("FCNPIPE_HOME")
    return Path(value) if value else Path.home() / ".cache" / "fcnpipe"
