"""Optional error tracking with Sentry: unexpected exceptions only, scrubbed.

On when ``server.sentry_dsn`` is set and ``sentry-sdk`` is installed
(``pip install 'tollway[sentry]'``). An event carries the exception, the request id,
route and key id as tags — never a key, a prompt, SQL parameters or a body: Sentry's
default integrations (which would read requests and logs) stay off, local variables are
not sent, and `scrub` removes request data and redacts anything shaped like a secret.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.ops.logs import redact

__all__ = ["ErrorTracker", "scrub"]

_log = logging.getLogger("tollway.error_tracking")

_DROPPED = ("request", "user", "breadcrumbs", "extra", "contexts", "modules")


def scrub(event: Any, hint: Any = None) -> Any:
    """Sentry's ``before_send``: what may leave the building, and only that."""
    for field in _DROPPED:
        event.pop(field, None)
    for exception in event.get("exception", {}).get("values", []) or []:
        if isinstance(exception.get("value"), str):
            exception["value"] = redact(exception["value"])
        for frame in (exception.get("stacktrace") or {}).get("frames", []) or []:
            frame.pop("vars", None)
    message = event.get("message")
    if isinstance(message, str):
        event["message"] = redact(message)
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        logentry.pop("params", None)
        if isinstance(logentry.get("message"), str):
            logentry["message"] = redact(logentry["message"])
    return event


class ErrorTracker:
    """Reports unexpected exceptions when configured; does nothing otherwise."""

    def __init__(self, dsn: str | None, *, release: str, environment: str = "production") -> None:
        self.enabled = False
        if not dsn:
            return
        try:
            import sentry_sdk
        except ImportError:
            _log.warning("server.sentry_dsn is set but sentry-sdk is not installed")
            return
        sentry_sdk.init(
            dsn=dsn,
            release=release,
            environment=environment,
            default_integrations=False,
            auto_enabling_integrations=False,
            include_local_variables=False,
            max_request_body_size="never",
            before_send=scrub,
            traces_sample_rate=0.0,
        )
        self._sdk = sentry_sdk
        self.enabled = True

    def capture(self, exc: BaseException, *, tags: dict[str, str | None]) -> None:
        if not self.enabled:
            return
        with self._sdk.new_scope() as scope:
            for name, value in tags.items():
                if value is not None:
                    scope.set_tag(name, value)
            scope.capture_exception(exc)

    def flush(self, timeout_s: float = 2.0) -> None:
        if self.enabled:
            self._sdk.flush(timeout=timeout_s)

    def close(self) -> None:
        if self.enabled:
            client = self._sdk.get_client()
            client.close(timeout=2.0)
            self.enabled = False


error_tracker_key = web.AppKey("error_tracker", ErrorTracker)
