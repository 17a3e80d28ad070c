"""MetaWorld path smoke: expert demos -> LeRobot v3 dataset -> a few training steps -> evaluation under latency."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

from xr0.data.lerobot_v3 import LeRobotV3Dataset, view_title
from xr0.sim.metaworld_data import episode_counts, generate  # noqa: E402
from xr0.sim.metaworld_eval import checkpoint_setup, evaluate, load_policy, make_env, render_view  # noqa: E402
from xr0.sim.reactivity import copying_index, expert_chunk, reactivity  # noqa: E402
from xr0.sim.export import export  # noqa: E402
from xr0.sim.metaworld import (CAMERAS, DEFAULT_GOAL_MARKER_RADIUS, DEFAULT_ORIENTATION,  # noqa: E402
                               HAND_START_RANGE, STOCK_GOAL_MARKER_RADIUS, MetaWorldEnv)

TASKS = ["reach-v3", "handle-press-v3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "data"
    summary = generate(TASKS, episodes=2, out=out, image_size=64, max_ticks=80, seed=0)
    return out, summary


def test_demos_keep_only_what_the_robot_knows(dataset):
    out, summary = dataset
    assert all(t["expert_success"] == 1.0 and t["kept"] == 2 for t in summary["tasks"].values())
    ds = LeRobotV3Dataset(out, chunk_len=10)
    assert len(ds) == summary["frames"]
    sample = ds[0]
    assert sample["state"].shape == (4,) and sample["actions"].shape == (10, 4)
    # LeRobot-style keys (observation.images.base_view), read back as the prompt's view titles by the trainer
    assert set(sample["images"]) == {"base_view", "top_view"} and sample["images"]["base_view"].shape == (64, 64, 3)
    assert {view_title(c) for c in sample["images"]} == set(CAMERAS)
    # state = hand xyz + gripper opening of the env at reset (same placement seed), nothing about objects
    env = MetaWorldEnv("reach-v3", seed=0, image_size=(64, 64))
    try:
        np.testing.assert_allclose(sample["state"], env.state(), atol=1e-5)
        assert sample["instruction"] == env.instruction
        upright = env.render(CAMERAS["Base View"])  # corner is rolled: upright = the raw image turned by 180 degrees
        assert np.array_equal(upright, env._renderer.render()[::-1, ::-1])
    finally:
        env.close()


def test_train_then_evaluate_sync_vs_async(dataset, tmp_path):
    import argparse

    from xr0.train.cli import add_arguments, run

    data, _ = dataset
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = ["--recipe", "post-async", "--preset", "tiny", "--data", str(data), "--robot-type", "metaworld",
             "--steps", "3", "--batch-size", "2", "--no-progress", "--save-every", "3"]
    # the model may see the 64 x 64 renders larger (finer vision tokens); sizes must be multiples of 32
    assert run(parser.parse_args(flags + ["--out", str(tmp_path / "bad"), "--image-size", "100"])) == 2
    assert run(parser.parse_args(flags + ["--out", str(tmp_path / "run"), "--image-size", "96"])) == 0
    policy = load_policy(str(tmp_path / "run"), None)
    assert policy.config.control_hz == 40.0  # the dataset's frame rate
    assert policy.config.image_size == (96, 96)
    results = {}
    for executor in ("sync", "async"):
        results[executor], traces = evaluate(policy, TASKS, episodes=1, executor=executor, latency_ms=100.0,
                                             max_ticks=25, progress=False, image_size=(64, 64))
    for r in results.values():
        assert {"success_rate", "per_task", "episodes", "mean_time_to_success_s", "idle_fraction",
                "boundary_discontinuity"} <= set(r)
        assert r["episodes"] == 2 and set(r["per_task"]) == set(TASKS)
        json.dumps(r)
    # 100 ms at 40 Hz = 4 ticks: sync idles 4 of every 4 + (T - k) ticks, async keeps moving
    T = policy.config.chunk_len
    assert results["async"]["idle_fraction"] == 0.0
    assert results["sync"]["idle_fraction"] == pytest.approx(4 / (4 + T - T // 2), abs=0.06)
    # shipping: the checkpoint carries the tasks, cameras, orientation and render size of its data, and evaluation
    # renders that way
    export(str(tmp_path / "run"), str(data), dest=tmp_path / "shipped")
    setup = checkpoint_setup(str(tmp_path / "shipped"))
    assert setup == {"tasks": TASKS, "cameras": CAMERAS, "orientation": DEFAULT_ORIENTATION, "image_size": (64, 64),
                     "goal_marker_radius": DEFAULT_GOAL_MARKER_RADIUS, "goal_marker_color": None}
    env = make_env(policy, "reach-v3", 0, **render_view(setup))
    try:
        assert env.observe()["images"]["Top View"].shape == (64, 64, 3)
        assert env.sim.model.site("goal").size[0] == DEFAULT_GOAL_MARKER_RADIUS
    finally:
        env.close()
    # a checkpoint shipped before the marker was enlarged is evaluated with MetaWorld's own marker
    saved = json.loads((tmp_path / "shipped" / "metaworld.json").read_text())
    del saved["goal_marker_radius"]
    (tmp_path / "shipped" / "metaworld.json").write_text(json.dumps(saved))
    assert checkpoint_setup(str(tmp_path / "shipped"))["goal_marker_radius"] == STOCK_GOAL_MARKER_RADIUS
    saved["goal_marker_color"] = "mauve"  # a colour this version cannot draw is named, not guessed
    (tmp_path / "shipped" / "metaworld.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="goal_marker_color"):
        checkpoint_setup(str(tmp_path / "shipped"))
    (tmp_path / "shipped" / "metaworld.json").write_text("{")
    with pytest.raises(ValueError, match="metaworld.json"):
        checkpoint_setup(str(tmp_path / "shipped"))


# --------------------------------------------------------------------------- observation contract (fast, no model)


def _project(env, camera, point, h, w):
    """Pinhole projection with MuJoCo's camera frame (x right, y up, looking along -z): (col, row), row 0 on top."""
    cam = env.sim.data.camera(camera)
    rot = cam.xmat.reshape(3, 3)
    q = rot.T @ (np.asarray(point) - cam.xpos)
    f = (h / 2) / np.tan(np.deg2rad(env.sim.model.camera(camera).fovy[0]) / 2)
    return w / 2 + f * q[0] / -q[2], h / 2 - f * q[1] / -q[2]


