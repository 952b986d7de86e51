"""Stripe's error shape: the ``{"error": {...}}`` body and the messages Stripe uses.

Absent members of the error object are ``null``; ``request_log_url`` is given only once
the request was authenticated (it names the account's mode). Also here: the JSON encoding
every body shares and the ``Stripe-Should-Retry`` rule.
"""

from __future__ import annotations

import json
from typing import Any

from batchrunner.emulator.auth import Account


class HttpError(Exception):
    """An error answer in Stripe's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str, account: Account | None) -> bytes:
        """The JSON error body."""
        code = self.code
        log_url = None
        if account is not None:
            mode = "" if account.livemode else "test/"
            log_url = f"https://dashboard.stripe.com/{mode}logs/{request_id}"
        error = {
            "code": code,
            "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
            if code
            else None,
            "message": self.message,
            "param": self.param,
            "request_log_url": log_url,
            "type": self.error_type,
        }
        return dumps({"error": error})


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as every response body is encoded."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def missing(param: str) -> HttpError:
    """A required parameter was not sent."""
    return HttpError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def empty(param: str) -> HttpError:
    """A parameter that cannot be unset was sent as an empty string."""
    return HttpError(
        400,
        f"You passed an empty string for '{param}'. We assume empty values are an attempt "
        f"to unset a parameter; however '{param}' cannot be unset. You should remove "
        f"'{param}' from your request or supply a non-empty value.",
        code="parameter_invalid_empty",
        param=param,
    )


def too_long(param: str, value: str, limit: int) -> HttpError:
    """A string parameter is longer than ``limit`` characters."""
    return HttpError(
        400,
        f"Invalid string: {value[:10]}...; must be at most {limit} characters",
        param=param,
    )


def no_such(kind: str, object_id: str, *, param: str = "id", status: int = 404) -> HttpError:
    """The object ``object_id`` does not exist (in this mode)."""
    return HttpError(status, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def exclusive(*params: str) -> HttpError:
    """More than one of mutually exclusive ``params`` was sent."""
    names = ", ".join(sorted(params))
    return HttpError(
        400,
        f"You may only specify one of these parameters: {names}.",
        code="parameters_exclusive",
        param=params[0],
    )


def should_retry(status: int) -> str | None:
    """The ``Stripe-Should-Retry`` header for ``status`` (None: no header, as on 429)."""
    if status == 409 or status >= 500:
        return "true"
    if 400 <= status < 500 and status != 429:
        return "false"
    return None
