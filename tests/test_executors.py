"""Executors on a simulated clock with fake numpy policies: exact tick -> action tables."""

import threading
import time

import numpy as np
import pytest

from xr0.runtime import (
    ActionLimits,
    AnchoredDeltaActions,
    AsyncExecutor,
    IdentityActions,
    InferenceFailed,
    NaiveAsyncExecutor,
    PoseDims,
    RealClock,
    RTCExecutor,
    SimClock,
    SyncExecutor,
    rtc_prefix_weights,
)

HZ = 30.0


def ticks(n):
    """Latency of exactly n ticks at 30 Hz (0.1 s -> 3 ticks despite float noise)."""
    return n / HZ


class Env:
    """1-D world whose state is the last command (so a policy can continue from it)."""

    def __init__(self, dim=1):
        self.acts = []
        self.dim = dim

    def observe(self):
        state = self.acts[-1][: self.dim] if self.acts else np.zeros(self.dim)
        return {"images": {}, "state": np.array(state, dtype=float), "prompt": "test", "tick": len(self.acts)}

    def act(self, action):
        self.acts.append(np.array(action, dtype=float))


class TablePolicy:
    """Call c returns action[i] = (c, i); a prefix-honouring model copies the prefix into new[:p]."""

    def __init__(self, T, honour_prefix=True, fail=(), nan=(), always_fail=False):
        self.T, self.honour, self.fail, self.nan, self.always_fail = T, honour_prefix, set(fail), set(nan), always_fail
        self.prefixes = []

    def __call__(self, obs, prefix):
        c = len(self.prefixes)
        self.prefixes.append(None if prefix is None else prefix.copy())
        if self.always_fail or c in self.fail:
            raise RuntimeError(f"boom {c}")
        chunk = np.stack([np.full(self.T, float(c)), np.arange(self.T, dtype=float)], 1)
        if c in self.nan:
            chunk[10, 0] = np.nan
        if self.honour and prefix is not None:
            chunk[: len(prefix)] = prefix
        return chunk


class RampPolicy:
    """Moves +v per tick from the current state; without a prefix each chunk picks a 'mode' offset."""

    def __init__(self, T, v=0.01, offsets=(0.0,)):
        self.T, self.v, self.offsets, self.calls = T, v, offsets, 0

    def __call__(self, obs, prefix):
        c, self.calls = self.calls, self.calls + 1
        steps = np.arange(1, self.T + 1, dtype=float)[:, None] * self.v
        if prefix is None:
            return obs["state"][None, :] + steps + self.offsets[c % len(self.offsets)]
        p = len(prefix)
        chunk = np.empty((self.T, prefix.shape[1]))
        chunk[:p] = prefix
        chunk[p:] = prefix[-1] + steps[: self.T - p]
        return chunk


def expected_async_table(T, k, d, n):
    """(chunk_id, index) per tick when every inference takes d <= prefix ticks (spec §7.2)."""
    te = T - k
    table = [(0, i) for i in range(te)]
    c = 1
    while len(table) < n:
        table += [(c - 1, te + j) for j in range(d)] + [(c, i) for i in range(d, te)]
        c += 1
    return table[:n]


def test_async_tick_table_and_exact_handover():
    T, k, d, p = 30, 10, 3, 5
    policy = TablePolicy(T)
    ex = AsyncExecutor(Env(2), policy, SimClock(1 / HZ, latency_s=0.1), k=k, prefix_len=p)
    trace = ex.run(80)
    assert trace.table() == expected_async_table(T, k, d, 80)
    assert trace.metrics()["holds"] == 0
    # Prefix = the FIRST Δt_c of the remaining actions: old[20:25].
    np.testing.assert_array_equal(policy.prefixes[1], [[0, i] for i in range(20, 25)])
    np.testing.assert_array_equal(policy.prefixes[2], [[1, i] for i in range(20, 25)])
    ok = [r for r in trace.inferences if r.status == "ok" and not r.warmup]
    assert [(r.start_tick, r.end_tick, r.switch_index, r.prefix_len) for r in ok[:3]] == [
        (20, 23, 3, 5), (40, 43, 3, 5), (60, 63, 3, 5)]
    # In action values: old chunk runs to the end of its prefix (index 24), the new one goes on at
    # index 5: no action skipped or repeated.
    values = [tuple(a.astype(int)) for a in trace.actions]
    assert values[:25] == [(0, t) for t in range(25)]
    assert values[25:45] == [(1, i) for i in range(5, 25)]
    assert values[45] == (2, 5)
    for (c0, i0), (c1, i1) in zip(values, values[1:]):
        assert (c1 == c0 and i1 == i0 + 1) or (c1 == c0 + 1 and i1 == p)