def _geom_in_raw_render(env, camera, body):
    """(pixel centroid, world centre) of `body`'s most visible geom in the raw render: a fact about mujoco.Renderer."""
    import mujoco

    r, model = env._renderer, env.sim.model
    r.enable_segmentation_rendering()
    try:
        r.update_scene(env.sim.data, camera=camera)
        seg = r.render()
    finally:
        r.disable_segmentation_rendering()
    is_geom = seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM
    geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body(body).id]
    counts = [np.sum(is_geom & (seg[..., 0] == g)) for g in geoms]
    geom = geoms[int(np.argmax(counts))]
    rows, cols = np.nonzero(is_geom & (seg[..., 0] == geom))
    assert len(rows) > 30, f"{body} hardly visible from {camera}"
    return (cols.mean(), rows.mean()), env.sim.data.geom_xpos[geom]


def test_state_is_only_hand_position_and_gripper():
    env = MetaWorldEnv("pick-place-v3", seed=0, image_size=(32, 32))
    try:
        for _ in range(15):  # move and close the gripper a bit so the numbers are not the reset defaults
            env.act(env.expert_action())
        obs = env.observe()
        assert set(obs) == {"images", "state", "prompt"} and obs["prompt"] == "pick up the puck and place it at the goal"
        sim = env.sim
        fingers = np.linalg.norm(sim.data.body("rightclaw").xpos - sim.data.body("leftclaw").xpos)
        expected = np.r_[sim.get_endeff_pos(), np.clip(fingers / 0.1, 0, 1)]
        assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
        np.testing.assert_allclose(obs["state"], expected, atol=1e-5)
        assert not np.allclose(obs["state"][:3], sim._get_pos_objects()[:3], atol=1e-3)  # no object position
    finally:
        env.close()


