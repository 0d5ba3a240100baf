"""The one exception every policy raises: it carries the HTTP status the job should see."""

from __future__ import annotations


class PolicyError(Exception):
    """A request the job may not make; rendered in the Runtime API error shape."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # IBM's error codes are numbers; we use the HTTP status unless told otherwise.
        self.code = code if code is not None else status
