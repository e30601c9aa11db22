"""Exceptions of the MicroVM Service SDK."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

_STATUS_CODES = {
    400: "VALIDATION_FAILED", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    408: "TIMEOUT", 409: "CONFLICT", 422: "VALIDATION_FAILED", 429: "RATE_LIMITED",
    503: "UNAVAILABLE", 504: "TIMEOUT",
}


def code_for_status(status: int) -> str:
    return _STATUS_CODES.get(status, "INTERNAL" if status >= 500 else f"HTTP_{status}")


class MvmError(Exception):
    """Base class of every error the SDK raises."""


class MvmApiError(MvmError):
    """The service answered with an error (application/problem+json, or an error message on a WebSocket).

    Attributes: ``status`` (HTTP status), ``code`` (e.g. ``NOT_FOUND``, ``VALIDATION_FAILED``),
    ``detail``, ``violations`` (``[{"field", "message"}]``) and ``problem`` (the whole body).
    """

    def __init__(self, status: int, problem: Optional[Dict[str, Any]] = None):
        problem = dict(problem or {})
        self.status: int = status
        self.code: str = problem.get("code") or code_for_status(status)
        self.detail: str = problem.get("detail") or problem.get("message") or problem.get("title") or f"HTTP {status}"
        errors = problem.get("errors")
        self.violations: List[Dict[str, str]] = errors if isinstance(errors, list) else []
        self.problem: Dict[str, Any] = problem
        super().__init__(f"{status} {self.code}: {self.detail}")


class MvmConnectionError(MvmError):
    """The service could not be reached, or did not answer in time."""


class MvmTimeoutError(MvmError):
    """``microvms.wait_for`` / ``wait_deleted`` reached the deadline. ``last_seen``: the VM's last state."""

    def __init__(self, message: str, last_seen: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.last_seen = last_seen