def test_raw_render_is_top_down_and_upright_mode_puts_world_up_on_top():
    env = MetaWorldEnv("reach-v3", seed=0, image_size=(96, 96), orientation="upright")
    try:
        for camera in ("corner", "corner3", "gripperPOV", "topview"):
            # mujoco.Renderer already returns rows top-down: the pad is where the pinhole model says.
            body = {"corner": "right_l4", "corner3": "right_l4", "gripperPOV": "leftpad",
                    "topview": "right_l4"}[camera]  # seen by each
            (col, row), centre = _geom_in_raw_render(env, camera, body)
            pcol, prow = _project(env, camera, centre, 96, 96)
            assert abs(col - pcol) < 8 and abs(row - prow) < 8, (camera, (col, row), (pcol, prow))
            # upright: for the corner camera a point 15 cm above the table shows above it; for the downward-looking
            # wrist and top cameras "up" is "farther ahead on the table"
            pair = {"corner": ([0, 0.7, 0.0], [0, 0.7, 0.15]), "corner3": ([0, 0.7, 0.0], [0, 0.7, 0.15]),
                    "gripperPOV": ([0, 0.7, 0.0], [0, 0.9, 0.0]),
                    "topview": ([0, 0.6, 0.0], [0, 0.8, 0.0])}[camera]
            rolled = env.camera_rolled(camera)
            rows = [_project(env, camera, p, 96, 96)[1] for p in pair]
            if rolled:  # turned by 180 degrees
                rows = [95 - r for r in rows]
            assert rows[1] < rows[0], camera
            env._renderer.update_scene(env.sim.data, camera=camera)
            raw = env._renderer.render()
            turned = env.render(camera)
            np.testing.assert_array_equal(turned, raw[::-1, ::-1] if rolled else raw)  # a rotation, never a mirror
        assert env.camera_rolled("corner") and env.camera_rolled("corner3") and not env.camera_rolled("gripperPOV")
    finally:
        env.close()


def test_bad_camera_orientation_and_horizon_are_named():
    with pytest.raises(ValueError, match="orientation"):
        MetaWorldEnv("reach-v3", orientation="sideways")
    with pytest.raises(ValueError, match="nocam"):
        MetaWorldEnv("reach-v3", cameras={"Base View": "nocam"})
    with pytest.raises(ValueError, match="max-steps"):
        generate(["reach-v3"], episodes=1, out="/nonexistent/never-written", max_ticks=10_000)


def test_goal_marker_is_drawn_larger_and_only_drawn():
    """The enlarged marker covers about 4x the pixels of MetaWorld's 2-cm sphere (the radius doubles) and changes
    nothing the simulator computes: the same actions give the same states."""
    def red_pixels(img):
        img = img.astype(int)
        return int(((img[..., 0] > 150) & (img[..., 1] < 60) & (img[..., 2] < 60)).sum())

    counts, states = {}, {}
    for radius in (STOCK_GOAL_MARKER_RADIUS, DEFAULT_GOAL_MARKER_RADIUS):
        env = MetaWorldEnv("reach-v3", seed=0, image_size=(128, 128), goal_marker_radius=radius)
        try:
            counts[radius] = red_pixels(env.render("topview")[:48])  # the goal's strip of the table, no arm
            for _ in range(5):
                env.act(np.array([0.5, 0.5, 0.0, 0.0]))
            states[radius] = env.state()
        finally:
            env.close()
    assert counts[STOCK_GOAL_MARKER_RADIUS] >= 4
    assert 2.5 < counts[DEFAULT_GOAL_MARKER_RADIUS] / counts[STOCK_GOAL_MARKER_RADIUS] < 6, counts
    np.testing.assert_array_equal(states[STOCK_GOAL_MARKER_RADIUS], states[DEFAULT_GOAL_MARKER_RADIUS])
    with pytest.raises(ValueError, match="goal_marker_radius"):
        MetaWorldEnv("reach-v3", goal_marker_radius=0.0)


