"""Property-based fuzzing of the policy server's wire decoder and request validation (a few hundred frames here;
benchmarks/fuzz_server.py runs 10,000 against the real tiny policy)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from fuzz_payloads import frames, send
from hypothesis import HealthCheck, given, settings
from test_server import FakePolicy, make_obs, raw_conn

from xr0.runtime import wire
from xr0.runtime.obs_maps import ObsMap
from xr0.runtime.server import PolicyServer


def openpi_obs(**over) -> dict:
    """make_obs() in openpi's LIBERO-example keys (xr0 serve --obs-map openpi-libero)."""
    obs = make_obs()
    cams = list(obs["images"])
    out = {"observation/image": obs["images"][cams[0]], "observation/wrist_image": obs["images"][cams[1]],
           "observation/state": obs["state"], "prompt": obs["prompt"]}
    out.update(over)
    return out


@pytest.mark.parametrize("mapped", [False, True], ids=["xr0-keys", "openpi-keys"])
def test_hostile_frames_get_an_error_or_a_chunk_and_the_server_keeps_serving(mapped):
    """The same guarantees with --obs-map openpi-libero: every error names the client's field."""
    obs_map = ObsMap.load("openpi-libero") if mapped else None
    valid_obs = openpi_obs(seed=11) if mapped else make_obs(seed=11)  # seeded: unseeded requests draw fresh seeds
    server = PolicyServer(FakePolicy(), port=0, max_message_bytes=256 * 1024, obs_map=obs_map).start()
    try:
        ws, _ = raw_conn(server.port)
        valid = wire.packb(valid_obs)
        _, before = send(ws, valid)
        seen = collections.Counter()

        @settings(max_examples=300, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(frames(valid_obs))
        def one(frame):
            kind, payload = frame
            outcome, reply = send(ws, payload)
            if outcome == "error":
                assert reply["type"] in ("decode_error", "invalid_request"), reply
                if reply["type"] == "invalid_request" and "must be a msgpack map" not in reply["message"] \
                        and "expected a map" not in reply["message"]:
                    assert reply.get("field"), reply  # a bad field is named
            seen[kind, outcome] += 1

        one()
        _, after = send(ws, valid)
        np.testing.assert_array_equal(before["actions"], after["actions"])  # same chunk as before the run
        assert sum(seen.values()) == 300
        assert {k for k, _ in seen} >= {"structure", "bytes", "truncated", "ndarray", "mutated"}
        assert any(outcome == "chunk" for _, outcome in seen)  # some mutations are still valid requests
        ws.close()
    finally:
        server.stop()


def test_an_unknown_field_with_an_empty_name_is_still_named():
    """Found by benchmarks/fuzz_server.py: {'': ...} used to come back with an empty field name."""
    from xr0.runtime.requests import RequestError, validate_observation

    meta = FakePolicy().metadata()
    for key, named in (("", "''"), (" ", "' '"), ("extra", "extra")):
        try:
            validate_observation({**make_obs(), key: 1}, meta)
        except RequestError as e:
            assert e.field == named and "unknown field" in e.message
        else:
            raise AssertionError(f"{key!r} was accepted")


def test_a_policy_not_trained_with_prefixes_takes_only_a_guided_prefix():
    """max_prefix 0 (a release folder, a post-sync run): a bare action_prefix is refused and says why; the same
    prefix with prefix_weights (RTC guidance) is accepted."""
    from xr0.runtime.requests import RequestError, validate_observation

    meta = {**FakePolicy().metadata(), "max_prefix": 0}
    prefix = np.zeros((3, meta["action_dim"]), np.float32)
    try:
        validate_observation({**make_obs(), "action_prefix": prefix}, meta)
    except RequestError as e:
        assert e.field == "action_prefix" and "not trained with action prefixes" in e.message
    else:
        raise AssertionError("a bare prefix was accepted")
    obs = validate_observation({**make_obs(), "action_prefix": prefix, "prefix_weights": np.ones(3, np.float32)}, meta)
    assert obs is not None
