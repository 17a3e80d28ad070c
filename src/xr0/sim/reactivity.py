"""Reactivity under simulated latency: the target moved mid-episode, per executor and chunk source.

The target (reach-v3's goal, button-press-topdown-v3's button; `MetaWorldEnv.move_target`) jumps across the table
at tick `move_at` + (episode mod PHASES), so the move falls at every phase of the execution cycle (10 ticks async,
14 sync at T = 20, k = 10 and 100 ms), while the hand is still on its way (`MOVE_AT`: before the button is reached,
where MetaWorld's expert, the oracle, would drag the hand across the box). Per episode:

- reaction: ticks from the move until the commanded xyz motion points at the new target (cosine >= 0.8);
- success after the move (success before it does not count);
- copying index λ of the first chunk planned from an observation that shows the moved target: its first actions
  after the committed prefix (rows p .. p+m) written as oracle + λ · (old plan − oracle), where the old plan is the
  previous chunk's continuation at the same times and the oracle is MetaWorld's scripted expert heading for the new
  target from where the prefix leaves the hand (`expert_chunk`). λ = 1: the new chunk copies the old plan; λ = 0:
  it does what the target-reading expert does. Measured only where the two differ (RMS gap >= `MIN_GAP`).

chunker "policy" asks the checkpoint for each chunk; "expert" is the oracle itself (`expert_chunk`; the policy
then only sets T and the control rate), the floor that isolates what the execution scheme costs.
"""

from __future__ import annotations

import numpy as np

from .common import ChunkPolicy
from .metaworld_eval import make_env, make_runner, sampling_seeds

COS_THRESHOLD = 0.8  # "turned toward the new target"
PHASES = 20  # consecutive move ticks, cycled over the episodes
MOVE_AT = {"reach-v3": 12, "button-press-topdown-v3": 6}  # the first move tick per task (default of `move_at`)
COPY_ROWS = 4  # m: post-prefix rows compared by the copying index
MIN_GAP = 0.1  # RMS difference (action units) between old plan and oracle below which λ is not measured


def expert_chunk(env, T: int, prefix: np.ndarray | None = None) -> np.ndarray:
    """MetaWorld's scripted expert rolled out for T ticks on a kinematic model of the hand (a tick moves it by the
    clipped xyz action · action_scale · ACTION_REPEAT) from the simulator's true state at call time: an oracle
    that reads the target. The rows of `prefix` (the committed prefix) are executed first."""
    from .metaworld import ACTION_DIM, ACTION_REPEAT

    obs = np.array(env._obs, dtype=np.float64)
    step = env.sim.action_scale * ACTION_REPEAT
    chunk = np.zeros((T, ACTION_DIM), dtype=np.float32)
    for i in range(T):
        if prefix is not None and i < len(prefix):
            chunk[i] = np.asarray(prefix[i])[:ACTION_DIM]
        else:
            chunk[i] = env.expert_action(obs)
        obs[:3] = obs[:3] + np.clip(chunk[i, :3], -1.0, 1.0) * step
    return chunk


def copying_index(old_plan: np.ndarray, new: np.ndarray, oracle: np.ndarray) -> tuple[float, float]:
    """(λ, gap) over the xyz of the compared rows: new ≈ oracle + λ · (old_plan − oracle); gap = RMS(old − oracle)."""
    d_old = (old_plan[:, :3] - oracle[:, :3]).astype(np.float64).ravel()
    d_new = (new[:, :3] - oracle[:, :3]).astype(np.float64).ravel()
    gap = float(np.sqrt(np.mean(d_old**2)))
    return (float(d_new @ d_old / (d_old @ d_old)) if gap > 0 else float("nan")), gap


class _TargetMover:
    """Wraps the env: at tick `at` the target moves; records the first tick the commanded motion points at it."""

    def __init__(self, env, at: int):
        self.env, self.at = env, at
        self.reaction_ticks, self.moved = None, False

    def observe(self):
        return self.env.observe()

    def act(self, action):
        if self.env.ticks == self.at:
            self.env.move_target()
            self.moved = True
        if self.moved and self.reaction_ticks is None:
            to_target = self.env.target() - self.env.state()[:3]
            move = np.asarray(action[:3], dtype=np.float64)
            cos = move @ to_target / (np.linalg.norm(move) * np.linalg.norm(to_target) + 1e-9)
            if cos >= COS_THRESHOLD:
                self.reaction_ticks = self.env.ticks - self.at
        self.env.act(action)


