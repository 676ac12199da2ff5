"""The one exception type for errors a user can cause; its message is a sentence that says what to do."""


class FcnpipeError(Exception):
    """A user-facing error: the CLI prints its message and exits non-zero, without a traceback."""
