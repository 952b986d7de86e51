"""Tests for batchrunner.errors: context in messages, never the key."""

from __future__ import annotations

from batchrunner.errors import (
    ApiError,
    JobFileError,
    QueryFailed,
    RateLimited,
    mask_secret,
)


def test_mask_secret_keeps_prefix_and_last_four() -> None:
    """A key is shown the way Stripe shows it: mode prefix and last four characters."""
    masked = mask_secret("sk_test_51HabcdefghijklmnopWXYZ")
    assert masked.startswith("sk_test_") and masked.endswith("WXYZ")
    assert "abcdefghijklmnop" not in masked
    assert mask_secret("") == "(none)"
    assert "short" not in mask_secret("short")


def test_api_error_message_carries_status_type_code_and_request_id() -> None:
    """An API error names everything needed to look it up in Stripe's logs."""
    err = RateLimited(
        "Too many requests",
        status=429,
        request_id="req_123",
        error_type="invalid_request_error",
        code="rate_limit",
    )
    text = str(err)
    assert "429" in text and "req_123" in text and "rate_limit" in text
    assert isinstance(err, ApiError)


def test_job_id_is_attached_once() -> None:
    """with_job prefixes the job id, and a second attach does not overwrite it."""
    err = QueryFailed("qry_1", "boom")
    err.with_job("monthly/period=2023-01").with_job("other")
    assert str(err).startswith("[monthly/period=2023-01]")
    assert "qry_1" in str(err) and "boom" in str(err)


def test_job_file_error_names_file_job_and_field() -> None:
    """A job file error says where: file, job and field."""
    err = JobFileError("jobs/x.toml", "unknown key", job="monthly", field="sqll")
    assert str(err) == "jobs/x.toml: job 'monthly': field 'sqll': unknown key"