class _ChunkLog:
    """Wraps a chunk source; per call records the tick, the prefix length, where the new chunk starts in the old one,
    the chunk and the oracle's chunk from the same state (the executors call at trigger time on a SimClock)."""

    def __init__(self, infer, env, T: int):
        self.infer, self.env, self.T = infer, env, T
        self.runner = None  # set once the executor exists: its next_index is where the new chunk starts
        self.calls: list[dict] = []

    def __call__(self, obs, prefix, prefix_weights=None):
        chunk = np.asarray(self.infer(obs, prefix) if prefix_weights is None
                           else self.infer(obs, prefix, prefix_weights=prefix_weights), dtype=np.float64)
        self.calls.append({"tick": self.env.ticks, "p": 0 if prefix is None else len(prefix),
                           "start": self.runner.next_index if self.calls else 0, "chunk": chunk,
                           "oracle": expert_chunk(self.env, self.T, prefix)})
        return chunk

    def first_after(self, at: int) -> tuple[float, float] | None:
        """Copying index (λ, gap) of the first chunk planned from an observation taken after the move at tick `at`."""
        for before, call in zip(self.calls, self.calls[1:]):
            if call["tick"] > at:
                p, i0 = call["p"], call["start"]
                m = min(COPY_ROWS, self.T - p, self.T - i0 - p)
                if m < 1:
                    return None
                return copying_index(before["chunk"][i0 + p:i0 + p + m], call["chunk"][p:p + m],
                                     call["oracle"][p:p + m])
        return None


def _mean_se(values) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return None, None
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def reactivity(policy, executor: str = "async", latency_ms: float = 100.0, episodes: int = 5, seed: int = 4000,
               move_at: int | None = None, max_ticks: int = 150, orientation: str | None = None,
               cameras: dict[str, str] | None = None, k: int | None = None, chunker: str = "policy",
               image_size: tuple[int, int] | None = None, goal_marker_radius: float | None = None,
               goal_marker_color: str | None = None, task: str = "reach-v3") -> dict:
    """One cell of the probe (module docstring): `episodes` moved episodes of `task` with `executor`. Means come with
    their standard errors (`*_se`); reaction means are over the episodes that reacted."""
    from .metaworld import MOVABLE_TARGETS

    if chunker not in ("policy", "expert"):
        raise ValueError(f"chunker must be 'policy' or 'expert', got {chunker!r}")
    if task not in MOVABLE_TARGETS:
        raise ValueError(f"task must be one of {MOVABLE_TARGETS} (a movable target the probe can shift), got {task!r}")
    move_at = MOVE_AT[task] if move_at is None else move_at
    env = make_env(policy, task, seed, orientation, cameras, image_size, goal_marker_radius, goal_marker_color)
    hz, T = policy.config.control_hz, policy.config.chunk_len
    ticks, successes, lambdas, skipped = [], [], [], 0
    for ep in range(episodes):
        env.reset()
        at = move_at + ep % PHASES  # every phase of the execution cycle over the episodes
        mover = _TargetMover(env, at)
        if chunker == "expert":
            def infer(obs, prefix, prefix_weights=None):
                return expert_chunk(env, T, prefix)
        else:
            infer = ChunkPolicy(policy, None, policy.robot(None).action_dim, seed_of_call=sampling_seeds(seed, ep))
        log = _ChunkLog(infer, env, T)
        log.runner = make_runner(policy, executor, mover, log, latency_ms, k)
        log.runner.run(max_ticks, stop=lambda: mover.moved and env.success)  # success before the move goes on
        ticks.append(mover.reaction_ticks)
        successes.append(float(env.success))
        copy = log.first_after(at)
        if copy is not None and copy[1] >= MIN_GAP:
            lambdas.append(copy[0])
        else:
            skipped += 1
    env.close()
    reaction, reaction_se = _mean_se(ticks)
    success, success_se = _mean_se(successes)
    lam, lam_se = _mean_se(lambdas)
    return {"task": task, "executor": executor, "chunker": chunker, "latency_ms": latency_ms, "episodes": episodes,
            "reacted": sum(t is not None for t in ticks), "reaction_ticks_mean": reaction,
            "reaction_ticks_se": reaction_se, "reaction_s_mean": None if reaction is None else reaction / hz,
            "success_after_move": success, "success_after_move_se": success_se,
            "copying_index": lam, "copying_index_se": lam_se, "copying_measured": len(lambdas),
            "copying_skipped": skipped}
