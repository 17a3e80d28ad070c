"""Websocket policy server (``xr0 serve``).

What it shares with openpi's websocket protocol: binary msgpack frames with numpy arrays in openpi's msgpack-numpy
layout, a metadata map sent on connect, one reply map per request, errors as text frames, and the ``Authorization:
Api-Key <token>`` header. So openpi-client's ``WebsocketClientPolicy`` works unchanged (tests/test_serving.py):
its constructor reads the metadata (``get_server_metadata()``), ``infer()`` returns the reply map (``actions``,
``server_timing``, ``policy_timing``) and raises RuntimeError with the error's JSON on an error reply, and its
``api_key`` is accepted as the token. What differs: requests carry xr0's fields (below), or an openpi client's
observation keys only with ``--obs-map``; after an error the connection stays open.

Protocol (one websocket, binary msgpack frames, numpy arrays as in ``xr0.runtime.wire``):
  1. On connect the server sends a metadata map (cameras, image_size, state_dim, action_dim, chunk_len,
     control_hz, norm_stats_hash, protocol, max_message_bytes) of the default robot type (``robot_type``), and
     under ``robots`` the same fields for every robot type the checkpoint holds (each its own chunk length,
     cameras, dims; ``image_size`` null where the processor takes any size, as for release folders). If a token
     is configured and the client did not send ``Authorization: Api-Key <token>`` (or ``Bearer <token>``), the
     first frame is instead ``{"auth_required": True, ...}`` and the client must send ``{"token": "..."}``; the
     reply is the full metadata.
  2. Each request is an observation map ``{"images": {camera: HxWx3 uint8}, "state": (state_dim,),
     "prompt": str, "robot_type"?: str, "action_prefix"?: (p, action_dim), "prefix_weights"?: (p,), "steps"?: int,
     "seed"?: int}``; without ``robot_type`` the default one.
     With ``prefix_weights`` (in [0, 1]) the prefix is a soft target for inference-time RTC guidance and may
     be up to chunk_len long; without it, it is the trained clean prefix (at most max_prefix).
  3. Each reply is ``{"actions": (T, action_dim) float32, "seed": int, "server_timing": {"infer_ms", ...},
     "policy_timing": {"infer_ms"}}`` (a binary msgpack frame), or an error: a text frame holding the JSON
     ``{"error": {"type", "message", "field"}}`` (openpi's client raises RuntimeError on a text frame, with this
     text in its message; xr0's client parses it). After an error the connection stays usable.
     Without a ``seed`` each request draws a fresh one (``--seed-mode observation``: a hash of the request, so the
     same observation gives the same chunk); the reply says which seed was used.
  With ``--obs-map`` (xr0.runtime.obs_maps) requests may use an openpi client's observation keys instead.

Why it is built this way: the policy is not thread-safe and a GPU serves one batch at a time, so every
inference runs on one worker thread behind a bounded counter ("busy" beats an unbounded queue). All
input is validated before it reaches the model so a bad client gets a precise error instead of a
crash, and no untrusted byte is ever unpickled.

HTTP GET ``/healthz`` answers "OK"; GET ``/stats`` a JSON map of counts (open connections, requests pending,
totals of connections, chunks, refused requests and internal errors since start).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import collections
import hmac
import http
import ipaddress
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve

from xr0.checkpoints import resolve_checkpoint
from xr0.config import add_runtime_arguments, runtime_settings
from xr0.processing import checks
from xr0.processing.seeds import request_seed
from xr0.runtime import wire
from xr0.runtime.obs_maps import ObsMap
from xr0.runtime.requests import (REQUEST_FIELDS, Observation, RequestError, policy_metadata, request_robot,
                                  validate_observation)

logger = logging.getLogger(__name__)

PROTOCOL = "xr0-ws/1"
TOKEN_ENV = "XR0_SERVE_TOKEN"
SEED_MODES = ("random", "observation")  # a request without a seed: a fresh draw, or a hash of the request
TIMING_WINDOW = 1000  # GET /stats' latency percentiles cover the last this many chunks
MAX_AUTH_FAILURES = 3
AUTH_TIMEOUT_S = 10.0  # an unauthenticated socket gets this long per message, not the full idle timeout


# --------------------------------------------------------------------------------------------- server


class PolicyServer:
    """Serve ``policy.sample`` over websocket + msgpack. ``start()``/``stop()`` run it in a thread."""

    def __init__(
        self,
        policy: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        max_message_bytes: int = 8 * 2**20,
        idle_timeout_s: float = 300.0,
        max_queue: int = 8,
        max_connections: int = 32,
        max_prompt_chars: int = 2048,
        strict_image_size: bool = True,
        default_steps: int | None = None,
        robot_type: str | None = None,
        obs_map: ObsMap | None = None,
        seed_mode: str = "random",
    ):
        self.policy = policy
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._token = token.encode() if token else None
        self.max_message_bytes = int(max_message_bytes)
        self.idle_timeout_s = idle_timeout_s
        self.max_queue = max_queue
        self.max_connections = max_connections
        self.max_prompt_chars = max_prompt_chars
        self.strict_image_size = strict_image_size
        self.default_steps = default_steps
        self.policy_metadata = policy_metadata(policy, robot_type)
        if seed_mode not in SEED_MODES:
            raise ValueError(f"seed_mode must be one of {SEED_MODES}, got {seed_mode!r}")
        self.seed_mode = seed_mode
        self.obs_map = obs_map
        if obs_map is not None:
            for meta in (self.policy_metadata.get("robots") or {"": self.policy_metadata}).values():
                obs_map.check_cameras(list(meta["cameras"]))
        self._timings: collections.deque = collections.deque(maxlen=TIMING_WINDOW)  # (infer_ms, total_ms)
        self.metadata = {
            **self.policy_metadata,
            "protocol": PROTOCOL,
            "server": "xr0",
            "max_message_bytes": self.max_message_bytes,
            "request_fields": list(REQUEST_FIELDS),
            "seed_mode": seed_mode,
            **({"obs_map": obs_map.name} if obs_map is not None else {}),
        }
        self._pending = 0  # requests queued or running; touched only on the event loop
        self._connections = 0
        self._counts = {"connections_opened": 0, "chunks": 0, "refused": 0, "internal_errors": 0}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        if not _is_loopback(host) and self._token is None:
            logger.warning("serving on %s without a token: anyone who can reach this port can drive the robot", host)

    # ---- lifecycle

    def serve_forever(self) -> None:
        """Block serving until SIGINT/SIGTERM (when run in the main thread) or ``stop()``."""
        asyncio.run(self._main(install_signals=threading.current_thread() is threading.main_thread()))

    def start(self, timeout: float = 10.0) -> "PolicyServer":
        """Serve from a daemon thread; returns once the port is bound (``self.port`` is then set)."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._ready.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._thread_main, name="xr0-policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"policy server did not start within {timeout} s")
        if self._start_error is not None:
            self._thread = None
            raise RuntimeError(f"policy server failed to start: {self._start_error}") from self._start_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close all connections and the listening socket; waits for the server thread."""
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass  # loop already closed
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stats(self) -> dict:
        """Open connections, requests queued or running, totals since start, and the median / p95 of the policy's
        time and of the server's time per chunk (receipt to reply) over the last TIMING_WINDOW chunks (GET /stats
        serves this)."""
        out = {"connections": self._connections, "pending": self._pending, **self._counts}
        if self._timings:
            t = np.asarray(self._timings)
            out.update(infer_ms_p50=float(np.percentile(t[:, 0], 50)), infer_ms_p95=float(np.percentile(t[:, 0], 95)),
                       server_ms_p50=float(np.percentile(t[:, 1], 50)), server_ms_p95=float(np.percentile(t[:, 1], 95)))
        return out

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main(install_signals=False))
        except BaseException as e:  # noqa: BLE001 - surfaced to start()
            self._start_error = e
            logger.exception("policy server thread crashed")
        finally:
            self._ready.set()

    async def _main(self, install_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="xr0-infer")
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop_event.set)
        try:
            async with serve(
                self._handler,
                self.host,
                self._requested_port,
                compression=None,  # like openpi; also no decompression bombs
                max_size=2 * self.max_message_bytes,  # hard transport cap; above it the connection is closed (1009)
                process_request=self._process_request,
                server_header=None,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                logger.info("xr0 policy server listening on ws://%s:%d (auth: %s)", self.host, self.port,
                            "token" if self._token else "none")
                self._ready.set()
                await self._stop_event.wait()
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- HTTP hook: health check, connection limit, header auth

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if path == "/stats":  # counts only, no request data: what a soak test or a monitor reads
            return connection.respond(http.HTTPStatus.OK, json.dumps(self.stats()) + "\n")
        if self._connections >= self.max_connections:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        connection.xr0_authed = self._token is None
        header = request.headers.get("Authorization")
        if self._token is not None and header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() not in ("api-key", "bearer") or not self._check_token(value.strip()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "bad token\n")
            connection.xr0_authed = True
        return None

    def _check_token(self, candidate: Any) -> bool:
        if self._token is None:
            return True
        if not isinstance(candidate, str):
            return False
        return hmac.compare_digest(candidate.encode("utf-8", errors="replace"), self._token)

    # ---- websocket handler

    async def _handler(self, ws: ServerConnection) -> None:
        self._connections += 1
        self._counts["connections_opened"] += 1
        peer = ws.remote_address
        authed = getattr(ws, "xr0_authed", self._token is None)
        auth_failures = 0
        prev_total_ms: float | None = None
        logger.info("connection from %s opened", peer)
        try:
            if authed:
                await ws.send(wire.packb(self.metadata))
            else:
                await ws.send(wire.packb({"auth_required": True, "protocol": PROTOCOL, "server": "xr0"}))
            while True:
                try:
                    timeout = self.idle_timeout_s if authed else min(self.idle_timeout_s, AUTH_TIMEOUT_S)
                    raw = await asyncio.wait_for(ws.recv(), timeout=timeout)
                except TimeoutError:
                    await ws.close(1000, "idle timeout")
                    return
                t0 = time.perf_counter()
                try:
                    obj = self._decode(raw)
                    if not authed or (isinstance(obj, dict) and set(obj) == {"token"}):
                        if self._check_token(obj.get("token") if isinstance(obj, dict) else None):
                            authed = True
                            reply = dict(self.metadata)
                        else:
                            raise RequestError("auth_error", "token: missing or wrong; send {'token': ...} first "
                                               "or an 'Authorization: Api-Key <token>' header", "token")
                    else:
                        reply = await self._infer(obj, t0)
                        if prev_total_ms is not None:
                            reply["server_timing"]["prev_total_ms"] = prev_total_ms
                except RequestError as e:
                    if not authed:
                        auth_failures += 1  # anything but a good token counts, so junk can't hold the socket
                    logger.info("request from %s refused: %s: %s", peer, e.type, e.message)
                    self._counts["refused"] += 1
                    reply = e.to_reply()
                except Exception as e:  # noqa: BLE001 - a server bug must not take the connection down
                    logger.exception("unexpected error handling a request from %s", peer)
                    self._counts["internal_errors"] += 1
                    reply = RequestError("internal_error", f"{type(e).__name__}: {e}"[:500]).to_reply()
                if "error" in reply:  # a text frame: openpi's client raises RuntimeError with this text
                    await ws.send(json.dumps(reply))
                else:
                    await ws.send(wire.packb(reply))
                if "actions" in reply:
                    self._counts["chunks"] += 1
                    prev_total_ms = (time.perf_counter() - t0) * 1e3
                    self._timings.append((reply["server_timing"]["infer_ms"], prev_total_ms))
                if auth_failures >= MAX_AUTH_FAILURES:
                    await ws.close(1008, "too many failed auth attempts")
                    return
        except websockets.ConnectionClosed:
            pass
        finally:
            self._connections -= 1
            logger.info("connection from %s closed", peer)

    def _decode(self, raw: Any) -> Any:
        if isinstance(raw, str):
            raise RequestError("decode_error", "expected a binary msgpack frame, got a text frame")
        if len(raw) > self.max_message_bytes:
            raise RequestError("payload_too_large",
                               f"message is {len(raw)} bytes, limit is {self.max_message_bytes} (max_message_bytes)")
        try:
            return wire.unpackb(raw)
        except wire.WireError as e:
            raise RequestError("decode_error", str(e)) from e

    async def _infer(self, obj: Any, t0: float) -> dict:
        if self.obs_map is not None:  # an openpi client's keys -> xr0's request; its images may be any size
            _, meta = request_robot(obj if isinstance(obj, dict) else {}, self.policy_metadata)
            cameras = list(meta["cameras"])
            try:
                obj = self.obs_map.apply(obj, cameras)
                obs = validate_observation(obj, self.policy_metadata, max_prompt_chars=self.max_prompt_chars,
                                           strict_image_size=False)
            except checks.FieldError as e:
                raise RequestError("invalid_request", str(e), e.field) from e
            except RequestError as e:  # name the client's own key
                field = self.obs_map.client_field(e.field, cameras)
                message = e.message if field == e.field else f"{field}: {e.message.split(': ', 1)[-1]}"
                raise RequestError(e.type, message, field) from e
        else:
            obs = validate_observation(obj, self.policy_metadata, max_prompt_chars=self.max_prompt_chars,
                                       strict_image_size=self.strict_image_size)
        if obs.seed is None:
            obs.seed = (request_seed(obs.robot_type, obs.state, obs.images, obs.prompt)
                        if self.seed_mode == "observation" else int(np.random.default_rng().integers(2**31)))
        if self._pending >= self.max_queue:
            raise RequestError("busy", f"server busy: {self._pending} requests already queued (max_queue)")
        self._pending += 1
        submitted = time.perf_counter()
        try:
            actions, started, ended = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_policy, obs)
        finally:
            self._pending -= 1
        timing = {
            "infer_ms": (ended - started) * 1e3,
            "queue_ms": (started - submitted) * 1e3,
            "decode_ms": (submitted - t0) * 1e3,
        }
        return {"actions": actions, "seed": obs.seed, "server_timing": timing,
                "policy_timing": {"infer_ms": timing["infer_ms"]}}

    def _run_policy(self, obs: Observation) -> tuple[np.ndarray, float, float]:
        """Runs on the single worker thread, so the policy never sees two calls at once."""
        kwargs: dict[str, Any] = {"prefix": obs.prefix}
        if obs.prefix_weights is not None:  # only then: policies without RTC guidance need not know the name
            kwargs["prefix_weights"] = obs.prefix_weights
        steps = obs.steps if obs.steps is not None else self.default_steps
        if steps is not None:
            kwargs["steps"] = steps
        if obs.seed is not None:
            kwargs["seed"] = obs.seed
        if obs.robot_type is not None:
            kwargs["robot_type"] = obs.robot_type
        started = time.perf_counter()
        try:
            out = self.policy.sample(obs.images, obs.prompt, obs.state, **kwargs)
        except ValueError as e:
            raise RequestError("invalid_request", f"policy rejected the input: {e}"[:1000]) from e
        except Exception as e:  # noqa: BLE001 - report, keep serving
            logger.exception("policy.sample failed")
            raise RequestError("internal_error", f"policy failed: {type(e).__name__}: {e}"[:1000]) from e
        ended = time.perf_counter()
        return self._check_actions(out, obs.robot_type), started, ended

    def _check_actions(self, out: Any, robot_type: str | None = None) -> np.ndarray:
        try:
            actions = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise RequestError("internal_error", f"policy returned non-numeric actions ({type(out).__name__})") from e
        meta = self.policy_metadata["robots"][robot_type] if robot_type is not None else self.policy_metadata
        d = int(meta["action_dim"])
        if actions.ndim != 2 or actions.shape[1] != d:
            raise RequestError("internal_error", f"policy returned actions of shape {actions.shape}, expected (T, {d})")
        if not np.isfinite(actions).all():
            raise RequestError("internal_error", "policy returned NaN/inf actions; refusing to send them to a robot")
        return np.ascontiguousarray(actions)


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xr0 serve``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH|embedded",
                     help="checkpoint folder, a training run (its latest checkpoint), or 'embedded'")
    src.add_argument("--preset", metavar="NAME", help="random weights from a named preset (smoke tests)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    parser.add_argument("--token", default=None,
                        help=f"shared secret clients must present (default: ${TOKEN_ENV} if set)")
    parser.add_argument("--max-message-mb", type=float, default=8.0, help="largest accepted request, MiB")
    parser.add_argument("--idle-timeout-s", type=float, default=300.0, help="close connections idle this long")
    parser.add_argument("--max-queue", type=int, default=8, help="requests queued before replying 'busy'")
    parser.add_argument("--steps", type=int, default=None, help="default denoising steps (policy default if unset)")
    parser.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible) | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="accept connections before one chunk per robot type has been computed")
    parser.add_argument("--robot-type", default=None,
                        help="robot type of requests that name none (default: the checkpoint's first)")
    parser.add_argument("--obs-map", default=None, metavar="openpi-libero|openpi-droid|openpi-aloha|FILE.json",
                        help="accept an openpi client's observation keys (mapped onto the cameras in order, the state "
                             "and the prompt; xr0.runtime.obs_maps)")
    parser.add_argument("--seed-mode", choices=SEED_MODES, default="random",
                        help="noise seed of a request without one: a fresh draw each time (default), or a hash of the "
                             "request (the same observation gives the same chunk, as the official clients seed)")
    add_runtime_arguments(parser)


def _build_policy(args: argparse.Namespace) -> Any:
    from xr0 import XR0Policy  # lazy: torch/transformers are heavy
    from xr0.model.dtypes import resolve_device, resolve_dtype, torch_dtype

    settings = runtime_settings(args)
    device, name = resolve_device(getattr(args, "device", "auto")), getattr(args, "dtype", "auto")
    # auto: bf16 on a GPU; fp32 on a CPU, whatever the checkpoint stores (a CPU server computes in fp32)
    dtype = torch_dtype("fp32" if name == "auto" and device == "cpu" else resolve_dtype(name, device))
    if args.preset:
        policy = XR0Policy.from_preset(args.preset, device=device, dtype=dtype).set_runtime(**settings)
    else:
        policy = XR0Policy.from_pretrained(resolve_checkpoint(args.checkpoint), device=device, dtype=dtype, **settings)
    logger.info("policy on %s in %s", device, str(dtype).removeprefix("torch."))
    prepare_for_serving(policy, steps=args.steps, warmup=getattr(args, "warmup", True))
    return policy


def prepare_for_serving(policy: Any, steps: int | None = None, warmup: bool = True) -> dict:
    """Per robot type: the K/V-once path with fixed-shape DiT buffers (XR0Model.use_static_denoiser; on CUDA a
    captured CUDA graph) sized for the robot type's prompt at its image size, then one warm-up chunk. A request
    whose prompt is longer (a larger camera image) takes the eager loop, with a log line. Returns
    {robot_type: {"max_len", "cuda_graph", "warmup_ms"}}."""
    import torch

    from xr0.processing.images import tokens_per_image

    model, cuda = policy.model, policy.model.device.type == "cuda"
    out = {}
    for name, robot in policy.robots.items():
        h, w = robot.image.target(*policy.config.image_size)  # a release robot: what its clients' size becomes
        tokens = [tokens_per_image((h, w))] * len(robot.cameras)
        length = len(policy.processor.prompt_ids("x " * 48, robot, tokens))  # a ~50-token instruction
        max_len = -(-length // 64) * 64
        model.use_static_denoiser(max_len, steps=steps, chunk_len=robot.chunk_len, cuda_graph=cuda)
        info = {"max_len": max_len, "cuda_graph": cuda}
        if warmup:
            rng = np.random.default_rng(0)
            images = {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in robot.cameras}
            t0 = time.perf_counter()
            policy.sample(images, "warm up", np.zeros(robot.state_dim, np.float32), robot_type=name, steps=steps)
            if cuda:
                torch.cuda.synchronize()
            info["warmup_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        logger.info("robot type %s: T = %d, fixed DiT buffers for prompts up to %d tokens (%s)%s", name,
                    robot.chunk_len, max_len, "CUDA graph" if cuda else "no CUDA graph on CPU",
                    f", warm-up chunk {info['warmup_ms']} ms" if warmup else "")
        out[name] = info
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of ``xr0 serve``; returns a process exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if args.max_message_mb <= 0 or not math.isfinite(args.max_message_mb):
        logger.error("--max-message-mb must be a positive number")
        return 2
    try:
        policy = _build_policy(args)
    except (ImportError, RuntimeError, FileNotFoundError, ValueError) as e:
        logger.error("could not load the policy: %s", e)
        return 2
    try:
        obs_map = ObsMap.load(args.obs_map) if args.obs_map else None
        server = PolicyServer(policy, host=args.host, port=args.port, token=token,
                              max_message_bytes=int(args.max_message_mb * 2**20), idle_timeout_s=args.idle_timeout_s,
                              max_queue=args.max_queue, default_steps=args.steps, robot_type=args.robot_type,
                              obs_map=obs_map, seed_mode=args.seed_mode)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    try:
        server.serve_forever()
    except OSError as e:
        logger.error("cannot serve on %s:%s: %s", args.host, args.port, e)
        return 1
    return 0
