"""Clocks for the control loop: when a tick happens and when an inference has finished.

An executor asks a clock only four things: wait for the next tick, start an inference, has it
finished, and forget it. Keeping time behind this small interface lets the same executor run a
deterministic simulation (``SimClock``: tests and latency-injected evaluation) or a real robot
(``RealClock``: fixed-rate loop in the caller's thread, inference in a worker thread).

Ticks are counted as control-loop iterations, so "Δt_inf" is always the number of actions the robot
executed (or held) while the model was thinking, whatever the wall time was.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["InferenceResult", "Clock", "SimClock", "RealClock"]


@dataclass
class InferenceResult:
    """What came back from one inference: a value or the exception it raised, and how long it took."""

    value: Any = None
    error: Exception | None = None
    latency_s: float = 0.0


class Clock(ABC):
    """Control-tick source plus a single slot for one in-flight inference."""

    period: float
    tick: int = -1

    @abstractmethod
    def reset(self) -> None:
        """Start counting ticks from 0 again and drop any in-flight inference (a new episode)."""

    @abstractmethod
    def wait_tick(self) -> int:
        """Block until the next control tick and return its index (0, 1, 2, ...)."""

    @abstractmethod
    def submit(self, fn: Callable[[], Any]) -> None:
        """Start ``fn()`` as the one in-flight inference; its result shows up in ``poll``."""

    @abstractmethod
    def poll(self) -> InferenceResult | None:
        """The finished inference's result (once), or None while it is still running or none was started."""

    @abstractmethod
    def cancel(self) -> None:
        """Forget the in-flight inference; its result will never be returned."""

    @property
    @abstractmethod
    def busy(self) -> bool:
        """Whether an inference was submitted and not yet returned by ``poll`` or cancelled."""


def _check_period(period: float) -> float:
    period = float(period)
    if not (period > 0 and math.isfinite(period)):
        raise ValueError(f"period must be a positive number of seconds, got {period!r}")
    return period


class SimClock(Clock):
    """Deterministic simulated time: one inference costs ``ceil(latency_s / period)`` ticks of world time.

    ``latency_s`` is a float (every call), a sequence (call i uses entry i; the last entry repeats), a
    callable ``call_index -> seconds`` (jitter, spikes), or None to charge the measured wall time of
    the call. The policy itself runs at once, inside ``submit``; only its *arrival* is delayed, so the
    world keeps stepping exactly as it would on a robot.
    """

    def __init__(
        self,
        period: float,
        latency_s: float | Sequence[float] | Callable[[int], float] | None = 0.0,
    ):
        self.period = _check_period(period)
        if isinstance(latency_s, Sequence) and len(latency_s) == 0:
            raise ValueError("latency_s must not be an empty sequence")
        self.latency_s = latency_s
        self.calls = 0  # inferences submitted since the last reset
        self.reset()

    def reset(self) -> None:
        self.tick = -1
        self.calls = 0
        self._pending: tuple[int, InferenceResult] | None = None

    def latency_ticks(self, latency_s: float) -> int:
        """Ticks an inference of ``latency_s`` seconds costs (tolerant to float noise: 0.1 s at 30 Hz is 3)."""
        if not (latency_s >= 0 and math.isfinite(latency_s)):
            raise ValueError(f"latency_s must be a finite number >= 0, got {latency_s!r}")
        return max(0, math.ceil(latency_s / self.period - 1e-9))

    def _latency_for(self, call: int) -> float | None:
        lat = self.latency_s
        if lat is None:
            return None
        if callable(lat):
            return float(lat(call))
        if isinstance(lat, Sequence):
            return float(lat[min(call, len(lat) - 1)])
        return float(lat)

    def wait_tick(self) -> int:
        self.tick += 1
        return self.tick

    def submit(self, fn: Callable[[], Any]) -> None:
        if self.busy:
            raise RuntimeError("SimClock.submit: an inference is already in flight")
        latency = self._latency_for(self.calls)
        self.calls += 1
        t0 = time.perf_counter()
        try:
            result = InferenceResult(value=fn())
        except Exception as err:  # delivered to the executor, which decides to retry or give up
            result = InferenceResult(error=err)
        result.latency_s = time.perf_counter() - t0 if latency is None else latency
        ready = max(self.tick, 0) + self.latency_ticks(result.latency_s)
        self._pending = (ready, result)

    def poll(self) -> InferenceResult | None:
        if self._pending is None or self.tick < self._pending[0]:
            return None
        result = self._pending[1]
        self._pending = None
        return result

    def cancel(self) -> None:
        self._pending = None

    @property
    def busy(self) -> bool:
        return self._pending is not None


class _Job:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = InferenceResult()


class RealClock(Clock):
    """Wall-clock control loop at ``rate_hz`` in the caller's thread; inference in a daemon worker thread.

    Deadlines are kept on a fixed grid (t0 + n·period) so small overruns do not accumulate drift; if
    the loop falls behind by more than one whole period it re-bases instead of bursting ticks to
    catch up, and counts it in ``overruns``.
    """

    def __init__(self, rate_hz: float):
        rate_hz = float(rate_hz)
        if not (rate_hz > 0 and math.isfinite(rate_hz)):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
        self.period = 1.0 / rate_hz
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        self.cancel()
        self.tick = -1
        self.overruns = 0
        self._next: float | None = None
        self.tick_times: list[float] = []  # perf_counter() at the start of each tick (tick jitter)

    def wait_tick(self) -> int:
        now = time.perf_counter()
        if self._next is None:
            self._next = now
        else:
            self._next += self.period
            delay = self._next - now
            if delay > 0:
                time.sleep(delay)
            elif -delay > self.period:
                self.overruns += 1
                self._next = now
        self.tick += 1
        self.tick_times.append(time.perf_counter())
        return self.tick

    def submit(self, fn: Callable[[], Any]) -> None:
        if self.busy:
            raise RuntimeError("RealClock.submit: an inference is already in flight")
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()  # a cancelled call is still running: never run two inferences at once
        job = _Job()

        def work() -> None:
            t0 = time.perf_counter()
            try:
                job.result.value = fn()
            except Exception as err:
                job.result.error = err
            job.result.latency_s = time.perf_counter() - t0
            job.done.set()

        self._job = job
        self._thread = threading.Thread(target=work, name="xr0-inference", daemon=True)
        self._thread.start()

    def poll(self) -> InferenceResult | None:
        job = self._job
        if job is None or not job.done.is_set():
            return None
        self._job = None
        return job.result

    def cancel(self) -> None:
        self._job = None

    @property
    def busy(self) -> bool:
        return self._job is not None
