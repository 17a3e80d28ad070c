"""Executors: turn a chunking policy into exactly one action per control tick (spec §7). Action spaces and safety
limits live in `actions`, the per-tick records and their metrics in `trace`.

Timeline of the asynchronous executor (spec §7.2), for a chunk of length T and k = T − T_e:

    tick s+T_e      observe, start inference with prefix = old[T_e : T_e+Δt_c]   (new index 0)
    ... Δt_inf ticks the robot keeps executing old[T_e], old[T_e+1], ...           (= new[0], new[1], ...)
    tick s+T_e+Δt_inf  the chunk arrives; execute new[Δt_inf] and go on from there.

The switch index is the number of prefix actions the robot *actually executed* since the trigger
(LeRobot #4223/#4454: never discard more than was consumed). If the prefix runs out before the chunk
arrives, the robot holds the last prefix action (counted as idle) and resumes at new[Δt_c], which the
model generated as the continuation of exactly that action, so there is no jump.

Everything is kept in absolute units inside the executor; an ``ActionSpace`` converts chunks that are
relative to their anchor state (spec §6.7) on the way in, and re-anchors the old remaining actions
to the new observation before they become the next prefix (spec §7.2, "prefix re-anchoring").
Nothing here knows about tensors or the model: a policy is any callable ``(obs, prefix) -> (T, D)``.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..config import MAX_PREFIX
from .actions import ActionLimits, ActionSpace, AnchoredDeltaActions, IdentityActions, PoseDims
from .clock import Clock
from .trace import (InferenceRecord, TickRecord, Trace, boundary_discontinuity, hold_count, idle_fraction,
                    latency_stats)

K_OFFICIAL = 10  # the official README: start the next inference when 10 unexecuted actions remain (T = 30)


def default_k(chunk_len: int) -> int:
    """Actions left when the next inference starts unless told otherwise: the official 10, at most half the chunk."""
    return min(K_OFFICIAL, chunk_len // 2)

__all__ = [
    "Environment",
    "Policy",
    "ActionSpace",
    "IdentityActions",
    "PoseDims",
    "AnchoredDeltaActions",
    "ActionLimits",
    "TickRecord",
    "InferenceRecord",
    "Trace",
    "Watchdog",
    "InferenceFailed",
    "SyncExecutor",
    "AsyncExecutor",
    "NaiveAsyncExecutor",
    "RTCExecutor",
    "rtc_prefix_weights",
    "idle_fraction",
    "hold_count",
    "boundary_discontinuity",
    "latency_stats",
]


# --------------------------------------------------------------------------- interfaces


@runtime_checkable
class Environment(Protocol):
    """A simulator or a robot. One ``act`` call is one control tick.

    ``observe()`` returns ``{"images": {camera: HxWx3 uint8}, "state": (S,), "prompt": str}`` and may
    add ``"anchor_state"``: the pose vector relative actions are anchored to, when it is not ``state``
    (XR-0's state holds no end-effector pose, §6.7).
    """

    def observe(self) -> dict: ...

    def act(self, action: np.ndarray) -> None: ...


@runtime_checkable
class Policy(Protocol):
    """``(obs, prefix) -> (T, D)`` de-normalised actions; ``prefix`` is (p, D) in the same units, or None.

    Executors configured with ``prefix_weights`` call it as ``policy(obs, prefix, prefix_weights=w)``.
    """

    def __call__(self, obs: dict, prefix: np.ndarray | None, /) -> np.ndarray: ...


# --------------------------------------------------------------------------- real-time guards


@dataclass(frozen=True)
class Watchdog:
    """Real-time guards of an executor (off by default; meant for RealClock on a robot).

    stall_s: an inference out this long (a frozen or vanished server) ends the run cleanly: the robot has been
    holding since the committed actions ran out, the trace says why (``Trace.stop_reason``), run() returns.
    max_age_s: an action planned from an observation older than this is never sent; the robot holds instead.
    Ages and stalls count control ticks x period, the robot's own time.
    """

    stall_s: float | None = None
    max_age_s: float | None = None

    def __post_init__(self):
        for name in ("stall_s", "max_age_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"Watchdog.{name} must be a positive number of seconds or None, got {v!r}")


class InferenceFailed(RuntimeError):
    """The policy failed ``max_failures`` times in a row; ``trace`` holds what happened up to then."""

    def __init__(self, message: str, trace: Trace):
        super().__init__(message)
        self.trace = trace


def rtc_prefix_weights(prefix_len: int, delay: int) -> np.ndarray:
    """RTC soft mask (Black et al. 2025) over the overlap: 1 for the first ``delay`` actions, then an
    exponential decay towards 0 at the end of the old chunk. For inference-time-guided policies."""
    i = np.arange(prefix_len, dtype=np.float64)
    c = (prefix_len - i) / (prefix_len - delay + 1)
    w = c * np.expm1(c) / np.expm1(1.0)
    return np.where(i < delay, 1.0, w)


# --------------------------------------------------------------------------- executors


@dataclass
class _Pending:
    record: InferenceRecord
    anchor: np.ndarray | None
    prefix_abs: np.ndarray | None
    start_index: int  # index in the old chunk at the trigger (= new index 0)
    consumed: int = 0  # fresh old-chunk actions executed since the trigger


class _ChunkExecutor:
    """The control loop shared by every executor; subclasses only decide the three policy questions:
    how long a prefix to send, how far the old chunk may run during inference, and where to switch."""

    def __init__(
        self,
        env: Environment,
        policy: Policy,
        clock: Clock,
        *,
        k: int | None = None,
        action_space: ActionSpace | None = None,
        limits: ActionLimits | None = None,
        max_failures: int = 3,
        watchdog: Watchdog | None = None,
    ):
        if k is not None and k < 0:
            raise ValueError(f"k (actions left when the next inference starts) must be >= 0, got {k}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self.env, self.policy, self.clock = env, policy, clock
        self.k_arg = k
        self.k = k  # resolved against the chunk length T by the first chunk (default_k(T))
        # default: a held tick zeroes the policy's delta dims (ChunkPolicy / PolicyClient.as_policy_fn say them)
        self.action_space = action_space or IdentityActions(zero_on_hold=getattr(policy, "delta_dims", ()))
        self.limits = limits
        self.max_failures = max_failures
        self.watchdog = watchdog or Watchdog()
        self.trace = Trace(period=clock.period)

    # -- the three decisions (overridden) --------------------------------------------------------
    def _prefix_len(self, remaining: int) -> int:
        return 0

    def _run_limit(self, pending: _Pending) -> int:
        """While inference is in flight, the old chunk may run up to (not including) this index."""
        return self._T

    def _switch_index(self, pending: _Pending, tick: int) -> int:
        return 0

    def _prefix_weights(self, prefix_len: int) -> np.ndarray | None:
        return None

    # -- loop --------------------------------------------------------------------------------------
    def run(self, max_ticks: int, stop: Callable[[], bool] | None = None) -> Trace:
        """Run one episode of at most ``max_ticks`` ticks (``stop()`` true ends it early) and return its trace.

        The first chunk is inferred before tick 0 and costs no ticks (a warm-up call: it is excluded
        from the latency estimate because first calls are slow).
        """
        if max_ticks < 0:
            raise ValueError(f"max_ticks must be >= 0, got {max_ticks}")
        self.clock.reset()
        self.trace = Trace(period=self.clock.period)
        self._calls = 0
        self._failures = 0
        self._chunk_id = -1
        self._pending: _Pending | None = None
        self._last: np.ndarray | None = None
        self._last_source = -1
        self._T = self._D = None
        self._startup()
        try:
            for _ in range(max_ticks):
                self._step(self.clock.wait_tick())
                if self.trace.stop_reason is not None or (stop is not None and stop()):
                    break
        finally:
            if self._pending is not None:
                self._pending.record.status = "cancelled"
                self._pending = None
            self.clock.cancel()
        return self.trace

    @property
    def next_index(self) -> int:
        """Index in the current chunk of the next action to execute (at a trigger: where the new chunk's index 0,
        and its prefix, start in the old one)."""
        return self._index

    def _call_policy(self, obs: dict, prefix: np.ndarray | None, weights: np.ndarray | None) -> Any:
        if weights is None:
            return self.policy(obs, prefix)
        return self.policy(obs, prefix, prefix_weights=weights)

    def _startup(self) -> None:
        obs = self.env.observe()
        anchor = self.action_space.anchor(obs)
        while True:
            record = InferenceRecord(call=self._calls, start_tick=0, prefix_len=0, warmup=True)
            self._calls += 1
            self.trace.inferences.append(record)
            t0 = time.perf_counter()
            try:
                value, error = self._call_policy(obs, None, None), None
            except Exception as err:
                value, error = None, err
            record.end_tick, record.latency_s = 0, time.perf_counter() - t0
            if self._accept(record, value, error, anchor, None, 0):
                return

    def _step(self, tick: int) -> None:
        self._collect(tick)
        self._check_stall(tick)
        if self._pending is None and self._index >= self._T - self.k and self.trace.stop_reason is None:
            self._trigger(tick)
            self._collect(tick)  # a zero-latency clock answers at once
        self._execute(tick)

    def _trigger(self, tick: int) -> None:
        obs = self.env.observe()
        anchor = self.action_space.anchor(obs)
        p = self._prefix_len(self._T - self._index)
        prefix_abs = prefix = weights = None
        if p > 0:
            prefix_abs = self._chunk[self._index : self._index + p].copy()
            prefix = self.action_space.to_relative(prefix_abs, anchor)
            weights = self._prefix_weights(p)
        record = InferenceRecord(call=self._calls, start_tick=tick, prefix_len=p)
        self._calls += 1
        self.trace.inferences.append(record)
        self._pending = _Pending(record, anchor, prefix_abs, self._index)
        self.clock.submit(lambda: self._call_policy(obs, prefix, weights))

    def _check_stall(self, tick: int) -> None:
        """The watchdog's stall_s: give up on an inference that has been out too long (this tick still holds)."""
        limit, pending = self.watchdog.stall_s, self._pending
        if limit is None or pending is None or (tick - pending.record.start_tick) * self.clock.period < limit:
            return
        pending.record.status, pending.record.error = "stalled", f"no answer after {limit:g} s"
        self._pending = None
        self.clock.cancel()
        self.trace.stop_reason = (f"stalled: no chunk {(tick - pending.record.start_tick) * self.clock.period:.2f} s "
                                  f"after inference call {pending.record.call} started (Watchdog.stall_s={limit:g}); "
                                  f"the policy or its server is frozen or gone")

    def _collect(self, tick: int) -> None:
        if self._pending is None:
            return
        result = self.clock.poll()
        if result is None:
            return
        pending, self._pending = self._pending, None
        record = pending.record
        record.end_tick, record.latency_s = tick, result.latency_s
        self._accept(record, result.value, result.error, pending.anchor, pending.prefix_abs, self._switch_index(pending, tick))

    def _validate(self, value: Any, prefix_len: int) -> np.ndarray | None:
        """The chunk as float64 (T, D), or None if it holds NaN/inf. Wrong shapes are bugs: raise."""
        try:
            chunk = np.array(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"policy returned {type(value).__name__}, not a numeric (T, D) array") from err
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] < 1:
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}; expected (T, D)")
        if self._T is not None and chunk.shape != (self._T, self._D):
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}; expected ({self._T}, {self._D}) like the first")
        if chunk.shape[0] <= prefix_len:
            raise ValueError(f"policy returned {chunk.shape[0]} actions, not more than the prefix ({prefix_len})")
        return chunk if np.all(np.isfinite(chunk)) else None

    def _accept(self, record, value, error, anchor, prefix_abs, switch_index) -> bool:
        chunk = None
        if error is None:
            chunk = self._validate(value, record.prefix_len)
            if chunk is None:
                record.status, record.error = "rejected", "chunk contains NaN or inf"
        else:
            record.status, record.error = "error", f"{type(error).__name__}: {error}"
        if chunk is None:
            self._failures += 1
            if self._failures >= self.max_failures:
                raise InferenceFailed(
                    f"policy failed {self._failures} consecutive times (max_failures={self.max_failures}); "
                    f"last: {record.error}",
                    self.trace,
                ) from error
            return False
        if self._T is None:
            self._T, self._D = chunk.shape
            self.k = default_k(self._T) if self.k_arg is None else self.k_arg
            if self.k >= self._T:
                raise ValueError(f"k={self.k} must be < the chunk length T={self._T}")
        chunk = self.action_space.to_absolute(chunk, anchor)
        if prefix_abs is not None and self._enforce_prefix():
            chunk[: len(prefix_abs)] = prefix_abs  # the committed prefix is what the robot will do
        self._failures = 0
        self._chunk_id += 1
        self._chunk, self._index = chunk, switch_index
        self._chunk_tick = record.start_tick  # the tick of the observation this chunk was planned from
        record.status, record.chunk_id, record.switch_index = "ok", self._chunk_id, switch_index
        self._on_accepted(record)
        return True

    def _enforce_prefix(self) -> bool:
        return False

    def _on_accepted(self, record: InferenceRecord) -> None:
        pass

    def _execute(self, tick: int) -> None:
        limit = self._T if self._pending is None else self._run_limit(self._pending)
        age_limit = self.watchdog.max_age_s
        stale = age_limit is not None and (tick - self._chunk_tick) * self.clock.period > age_limit
        if self._index < min(limit, self._T) and not stale and self.trace.stop_reason is None:
            action, index, idle = self._chunk[self._index], self._index, False
            self._index += 1
            if self._pending is not None:
                self._pending.consumed += 1
            source = self._chunk_id
        else:
            action, index, idle, source = self.action_space.hold(self._last), -1, True, self._last_source
        sent = action if self.limits is None else self.limits.apply(action, self._last)
        clipped = self.limits is not None and not np.array_equal(sent, action)
        sent = np.array(sent, dtype=np.float64)
        self.env.act(sent.copy())
        self._last, self._last_source = sent, source
        self.trace.ticks.append(TickRecord(tick, source, index, idle, sent, clipped))


