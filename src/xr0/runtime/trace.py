"""What an executor records (one TickRecord per control tick, one InferenceRecord per policy call) and the metrics
computed from it: idle fraction, holds, boundary discontinuity, latency."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------- trace and metrics


@dataclass(frozen=True)
class TickRecord:
    """One control tick. ``index`` is −1 on idle ticks; ``chunk_id`` is then the chunk whose action is held."""

    tick: int
    chunk_id: int
    index: int
    idle: bool
    action: np.ndarray
    clipped: bool = False


@dataclass
class InferenceRecord:
    """One policy call. ``status``: pending | ok | rejected (non-finite) | error | cancelled (run ended) |
    stalled (out longer than the watchdog allows)."""

    call: int
    start_tick: int
    prefix_len: int
    warmup: bool = False
    end_tick: int | None = None
    latency_s: float | None = None
    status: str = "pending"
    switch_index: int | None = None
    chunk_id: int | None = None
    error: str = ""

    @property
    def delay_ticks(self) -> int | None:
        return None if self.end_tick is None else self.end_tick - self.start_tick


@dataclass
class Trace:
    """Everything an executor did; ``metrics()`` summarises it. ``stop_reason``: why a watchdog ended the run."""

    period: float
    ticks: list[TickRecord] = field(default_factory=list)
    inferences: list[InferenceRecord] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def actions(self) -> np.ndarray:
        return np.stack([t.action for t in self.ticks]) if self.ticks else np.zeros((0, 0))

    @property
    def chunk_ids(self) -> np.ndarray:
        return np.array([t.chunk_id for t in self.ticks], dtype=np.int64)

    @property
    def indices(self) -> np.ndarray:
        return np.array([t.index for t in self.ticks], dtype=np.int64)

    @property
    def idle(self) -> np.ndarray:
        return np.array([t.idle for t in self.ticks], dtype=bool)

    def table(self) -> list[tuple[int, int]]:
        """(chunk_id, index) per tick; index −1 marks a hold."""
        return [(t.chunk_id, t.index) for t in self.ticks]

    def metrics(self) -> dict:
        return {
            "ticks": len(self.ticks),
            "idle_fraction": idle_fraction(self),
            "holds": hold_count(self),
            "boundary_discontinuity": boundary_discontinuity(self),
            "clipped": int(sum(t.clipped for t in self.ticks)),
            **latency_stats(self),
        }


def idle_fraction(trace: Trace) -> float:
    """Share of ticks on which the robot got no fresh action (it held its last command)."""
    return float(trace.idle.mean()) if trace.ticks else 0.0


def hold_count(trace: Trace) -> int:
    return int(trace.idle.sum())


def boundary_discontinuity(trace: Trace) -> float:
    """Mean ‖Δa‖ on the first fresh tick of each new chunk ÷ mean ‖Δa‖ between fresh ticks inside a chunk.

    About 1 means chunk switches are as smooth as motion inside a chunk; NaN if there is no switch.
    """
    if len(trace.ticks) < 2:
        return float("nan")
    step = np.linalg.norm(np.diff(trace.actions, axis=0), axis=-1)
    ids, idle = trace.chunk_ids, trace.idle
    fresh = ~idle[1:]
    boundary = fresh & (ids[1:] != ids[:-1])
    inside = fresh & ~idle[:-1] & (ids[1:] == ids[:-1])
    if not boundary.any():
        return float("nan")
    inside_mean = step[inside].mean() if inside.any() else 0.0
    b = step[boundary].mean()
    return float(b / inside_mean) if inside_mean > 0 else (0.0 if b == 0 else float("inf"))


def latency_stats(trace: Trace) -> dict:
    """Latency of completed non-warm-up calls (seconds and ticks), plus failure counts."""
    done = [r for r in trace.inferences if r.status in ("ok", "rejected", "error") and not r.warmup]
    lat = np.array([r.latency_s for r in done], dtype=np.float64)
    ticks = np.array([r.delay_ticks for r in done], dtype=np.float64)
    stats = {
        "inferences": len(done),
        "rejected": sum(r.status == "rejected" for r in trace.inferences),
        "errors": sum(r.status == "error" for r in trace.inferences),
    }
    if len(done):
        stats.update(
            latency_mean_s=float(lat.mean()),
            latency_median_s=float(np.median(lat)),
            latency_p90_s=float(np.quantile(lat, 0.9)),
            latency_max_s=float(lat.max()),
            delay_mean_ticks=float(ticks.mean()),
            delay_max_ticks=int(ticks.max()),
        )
    return stats
