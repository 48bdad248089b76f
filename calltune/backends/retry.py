"""The one retry policy of every remote call (tenacity), and the one-line form of an exception for messages."""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 60.0  # the longest wait between two attempts of a remote call
DEADLINE_S = 600.0    # no retry of a request starts later than this after its first attempt


def brief(exc: BaseException) -> str:
    """An exception in one short line, for logs and error messages (never a payload: see the callers)."""
    return f"{type(exc).__name__}: {exc}"[:300]


class Retrying:
    """The one retry policy of every remote call (tenacity): a retryable failure retries that request alone, after
    a random wait in [0, backoff_s * 2^n] (full jitter, at most MAX_BACKOFF_S), at most `max_retries` times and
    never past `deadline_s`. Counts requests (attempts), failures and retries (thread-safe). `close()` stops the
    waiting: a run that ends early (Ctrl-C, a failure elsewhere) does not wait out the backoffs.

    Giving up raises `error`, naming `service`, the request and `setting`. A failure that is not retryable raises
    `error` too ("refused the request") when `wrap_refusals`, else propagates as it is (for callers that sort
    the service's answers themselves: not found, a stale etag)."""

    def __init__(self, *, service: str, setting: str, max_retries: int, backoff_s: float,
                 retryable: Callable[[BaseException], bool], error: type[Exception], wrap_refusals: bool = True,
                 deadline_s: float = DEADLINE_S, sleep: Callable[[float], None] | None = None):
        self.service, self.setting, self.max_retries, self.backoff_s = service, setting, max_retries, backoff_s
        self.retryable, self.error, self.wrap_refusals, self.deadline_s = retryable, error, wrap_refusals, deadline_s
        self._sleep = sleep
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def count(self, counts: dict[str, int]) -> None:
        with self._lock:
            self.counters.update(counts)

    def close(self) -> None:
        self._closed.set()

    def pause(self, seconds: float) -> None:
        """Wait as between two attempts (a poll of work under way): `close()` ends it, raising `error`."""
        self._wait(seconds)

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        elif self._closed.wait(seconds):
            raise self.error(f"{self.service}: stopped before retrying (the run is ending)")

    def call(self, fn: Callable[[], T], what: str = "", recover: Callable[[BaseException], T | None] | None = None) -> T:
        """fn(), its retryable failures retried. `recover(exc)`, run before each retry, may find that the failed
        attempt took effect after all (an add whose answer was lost): a result other than None is returned."""
        import tenacity

        name = f"{self.service}: {what}" if what else self.service

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.count({"retries": 1})
            log.warning("%s failed (%s); retry %d/%d in %.1f s", name, brief(state.outcome.exception()),
                        state.attempt_number, self.max_retries, state.next_action.sleep)

        policy = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1) | tenacity.stop_after_delay(self.deadline_s),
            wait=tenacity.wait_random_exponential(multiplier=self.backoff_s, max=MAX_BACKOFF_S),
            retry=tenacity.retry_if_exception(self.retryable), sleep=self._wait, before_sleep=before_sleep,
            reraise=True)
        failed: list[BaseException] = []
        try:
            for attempt in policy:
                with attempt:
                    if failed and recover is not None and (found := recover(failed[-1])) is not None:
                        return found
                    self.count({"requests": 1})
                    try:
                        return fn()
                    except Exception as exc:
                        self.count({"failures": 1})
                        failed.append(exc)
                        raise
        except Exception as exc:  # noqa: BLE001 - sorted just below; anything else was raised by recover or _wait
            if not failed or exc is not failed[-1]:
                raise
            if not self.retryable(exc):
                if self.wrap_refusals:
                    raise self.error(f"{name} refused the request: {brief(exc)}") from exc
                raise
            setting = f" ({self.setting}={self.max_retries})" if self.setting else ""
            raise self.error(f"{name} gave up after {len(failed)} attempts{setting}; last error: {brief(exc)}") from exc
        raise AssertionError("unreachable: tenacity either returns or raises")