class SyncExecutor(_ChunkExecutor):
    """Spec §7.1: execute the first T_e = T − k actions, then hold still while the next chunk is inferred."""

    def _run_limit(self, pending: _Pending) -> int:
        return pending.start_index

    def _switch_index(self, pending: _Pending, tick: int) -> int:
        return 0


class NaiveAsyncExecutor(_ChunkExecutor):
    """Baseline: keep executing the old chunk during inference, switch to new[Δt_inf] with no prefix.

    The new chunk may pick another mode of the action distribution, so switches can jump.
    """

    def _switch_index(self, pending: _Pending, tick: int) -> int:
        return min(tick - pending.record.start_tick, self._T - 1)


class AsyncExecutor(_ChunkExecutor):
    """Spec §7.2: asynchronous execution with timestep alignment and a clean prefix.

    ``prefix_len`` fixes Δt_c; None picks it from the measured delay: estimate + ``prefix_margin``,
    capped at ``max_prefix`` (default: the policy's own ``max_prefix``, the longest prefix its checkpoint was
    trained on, when it says one, else 6; a larger one, or a policy trained with none, is refused) and at the k
    actions left; ``max_prefix`` before anything was measured. The estimate is the ``latency_quantile``
    ("higher") of the last ``latency_window`` measured delays in ticks, so one spike is forgotten.
    ``prefix_weights(p, delay) -> (p,)`` is passed to the policy as ``prefix_weights=`` when given
    (inference-time guidance hook). ``enforce_prefix`` overwrites new[:Δt_c] with the prefix sent, so
    the hand-over is exact even if the model does not reproduce its prefix bit for bit.
    """

    clean_prefix = True  # sends the trained clean prefix (RTCExecutor: a guided one)

    def __init__(
        self,
        env: Environment,
        policy: Policy,
        clock: Clock,
        *,
        k: int | None = None,
        prefix_len: int | None = None,
        max_prefix: int | None = None,
        prefix_margin: int = 1,
        latency_window: int = 10,
        latency_quantile: float = 0.8,
        prefix_weights: Callable[[int, int], np.ndarray] | None = None,
        enforce_prefix: bool = True,
        action_space: ActionSpace | None = None,
        limits: ActionLimits | None = None,
        max_failures: int = 3,
        watchdog: Watchdog | None = None,
    ):
        super().__init__(env, policy, clock, k=k, action_space=action_space, limits=limits, max_failures=max_failures,
                         watchdog=watchdog)
        trained = getattr(policy, "max_prefix", None)  # ChunkPolicy and PolicyClient.as_policy_fn say it
        if self.clean_prefix and trained is not None:
            if max_prefix is not None and max_prefix > trained:
                raise ValueError(f"max_prefix={max_prefix} exceeds the longest clean prefix the policy was trained "
                                 f"with ({trained}); use RTCExecutor for longer guided prefixes")
            if trained == 0:
                raise ValueError("the policy was not trained with clean action prefixes (max_prefix 0, e.g. a "
                                 "release folder or a post-sync run): use RTCExecutor (inference-time guidance) "
                                 "or SyncExecutor")
        if max_prefix is None:
            max_prefix = MAX_PREFIX if trained is None else trained
        if max_prefix < 0:
            raise ValueError(f"max_prefix must be >= 0, got {max_prefix}")
        if prefix_len is not None and not 0 <= prefix_len <= max_prefix:
            raise ValueError(f"prefix_len={prefix_len} must be in 0..max_prefix={max_prefix}")
        if prefix_margin < 0:
            raise ValueError(f"prefix_margin must be >= 0, got {prefix_margin}")
        if latency_window < 1:
            raise ValueError(f"latency_window must be >= 1, got {latency_window}")
        if not 0.0 <= latency_quantile <= 1.0:
            raise ValueError(f"latency_quantile must be in [0, 1], got {latency_quantile}")
        self.prefix_len, self.max_prefix, self.prefix_margin = prefix_len, max_prefix, prefix_margin
        self.latency_quantile = latency_quantile
        self.prefix_weights = prefix_weights
        self.enforce_prefix = enforce_prefix
        self._delays: collections.deque[int] = collections.deque(maxlen=latency_window)

    def delay_estimate(self) -> int | None:
        """Robust Δt_inf estimate in ticks from recent measured delays (None before the first)."""
        if not self._delays:
            return None
        return int(np.quantile(np.array(self._delays), self.latency_quantile, method="higher"))

    def _on_accepted(self, record: InferenceRecord) -> None:
        if not record.warmup:
            self._delays.append(record.delay_ticks)

    def _prefix_len(self, remaining: int) -> int:
        if self.prefix_len is not None:
            want = self.prefix_len
        else:
            est = self.delay_estimate()
            want = self.max_prefix if est is None else est + self.prefix_margin
        return max(0, min(want, self.max_prefix, remaining))

    def _prefix_weights(self, prefix_len: int) -> np.ndarray | None:
        if self.prefix_weights is None:
            return None
        est = self.delay_estimate()
        delay = prefix_len if est is None else min(est, prefix_len)
        w = np.asarray(self.prefix_weights(prefix_len, delay), dtype=np.float64)
        if w.shape != (prefix_len,):
            raise ValueError(f"prefix_weights returned shape {w.shape}; expected ({prefix_len},)")
        return w

    def _enforce_prefix(self) -> bool:
        return self.enforce_prefix

    def _run_limit(self, pending: _Pending) -> int:
        # Past the prefix the new chunk no longer agrees with the old one: hold instead of diverging.
        return pending.start_index + pending.record.prefix_len

    def _switch_index(self, pending: _Pending, tick: int) -> int:
        return pending.consumed


class RTCExecutor(AsyncExecutor):
    """Inference-time RTC baseline (Black et al. 2025): all k remaining actions go in as a soft prefix.

    The policy must accept ``prefix_weights=`` and do the guidance itself; the executor only schedules.
    The prefix is not enforced, because guided actions beyond the frozen part may differ from the old.
    It needs no prefix training, so the policy's ``max_prefix`` does not bound it.
    """

    clean_prefix = False

    def __init__(self, env: Environment, policy: Policy, clock: Clock, *, k: int | None = None, **kwargs: Any):
        kwargs.setdefault("prefix_weights", rtc_prefix_weights)
        kwargs.setdefault("enforce_prefix", False)
        super().__init__(env, policy, clock, k=k, **kwargs)

    def _prefix_len(self, remaining: int) -> int:
        return remaining
