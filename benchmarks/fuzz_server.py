"""Fuzz the real `xr0 serve` stack (PolicyServer + the tiny XR0Policy) with hostile msgpack frames; one JSON line.

    python benchmarks/fuzz_server.py [--frames 10000] [--seed 0]

Every frame must get an error reply (naming the field when a field is wrong) or a valid chunk; the server must
stay up, and a valid request sent before and after the run must get the same chunk. Frames come from
tests/fuzz_payloads.py (hypothesis), over one websocket connection (a new one if the server closes it).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import resource
import sys
import time

import numpy as np
from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from fuzz_payloads import frames, send  # noqa: E402
from test_server import raw_conn  # noqa: E402

from xr0 import XR0Policy  # noqa: E402
from xr0.runtime import wire  # noqa: E402
from xr0.runtime.server import PolicyServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    policy = XR0Policy.from_preset("tiny")
    meta = policy.metadata()
    h, w = meta["image_size"]
    valid_obs = {"images": {c: np.full((h, w, 3), 40 * i, np.uint8) for i, c in enumerate(meta["cameras"])},
                 "state": np.linspace(-1, 1, meta["state_dim"]).astype(np.float32), "prompt": "pick up the cube"}
    server = PolicyServer(policy, port=0, max_message_bytes=1 << 20).start()
    t0 = time.perf_counter()
    seen: collections.Counter = collections.Counter()
    unnamed: list[str] = []
    conn = {"ws": raw_conn(server.port)[0], "reconnects": 0}
    try:
        _, before = send(conn["ws"], wire.packb(valid_obs))

        @seed(args.seed)
        @settings(max_examples=args.frames, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(frames(valid_obs))
        def one(frame):
            kind, payload = frame
            try:
                outcome, reply = send(conn["ws"], payload)
            except Exception:  # the server closed this connection: count it, open another
                conn["ws"], conn["reconnects"] = raw_conn(server.port)[0], conn["reconnects"] + 1
                seen[kind, "closed"] += 1
                return
            if outcome == "error" and reply["type"] == "invalid_request" and not reply.get("field") \
                    and "must be a msgpack map" not in reply["message"]:
                unnamed.append(reply["message"][:120])
            seen[kind, outcome if outcome == "chunk" else reply["type"]] += 1

        one()
        _, after = send(conn["ws"], wire.packb(valid_obs))
        same = bool(np.array_equal(before["actions"], after["actions"]))
    finally:
        conn["ws"].close()
        server.stop()
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, outcome), n in sorted(seen.items()):
        by_kind.setdefault(kind, {})[outcome] = n
    print(json.dumps({"frames": sum(seen.values()), "by_kind": by_kind, "reconnects": conn["reconnects"],
                      "invalid_request_without_field": len(unnamed), "examples_without_field": unnamed[:5],
                      "same_chunk_before_and_after": same, "max_rss_mb": resource.getrusage(
                          resource.RUSAGE_SELF).ru_maxrss // 1024, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
