"""Execution runtime: clocks and chunk executors (sync, async with timestep alignment, baselines).

Pure numpy; the server and client live in their own modules and are imported from there.
"""

from .clock import Clock, InferenceResult, RealClock, SimClock
from .executors import (
    ActionLimits,
    ActionSpace,
    AnchoredDeltaActions,
    AsyncExecutor,
    Environment,
    IdentityActions,
    InferenceFailed,
    InferenceRecord,
    NaiveAsyncExecutor,
    Policy,
    PoseDims,
    RTCExecutor,
    SyncExecutor,
    TickRecord,
    Trace,
    Watchdog,
    boundary_discontinuity,
    default_k,
    hold_count,
    idle_fraction,
    latency_stats,
    rtc_prefix_weights,
)

__all__ = [
    "Clock",
    "InferenceResult",
    "RealClock",
    "SimClock",
    "ActionLimits",
    "ActionSpace",
    "AnchoredDeltaActions",
    "AsyncExecutor",
    "Environment",
    "IdentityActions",
    "InferenceFailed",
    "InferenceRecord",
    "NaiveAsyncExecutor",
    "Policy",
    "PoseDims",
    "RTCExecutor",
    "SyncExecutor",
    "TickRecord",
    "Trace",
    "Watchdog",
    "boundary_discontinuity",
    "default_k",
    "hold_count",
    "idle_fraction",
    "latency_stats",
    "rtc_prefix_weights",
]