def test_enforced_prefix_makes_handover_exact_for_a_sloppy_model():
    T = 30
    ex = AsyncExecutor(Env(2), TablePolicy(T, honour_prefix=False), SimClock(1 / HZ, ticks(2)), k=10, prefix_len=4)
    acts = ex.run(30).actions
    # Switch at index 2 of chunk 1; indices 2, 3 lie in the prefix, so old[22], old[23] still execute.
    np.testing.assert_array_equal(acts[20:26], [[0, 20], [0, 21], [0, 22], [0, 23], [1, 4], [1, 5]])


@pytest.mark.parametrize("T,k,d", [(10, None, 2), (10, 4, 3), (10, 3, 0), (16, 5, 5), (30, 10, 3)])
def test_async_tables_for_other_chunk_lengths(T, k, d):
    ex = AsyncExecutor(Env(2), TablePolicy(T), SimClock(1 / HZ, ticks(d)), k=k)  # adaptive Δt_c
    trace = ex.run(60)
    assert trace.table() == expected_async_table(T, ex.k, d, 60)
    assert ex.k == (min(10, T // 2) if k is None else k)
    assert trace.metrics()["holds"] == 0


def test_sync_executor_holds_while_inferring():
    T, k = 30, 20  # execute T_e = 10, then wait 3 ticks
    trace = SyncExecutor(Env(2), TablePolicy(T), SimClock(1 / HZ, 0.1), k=k).run(65)
    # holds carry the id of the chunk whose last action is held
    assert trace.table() == [(c, i) for c in range(5) for i in list(range(10)) + [-1, -1, -1]]
    assert trace.metrics()["idle_fraction"] == pytest.approx(15 / 65)
    np.testing.assert_array_equal(trace.actions[10], trace.actions[9])  # robot holds its last command


def test_late_inference_holds_then_resumes_without_jump():
    T, v = 30, 0.01
    ex = AsyncExecutor(Env(), RampPolicy(T, v), SimClock(1 / HZ, ticks(7)), k=10, prefix_len=4)
    trace = ex.run(60)
    tab = trace.table()
    assert tab[20:28] == [(0, 20), (0, 21), (0, 22), (0, 23), (0, -1), (0, -1), (0, -1), (1, 4)]
    assert trace.metrics()["holds"] == 6  # 3 per inference, two inferences
    rec = trace.inferences[1]
    assert (rec.delay_ticks, rec.prefix_len, rec.switch_index) == (7, 4, 4)
    steps = np.abs(np.diff(trace.actions[:, 0]))
    assert steps.max() == pytest.approx(v)  # never more than one normal step: no jump
    assert set(np.round(steps / v, 9)) == {0.0, 1.0}


def test_old_chunk_runs_out_then_recovers():
    # Inference longer than all k remaining actions: hold at the chunk end, resume at new[k].
    T, v = 10, 0.01
    ex = AsyncExecutor(Env(), RampPolicy(T, v), SimClock(1 / HZ, ticks(5)), k=3)
    trace = ex.run(14)
    assert trace.table()[7:14] == [(0, 7), (0, 8), (0, 9), (0, -1), (0, -1), (1, 3), (1, 4)]
    assert np.abs(np.diff(trace.actions[:, 0])).max() == pytest.approx(v)


def test_naive_async_jumps_and_prefix_async_does_not():
    T, v, offsets = 30, 0.01, (0.0, 0.5, -0.5)
    clock = SimClock(1 / HZ, 0.1)
    smooth = AsyncExecutor(Env(), RampPolicy(T, v, offsets), clock, k=10).run(100)
    naive = NaiveAsyncExecutor(Env(), RampPolicy(T, v, offsets), clock, k=10).run(100)
    sync = SyncExecutor(Env(), RampPolicy(T, v, offsets), clock, k=10).run(100)
    assert smooth.metrics()["boundary_discontinuity"] == pytest.approx(1.0)
    assert naive.metrics()["boundary_discontinuity"] > 20
    assert sync.metrics()["boundary_discontinuity"] > 20
    # naive switches at the elapsed tick count
    assert naive.table()[20:24] == [(0, 20), (0, 21), (0, 22), (1, 3)]
    assert naive.metrics()["idle_fraction"] == 0 and sync.metrics()["idle_fraction"] > 0.1


def test_nan_chunk_is_rejected_and_retried():
    T = 30
    trace = AsyncExecutor(Env(2), TablePolicy(T, nan={1}), SimClock(1 / HZ, 0.1), k=10, prefix_len=5).run(30)
    assert [r.status for r in trace.inferences[:3]] == ["ok", "rejected", "ok"]
    assert (trace.inferences[2].start_tick, trace.inferences[2].end_tick) == (23, 26)
    assert trace.table()[20:28] == [(0, i) for i in range(20, 26)] + [(1, 3), (1, 4)]
    assert not np.isnan(trace.actions).any()
    m = trace.metrics()
    assert (m["rejected"], m["holds"]) == (1, 0)


def test_exceptions_retried_then_clean_failure():
    T = 30
    trace = AsyncExecutor(Env(2), TablePolicy(T, fail={1, 2}), SimClock(1 / HZ, 0.1), k=10, prefix_len=5).run(32)
    assert [r.status for r in trace.inferences[:4]] == ["ok", "error", "error", "ok"]
    assert trace.inferences[1].error == "RuntimeError: boom 1"
    assert trace.table()[26:31] == [(0, 26), (0, 27), (0, 28), (1, 3), (1, 4)]
    assert trace.metrics()["errors"] == 2

    policy = TablePolicy(T, fail=set(range(1, 100)))
    with pytest.raises(InferenceFailed, match="3 consecutive") as info:
        AsyncExecutor(Env(2), policy, SimClock(1 / HZ, ticks(9)), k=10, max_failures=3).run(200)
    assert len(policy.prefixes) == 4 and [r.status for r in info.value.trace.inferences] == ["ok"] + ["error"] * 3
    assert info.value.trace.table()[-1] == (0, -1)  # held the old chunk's end while retrying

    with pytest.raises(InferenceFailed, match="boom"):
        SyncExecutor(Env(2), TablePolicy(T, always_fail=True), SimClock(1 / HZ), max_failures=2).run(10)


def test_bad_configuration_names_the_field():
    env, clock = Env(2), SimClock(1 / HZ)
    with pytest.raises(ValueError, match="prefix_len"):
        AsyncExecutor(env, TablePolicy(30), clock, prefix_len=7, max_prefix=6)
    with pytest.raises(ValueError, match="k=30"):
        AsyncExecutor(env, TablePolicy(30), clock, k=30).run(5)
    with pytest.raises(ValueError, match=r"expected \(T, D\)"):
        SyncExecutor(env, lambda obs, prefix: np.zeros(3), clock).run(5)
    with pytest.raises(ValueError, match="rate_hz"):
        RealClock(0)


def test_anchored_delta_numbers_and_round_trip():
    space = AnchoredDeltaActions(
        delta_dims=range(6, 13), poses=[PoseDims(pos=(0, 1, 2), rot=(3, 4, 5), state_pos=(0, 1, 2), state_rot=(3, 4, 5))]
    )
    anchor = np.array([1.0, 0, 0, 0, 0, np.pi / 2, 0.2] + [0.1] * 6)  # at (1,0,0), yawed 90°
    rel = np.zeros((1, 13))
    rel[0, :3] = [1, 0, 0]  # one metre forward in the anchor frame = +y in the world
    rel[0, 5] = np.pi / 2
    rel[0, 6] = 0.3
    absolute = space.to_absolute(rel, anchor)
    np.testing.assert_allclose(absolute[0, :3], [1, 1, 0], atol=1e-12)
    np.testing.assert_allclose(np.abs(absolute[0, 3:6]), [0, 0, np.pi], atol=1e-9)  # 180° yaw
    assert absolute[0, 6] == pytest.approx(0.5)
    np.testing.assert_allclose(space.to_relative(absolute, anchor), rel, atol=1e-9)

    rng = np.random.default_rng(0)
    for _ in range(20):
        anchor = rng.normal(size=13)
        x = rng.normal(size=(30, 13))
        angle = np.r_[rng.uniform(0, 3.1, 27), 1e-8, np.pi - 1e-3, np.pi - 1e-7][:, None]  # incl. near 0 and π
        x[:, 3:6] *= angle / np.linalg.norm(x[:, 3:6], axis=1, keepdims=True)
        np.testing.assert_allclose(space.to_relative(space.to_absolute(x, anchor), anchor), x, atol=1e-9)
    with pytest.raises(ValueError, match="state_rot"):
        AnchoredDeltaActions(poses=[PoseDims(pos=(0, 1, 2), rot=(3, 4, 5), state_pos=(0, 1, 2))])


def test_executor_reanchors_prefix_to_new_state():
    T, v = 30, 0.01
    seen = []

    def policy(obs, prefix):  # relative actions: +v per tick from the anchor
        seen.append(None if prefix is None else prefix.copy())
        rel = np.arange(1, T + 1, dtype=float)[:, None] * v
        if prefix is not None:
            rel[: len(prefix)] = prefix
            rel[len(prefix):] = prefix[-1] + np.arange(1, T - len(prefix) + 1)[:, None] * v
        return rel

    env = Env()
    env.acts.append(np.array([5.0]))  # start state 5
    ex = AsyncExecutor(env, policy, SimClock(1 / HZ, 0.1), k=10, prefix_len=5, action_space=AnchoredDeltaActions(delta_dims=[0]))
    trace = ex.run(60)
    # old chunk anchored at 5 -> absolute 5 + (i+1)v; trigger state = action 19 = 5 + 20v; so the
    # re-anchored prefix old[20:25] is (1..5)v relative to the new anchor.
    np.testing.assert_allclose(seen[1][:, 0], np.arange(1, 6) * v, atol=1e-12)
    np.testing.assert_allclose(trace.actions[:, 0], 5 + np.arange(1, 61) * v, atol=1e-12)  # executed absolute


def test_identity_hold_zeroes_delta_dims():
    space = IdentityActions(zero_on_hold=[0, 1])
    np.testing.assert_array_equal(space.hold(np.array([0.3, -0.2, 1.0])), [0, 0, 1.0])


def test_clipping_box_and_rate():
    chunk = np.array([[0.0], [3.0], [3.0], [-3.0], [-3.0], [0.2], [0.2], [0.2]])
    limits = ActionLimits(low=[-1.0], high=[1.0], max_delta=[0.5])
    trace = SyncExecutor(Env(), lambda obs, prefix: chunk, SimClock(1 / HZ), k=2, limits=limits).run(6)
    np.testing.assert_allclose(trace.actions[:, 0], [0.0, 0.5, 1.0, 0.5, 0.0, 0.2])
    assert [t.clipped for t in trace.ticks] == [False, True, True, True, True, False]
    with pytest.raises(ValueError, match="low"):
        ActionLimits(low=[1.0], high=[0.0])


def test_delay_estimate_forgets_a_slow_call():
    lat = [ticks(9)] + [ticks(3)] * 50
    ex = AsyncExecutor(Env(2), TablePolicy(30), SimClock(1 / HZ, lat), k=10)
    trace = ex.run(200)
    recs = [r for r in trace.inferences if r.status == "ok" and not r.warmup]
    assert [r.prefix_len for r in recs[:8]] == [6, 6, 6, 6, 6, 6, 4, 4]
    assert [r.delay_ticks for r in recs[:3]] == [9, 3, 3]
    assert ex.delay_estimate() == 3
    assert trace.metrics()["holds"] == 3  # only the slow call outran its 6-action prefix


def test_rtc_hook_passes_all_remaining_with_weights():
    w = rtc_prefix_weights(10, 3)
    assert np.all(w[:3] == 1) and np.all(np.diff(w[3:]) < 0) and 0 < w[-1] < w[3] < 1
    got = []

    def policy(obs, prefix, prefix_weights=None):
        got.append((None if prefix is None else len(prefix), prefix_weights))
        return np.zeros((30, 2))

    RTCExecutor(Env(2), policy, SimClock(1 / HZ, 0.1), k=10).run(25)
    assert got[1][0] == 10 and got[1][1].shape == (10,) and got[1][1][0] == 1.0


def test_real_clock_threaded_run():
    main = threading.get_ident()
    threads = []

    def policy(obs, prefix):
        threads.append(threading.get_ident())
        time.sleep(0.05)
        out = np.stack([np.full(20, float(len(threads))), np.arange(20.0)], 1)
        if prefix is not None:
            out[: len(prefix)] = prefix
        return out

    t0 = time.perf_counter()
    trace = AsyncExecutor(Env(2), policy, RealClock(50), k=8).run(50)
    wall = time.perf_counter() - t0
    assert len(trace.ticks) == 50 and wall >= 0.9
    assert all(t != main for t in threads[1:])  # inference off the control thread (startup is inline)
    ok = [r for r in trace.inferences if r.status == "ok" and not r.warmup]
    assert len(ok) >= 2
    for r in ok:
        assert r.latency_s >= 0.05 and r.delay_ticks >= 2
        assert r.switch_index == min(r.delay_ticks, r.prefix_len)
        assert trace.table()[r.end_tick] == (r.chunk_id, r.switch_index)
    tab = trace.table()
    for (c0, i0), (c1, i1) in zip(tab, tab[1:]):
        if c0 == c1 and i0 >= 0 and i1 >= 0:
            assert i1 == i0 + 1


class TimedEnv(Env):
    """Env that also records the wall time of every command."""

    def __init__(self, dim=2):
        super().__init__(dim)
        self.times = []

    def act(self, action):
        super().act(action)
        self.times.append(time.perf_counter())


def test_watchdog_holds_within_a_period_and_stops_cleanly_when_the_policy_freezes():
    """RealClock at 50 Hz; the second inference never returns (a frozen server). The robot finishes the committed
    actions, then gets hold commands every period, never an action planned more than max_age_s ago, and the run
    ends by itself stall_s after the frozen call started, saying why."""
    from xr0.runtime import Watchdog

    frozen = threading.Event()
    policy = TablePolicy(10)

    def freezing(obs, prefix):
        if policy.prefixes:  # every call after the first
            frozen.wait(30)
        return policy(obs, prefix)

    env, period = TimedEnv(2), 1 / 50
    ex = AsyncExecutor(env, freezing, RealClock(50), k=5, watchdog=Watchdog(stall_s=0.3, max_age_s=0.17))
    t0 = time.perf_counter()
    trace = ex.run(1000)
    wall = time.perf_counter() - t0
    frozen.set()
    assert trace.stop_reason is not None and "stalled" in trace.stop_reason
    assert [r.status for r in trace.inferences] == ["ok", "stalled"]
    assert wall < 1.0 and len(trace.ticks) < 40  # 5 committed ticks + 0.3 s of holds, not 1000 ticks
    fresh = [t for t in trace.ticks if not t.idle]
    assert all(t.tick * period <= 0.17 for t in fresh)  # chunk 0 was planned at tick 0
    assert [t.index for t in fresh] == list(range(9))  # the age guard cut chunk 0 at 9 of its 10 actions
    assert all(t.idle for t in trace.ticks[len(fresh):])  # after the last fresh action: holds only
    # a command on every tick, holds included (counted, not timed: a loaded 2-core machine stretches periods)
    assert len(env.times) == len(trace.ticks) and [t.tick for t in trace.ticks] == list(range(len(trace.ticks)))


def test_watchdog_validates_and_is_off_by_default():
    from xr0.runtime import Watchdog

    with pytest.raises(ValueError, match="stall_s"):
        Watchdog(stall_s=0)
    policy = TablePolicy(10)
    plain = AsyncExecutor(Env(2), policy, SimClock(1 / HZ, latency_s=ticks(2)), k=5).run(40)
    guarded = AsyncExecutor(Env(2), TablePolicy(10), SimClock(1 / HZ, latency_s=ticks(2)), k=5,
                            watchdog=Watchdog(stall_s=1.0, max_age_s=1.0)).run(40)
    assert plain.table() == guarded.table() and guarded.stop_reason is None  # generous limits change nothing
