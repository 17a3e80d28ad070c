"""`make demo`: the embedded MetaWorld policy under asynchronous execution with a simulated 100 ms latency."""

from __future__ import annotations

import json
import pathlib
import time


def metaworld_demo(args) -> int:
    from ..assets import embedded_checkpoint
    from .metaworld_eval import checkpoint_setup, evaluate, load_policy, print_table, render_view
    from .metaworld import ACTION_NAMES, require_metaworld
    from .plot import plot_actions

    try:
        path = embedded_checkpoint()
        require_metaworld()
    except (FileNotFoundError, ImportError) as e:
        print(f"(MetaWorld demo unavailable: {e}; running the synthetic demo)")
        return -1
    out = pathlib.Path(getattr(args, "out", None) or "runs/demo")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    policy = load_policy("embedded", None)
    setup = checkpoint_setup("embedded")  # the tasks, cameras and orientation it was trained with
    tasks = setup["tasks"]
    print(f"embedded checkpoint {path} ({policy.config.name} preset, T={policy.config.chunk_len} at "
          f"{policy.config.control_hz:g} Hz); tasks: {', '.join(tasks)}")
    result, traces = evaluate(policy, tasks, episodes=args.episodes, executor="async", latency_ms=100.0,
                              seed=args.seed, video_dir=out / "videos", **render_view(setup))
    print_table(result)
    hz = result["control_hz"]
    fresh_hz = hz * (1 - result["idle_fraction"])
    print(f"control rate held: {fresh_hz:.1f} of {hz:g} Hz with a fresh action (idle {result['idle_fraction']:.1%}) "
          f"while each chunk took 100 ms of simulated inference")
    print(f"real inference latency on this machine: p50 {result['inference_wall_ms_p50']:.0f} ms, "
          f"p95 {result['inference_wall_ms_p95']:.0f} ms")
    (task, ep), trace = next(iter(traces.items()))
    plot = out / "actions.png"
    plot_actions(trace, plot, list(ACTION_NAMES), title=f"{task} episode {ep}: executed actions (async, 100 ms)")
    print(f"wrote {plot} and one video per episode in {out / 'videos'}")
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return 0