def test_goal_marker_color_is_only_drawn_and_named():
    """`goal_marker_color="green"` turns reach's red goal (the arm's colour) green in the image, says so in the
    instruction, and changes nothing the simulator computes."""
    def colour_pixels(img):
        img = img.astype(int)
        red = (img[..., 0] > 150) & (img[..., 1] < 60) & (img[..., 2] < 60)
        green = (img[..., 1] > 150) & (img[..., 0] < 60) & (img[..., 2] < 60)
        return int(red.sum()), int(green.sum())

    seen, states, prompts = {}, {}, {}
    for color in (None, "green"):
        env = MetaWorldEnv("reach-v3", seed=0, image_size=(128, 128), goal_marker_color=color)
        try:
            seen[color] = colour_pixels(env.render("topview")[:48])  # the goal's strip of the table, no arm
            prompts[color] = env.observe()["prompt"]
            for _ in range(5):
                env.act(np.array([0.5, 0.5, 0.0, 0.0]))
            states[color] = env.state()
        finally:
            env.close()
    assert seen[None][0] >= 20 and seen[None][1] == 0, seen
    assert seen["green"][1] >= 20 and seen[None][0] - seen["green"][0] >= 0.8 * seen["green"][1], seen  # red -> green
    assert prompts == {None: "reach the red target", "green": "reach the green target"}
    np.testing.assert_array_equal(states[None], states["green"])
    with pytest.raises(ValueError, match="goal_marker_color"):
        MetaWorldEnv("reach-v3", goal_marker_color="mauve")


@pytest.mark.parametrize("placements", ["fresh", "mt1"])
def test_first_frame_shows_the_new_placement(placements):
    """The frame `reset()` returns is the scene of the new episode: recomputing the world poses changes no pixel and
    the reach marker is drawn at the goal (MetaWorld's reset alone left drawers, windows and the marker where the
    previous episode had them until the first step)."""
    import mujoco

    for task in ("reach-v3", "window-open-v3"):
        env = MetaWorldEnv(task, seed=0, image_size=(64, 64), placements=placements)
        try:
            for _ in range(2):
                shown = env.reset()["images"]
                state = env.state().copy()
                mujoco.mj_forward(env.sim.model, env.sim.data)
                for view, img in env.observe()["images"].items():
                    np.testing.assert_array_equal(shown[view], img, err_msg=f"{task} {placements} {view}")
                np.testing.assert_array_equal(env.state(), state)
                if task == "reach-v3":
                    np.testing.assert_allclose(env.sim.data.site("goal").xpos, env.goal(), atol=1e-9)
        finally:
            env.close()


def test_episode_counts_per_task():
    tasks = ["reach-v3", "drawer-open-v3"]
    assert episode_counts(40, tasks) == {"reach-v3": 40, "drawer-open-v3": 40}
    assert episode_counts("40,reach-v3=100", tasks) == {"reach-v3": 100, "drawer-open-v3": 40}
    for bad, message in [("reach-v3=3", "no count for .'drawer-open-v3'"), ("x", "not N or TASK=N"),
                         ("40,push-v3=2", "'push-v3' is not one of the tasks"), ("0", "must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            episode_counts(bad, tasks)


def test_evaluation_placements_are_unseen():
    """MT1 draws each reset from 50 placements fixed by the seed; eval (seed 1000) shares none with data (seed 0)."""
    def placements(seed, n):
        env = MetaWorldEnv("reach-v3", seed=seed, image_size=(32, 32))
        try:
            out = []
            for _ in range(n):
                env.reset()
                out.append(np.r_[env.goal(), env.sim.obj_init_pos])
            return np.array(out)
        finally:
            env.close()

    train, test = placements(0, 30), placements(1000, 10)
    assert len(np.unique(train.round(6), axis=0)) > 15  # the data cover many placements
    dists = np.linalg.norm(train[:, None] - test[None], axis=-1)
    assert dists.min() > 1e-4


def test_fresh_placements_are_all_new_seeded_and_solvable(tmp_path):
    """--placements fresh: every reset a new placement (MT1 repeats its 50), the same sequence for the same seed."""
    def goals(placements, seed=0, n=12):
        env = MetaWorldEnv("reach-v3", seed=seed, image_size=(32, 32), placements=placements)
        try:
            return np.array([env.reset() and env.goal() for _ in range(n)])
        finally:
            env.close()

    fresh = goals("fresh")
    assert len(np.unique(fresh.round(6), axis=0)) == len(fresh)
    np.testing.assert_array_equal(fresh, goals("fresh"))
    assert np.abs(fresh - goals("fresh", seed=1)).max() > 1e-3
    assert np.linalg.norm(fresh[:, None] - goals("mt1", seed=1000)[None], axis=-1).min() > 1e-4
    summary = generate(["reach-v3"], 2, tmp_path / "fresh", image_size=32, max_ticks=80, placements="fresh")
    assert summary["tasks"]["reach-v3"]["kept"] == 2
    assert json.loads((tmp_path / "fresh" / "meta" / "xr0_metaworld.json").read_text())["placements"] == "fresh"
    with pytest.raises(ValueError, match="placements"):
        MetaWorldEnv("reach-v3", placements="random")


def test_action_noise_leaves_the_path_but_records_the_expert(tmp_path):
    """DART-style demos: the executed arm path differs from the clean one, the labels are the expert's own."""
    clean = generate(["reach-v3"], 1, tmp_path / "clean", image_size=32, max_ticks=60, seed=0)
    noisy = generate(["reach-v3"], 1, tmp_path / "noisy", image_size=32, max_ticks=60, seed=0, action_noise=0.5)
    assert noisy["tasks"]["reach-v3"]["kept"] == 1 and clean["tasks"]["reach-v3"]["kept"] == 1
    a, b = LeRobotV3Dataset(tmp_path / "clean", chunk_len=4), LeRobotV3Dataset(tmp_path / "noisy", chunk_len=4)
    assert np.allclose(a[0]["state"], b[0]["state"])  # same placement, same start
    assert np.abs(a[5]["state"] - b[5]["state"]).max() > 1e-3  # noise moved the arm off the clean path
    env = MetaWorldEnv("reach-v3", seed=0, image_size=(32, 32))
    try:  # the recorded label at frame 0 is the expert's clean action (nothing executed yet)
        env.reset()
        np.testing.assert_allclose(b[0]["actions"][0], env.expert_action(), atol=1e-6)
    finally:
        env.close()
    assert json.loads((tmp_path / "noisy" / "meta" / "xr0_metaworld.json").read_text())["action_noise"] == 0.5
    with pytest.raises(ValueError, match="action-noise"):
        generate(["reach-v3"], 1, tmp_path / "bad", action_noise=2.0)


def test_reactivity_oracle_times_the_executor():
    """With the goal-reading oracle as chunk source the reaction delay is the executor's alone: sync at k = 10 and
    4 ticks of latency next infers after the move at tick 24 (the move is at 12), so it turns at 24 + 4 = 28."""
    policy = load_policy(None, "tiny")  # only T = 20 and 40 Hz are used
    sync, asy = (reactivity(policy, ex, 100.0, episodes=2, chunker="expert") for ex in ("sync", "async"))
    for r in (sync, asy):
        assert r["reacted"] == 2 and r["success_after_move"] == 1.0, r
    assert sync["reaction_ticks_mean"] == 15.5  # moves at ticks 12 and 13: 28 - 12 and 28 - 13
    assert asy["reaction_ticks_mean"] < sync["reaction_ticks_mean"]
    # the oracle's own chunks follow the new target exactly: copying index 0 wherever the old plan differs
    for r in (sync, asy):
        assert r["copying_measured"] + r["copying_skipped"] == 2 and r["copying_measured"] >= 1, r
        assert abs(r["copying_index"]) < 1e-6, r
    button = reactivity(policy, "async", 100.0, episodes=2, chunker="expert", task="button-press-topdown-v3")
    assert button["reacted"] == 2 and button["success_after_move"] == 1.0, button
    with pytest.raises(ValueError, match="chunker"):
        reactivity(policy, chunker="oracle")
    with pytest.raises(ValueError, match="movable"):
        reactivity(policy, chunker="expert", task="drawer-open-v3")


def test_copying_index_reads_copy_versus_follow():
    old, oracle = np.zeros((4, 4)), np.ones((4, 4))
    assert copying_index(old, old, oracle) == (1.0, 1.0)  # the new chunk is the old plan
    assert copying_index(old, oracle, oracle) == (0.0, 1.0)  # it is what the target-reading expert does
    assert copying_index(old, 0.25 * oracle, oracle)[0] == pytest.approx(0.75)


def test_move_target_moves_button_and_goal_and_restarts_success():
    for task in ("reach-v3", "button-press-topdown-v3"):
        env = MetaWorldEnv(task, seed=0, image_size=(32, 32))
        try:
            before = env.target()
            view = env.render("topview")
            env.success = True
            after = env.move_target()
            assert not env.success and abs(after[0] - before[0]) >= 0.1 - 1e-9, (task, before, after)
            assert not np.array_equal(env.render("topview"), view), task  # drawn at once, before any step
            np.testing.assert_allclose(after[1:], before[1:], atol=1e-3)  # sideways only
            env.act(np.zeros(4))  # the expert's observation follows: its chunk heads for the new target
            chunk = expert_chunk(env, 10)
            to_target = after - env.state()[:3]
            assert chunk[0, :3] @ to_target > 0, task
        finally:
            env.close()
    with pytest.raises(ValueError, match="movable"):
        MetaWorldEnv("drawer-open-v3", seed=0, image_size=(32, 32)).target()


def test_demonstrations_with_moved_targets(tmp_path):
    """--move-targets 1: every reach episode moves its goal once (MOVE_TICKS), the recorded goal jumps with it, the
    expert turns and still succeeds; random_target stays in the task's range, >= 8 cm from the old target."""
    env = MetaWorldEnv("reach-v3", seed=0, image_size=(32, 32))
    try:
        rng = np.random.default_rng(0)
        for _ in range(5):
            env.reset()
            to = env.random_target(rng)
            assert np.linalg.norm(to - env.target()) >= 0.08 and env.sim.goal_space.contains(to.astype(np.float64))
            assert np.allclose(env.move_target(to=to), to) and np.allclose(env._obs[36:39], to)  # the expert sees it
    finally:
        env.close()
    summary = generate(["reach-v3"], 2, tmp_path / "moved", image_size=32, max_ticks=120, move_targets=1.0)
    assert summary["tasks"]["reach-v3"]["moved"] == 2 and summary["tasks"]["reach-v3"]["kept"] == 2
    ds = LeRobotV3Dataset(tmp_path / "moved", chunk_len=4)
    goals = np.stack([ds[i]["env_state"][3:] for i in range(len(ds))])
    jumps = np.linalg.norm(np.diff(goals, axis=0), axis=1)
    assert (jumps > 0.05).sum() == 3  # one move per episode, plus the change of episode
    assert json.loads((tmp_path / "moved" / "meta" / "xr0_metaworld.json").read_text())["move_targets"] == 1.0
    with pytest.raises(ValueError, match="move-targets"):
        generate(["reach-v3"], 1, tmp_path / "bad", move_targets=1.5)


def test_demonstrations_from_random_hand_starts(tmp_path):
    """--hand-starts 1: every reach episode starts the hand inside HAND_START_RANGE, not at the task's own start
    (the goal placement is drawn as usual), and the expert still succeeds; the own start is kept for later resets,
    and a task whose expert assumes its own start refuses one."""
    env = MetaWorldEnv("reach-v3", seed=0, image_size=(32, 32))
    own = env.sim.hand_init_pos.copy()  # MetaWorld's own start, (0, 0.6, 0.2)
    try:
        start = np.array([0.1, 0.9, 0.1])
        assert np.linalg.norm(env.reset(hand_start=start)["state"][:3] - start) < 0.04  # MetaWorld's reset gets close
        assert np.linalg.norm(env.reset()["state"][:3] - own) < 0.01
    finally:
        env.close()
    summary = generate(["reach-v3"], 3, tmp_path / "starts", image_size=32, max_ticks=120, hand_starts=1.0)
    assert summary["tasks"]["reach-v3"]["hand_starts"] == 3 and summary["tasks"]["reach-v3"]["kept"] == 3
    ds = LeRobotV3Dataset(tmp_path / "starts", chunk_len=4)
    firsts = np.stack([ds[i]["state"][:3] for i in range(len(ds)) if ds[i]["frame"] == 0])
    low, high = (np.array(b) for b in HAND_START_RANGE)
    assert len(firsts) == 3 and np.all(np.linalg.norm(firsts - own, axis=1) > 0.04)
    assert np.all(firsts > low - 0.04) and np.all(firsts < high + 0.04)
    assert json.loads((tmp_path / "starts" / "meta" / "xr0_metaworld.json").read_text())["hand_starts"] == 1.0
    with pytest.raises(ValueError, match="hand-starts"):
        generate(["reach-v3"], 1, tmp_path / "bad", hand_starts=-0.1)
    env = MetaWorldEnv("drawer-open-v3", seed=0, image_size=(32, 32))
    try:
        with pytest.raises(ValueError, match="hand_start"):
            env.reset(hand_start=own)
    finally:
        env.close()


def test_cli_data_and_random_policy_eval(tmp_path, capsys):
    from xr0.cli import main

    out = tmp_path / "d"
    assert main(["data", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(out),
                 "--image-size", "32", "--max-steps", "60", "--orientation", "upright"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks"]["reach-v3"]["kept"] == 1 and summary["orientation"] == "upright"
    sidecar = json.loads((out / "meta" / "xr0_metaworld.json").read_text())
    assert sidecar["orientation"] == "upright" and sidecar["cameras"] == CAMERAS and sidecar["control_hz"] == 40.0
    assert sidecar["episodes"] == {"reach-v3": 1} and sidecar["goal_marker_radius"] == DEFAULT_GOAL_MARKER_RADIUS
    assert sidecar["goal_marker_color"] is None and sidecar["tasks"] == {"reach-v3": "reach the red target"}
    assert LeRobotV3Dataset(out, chunk_len=4).state_dim == 4
    # --cameras: another pair is rendered and recorded (so evaluation renders the same); bad ones are named, nothing
    # is written
    old = tmp_path / "old"
    assert main(["data", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(old), "--image-size",
                 "32", "--max-steps", "60", "--cameras", "corner3,topview"]) == 0
    capsys.readouterr()
    assert json.loads((old / "meta" / "xr0_metaworld.json").read_text())["cameras"] == {"Base View": "corner3",
                                                                                         "Top View": "topview"}
    for bad, named in (("corner", "needs 2"), ("cornr,topview", "cornr")):
        assert main(["data", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(tmp_path / "x"),
                     "--image-size", "32", "--cameras", bad]) == 2
        assert named in capsys.readouterr().err and not (tmp_path / "x").exists()

    videos = tmp_path / "v"
    assert main(["eval", "metaworld", "--preset", "tiny", "--tasks", "reach-v3", "--episodes", "1",
                 "--max-ticks", "12", "--executor", "async", "--latency-ms", "100", "--video", str(videos),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("success_rate", "per_task", "episodes", "mean_time_to_success_s", "idle_fraction",
                "boundary_discontinuity", "inference_wall_ms_p50", "inference_wall_ms_p95"):
        assert key in r, key
    assert r["episodes"] == 1 and 0.0 <= r["success_rate"] <= 1.0 and r["per_task"].keys() == {"reach-v3"}
    assert r["idle_fraction"] == 0.0  # 100 ms at 40 Hz = 4 ticks, covered by the prefix
    assert 0 < r["inference_wall_ms_p50"] <= r["inference_wall_ms_p95"]
    assert (videos / "reach-v3_ep00_async.mp4").stat().st_size > 0
    assert (videos / "reach-v3_ep00_async_actions.png").stat().st_size > 0
