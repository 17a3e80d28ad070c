"""Blocking client for ``xr0 serve`` (and the openpi websocket protocol it follows).

Why blocking: robot control loops and executors call ``infer`` from plain threads; an asyncio client would
force every caller into an event loop. Dropped connections are re-opened with bounded exponential
back-off, and the request is re-sent (inference is a pure function of the observation and seed).
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Callable

import numpy as np
import websockets
from websockets.sync.client import ClientConnection, connect

from xr0.runtime import wire

__all__ = ["PolicyClient", "PolicyServerError", "ServerBusyError", "AuthError"]


class PolicyServerError(RuntimeError):
    """The server answered with an error reply; ``type``/``field`` say what was wrong."""

    def __init__(self, type_: str, message: str, field: str | None = None):
        super().__init__(f"policy server error [{type_}]: {message}")
        self.type = type_
        self.message = message
        self.field = field


class ServerBusyError(PolicyServerError):
    """The server's inference queue was full (after any retries)."""


class AuthError(PolicyServerError):
    """The server refused our token, or wants one we did not give."""


def parse_reply(raw: bytes | str) -> Any:
    """A server frame -> its map: msgpack (binary), or a text frame: xr0's JSON error reply, else (an openpi
    server's traceback) a server_error reply holding the text."""
    if isinstance(raw, str):
        try:
            reply = json.loads(raw)
        except json.JSONDecodeError:
            reply = None
        return reply if isinstance(reply, dict) and "error" in reply else {
            "error": {"type": "server_error", "message": raw[:4000]}}
    return wire.unpackb(raw)


def _raise_error_reply(reply: dict) -> None:
    err = reply.get("error")
    if not isinstance(err, dict):
        raise PolicyServerError("server_error", repr(err)[:1000])
    type_, msg, field = str(err.get("type", "server_error")), str(err.get("message", "")), err.get("field")
    cls = {"busy": ServerBusyError, "auth_error": AuthError}.get(type_, PolicyServerError)
    raise cls(type_, msg, field)


class PolicyClient:
    """Connect to a policy server, read its metadata, and ``infer(obs)`` over one websocket."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 8000,
        token: str | None = None,
        *,
        timeout_s: float | None = 60.0,
        open_timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
        retry_busy: bool = True,
        max_reply_bytes: int = 64 * 2**20,
        connect_now: bool = True,
    ):
        if host.startswith(("ws://", "wss://")):
            self.uri = host
        else:
            h = f"[{host}]" if ":" in host else host
            self.uri = f"ws://{h}" + (f":{port}" if port is not None else "")
        self._token = token
        self.timeout_s = timeout_s
        self.open_timeout_s = open_timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_busy = retry_busy
        self.max_reply_bytes = max_reply_bytes
        self._ws: ClientConnection | None = None
        self._metadata: dict | None = None
        self._lock = threading.Lock()
        self.reconnects = 0
        if connect_now:
            self.connect()

    # ---- connection

    @property
    def metadata(self) -> dict:
        """The server's metadata (connects first if needed)."""
        if self._metadata is None:
            self.connect()
        return self._metadata  # type: ignore[return-value]

    def _sleep_backoff(self, attempt: int) -> None:
        delay = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        time.sleep(delay * (0.8 + 0.4 * random.random()))

    def _open_once(self) -> None:
        headers = {"Authorization": f"Api-Key {self._token}"} if self._token else None
        try:
            ws = connect(self.uri, additional_headers=headers, compression=None, proxy=None, legacy=True,
                         open_timeout=self.open_timeout_s, max_size=self.max_reply_bytes)
        except websockets.InvalidStatus as e:
            code = e.response.status_code
            if code == 401:
                raise AuthError("auth_error", f"server at {self.uri} rejected the token (HTTP 401)") from e
            raise
        try:
            first = wire.unpackb(ws.recv(timeout=self.open_timeout_s))
            if not isinstance(first, dict):
                raise PolicyServerError("protocol_error", f"expected a metadata map on connect, got {type(first).__name__}")
            if first.get("auth_required"):
                raise AuthError("auth_error", f"server at {self.uri} requires a token; pass token=...")
        except BaseException:
            ws.close()
            raise
        self._ws, self._metadata = ws, first

    def connect(self) -> dict:
        """Open the websocket and read the metadata, retrying refused/failed connects with back-off."""
        last: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            try:
                self._open_once()
                return self._metadata  # type: ignore[return-value]
            except (AuthError, PolicyServerError):
                raise
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as e:
                last = e
                if attempt < self.max_retries:
                    self._sleep_backoff(attempt)
        raise ConnectionError(f"could not connect to policy server at {self.uri} after "
                              f"{self.max_retries + 1} tries: {last}") from last

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def close(self) -> None:
        """Close the connection (a later ``infer`` reconnects)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- requests

    def request(self, message: dict) -> dict:
        """Send one msgpack map and return the decoded reply map (error replies raise)."""
        payload = wire.packb(message)
        with self._lock:
            attempt = 0
            while True:
                if self._ws is None:
                    had_connected = self._metadata is not None
                    self.connect()
                    self.reconnects += int(had_connected)
                try:
                    self._ws.send(payload)  # type: ignore[union-attr]
                    raw = self._ws.recv(timeout=self.timeout_s)  # type: ignore[union-attr]
                except TimeoutError:
                    self._drop()  # a late reply would desynchronise request/reply pairs
                    raise TimeoutError(f"no reply from {self.uri} within {self.timeout_s} s") from None
                except (websockets.ConnectionClosed, OSError) as e:
                    self._drop()
                    if attempt >= self.max_retries:
                        raise ConnectionError(f"connection to {self.uri} lost and {attempt} retries failed: {e}") from e
                    self._sleep_backoff(attempt)
                    attempt += 1
                    continue
                reply = parse_reply(raw)
                if not isinstance(reply, dict):
                    raise PolicyServerError("protocol_error", f"expected a map reply, got {type(reply).__name__}")
                if "error" in reply:
                    busy = isinstance(reply["error"], dict) and reply["error"].get("type") == "busy"
                    if busy and self.retry_busy and attempt < self.max_retries:
                        self._sleep_backoff(attempt)
                        attempt += 1
                        continue
                    _raise_error_reply(reply)
                return reply

    def infer(self, obs: dict) -> dict:
        """One inference: ``obs`` = {images, state, prompt[, action_prefix, prefix_weights, steps, seed]} ->
        {"actions": (T, D) float32, "seed": int, "server_timing": {...}, "policy_timing": {...}}."""
        reply = self.request(obs)
        if "actions" not in reply:
            raise PolicyServerError("protocol_error", f"reply has no 'actions' (keys: {sorted(reply)})")
        return reply

    def as_policy_fn(self) -> Callable[[dict, np.ndarray | None], np.ndarray]:
        """An executor-style ``fn(obs, prefix, prefix_weights=None) -> actions`` backed by this client."""

        def fn(obs: dict, prefix: np.ndarray | None = None, prefix_weights: np.ndarray | None = None) -> np.ndarray:
            msg = dict(obs)
            msg.pop("prefix_weights", None)
            if prefix is not None and len(prefix) > 0:
                msg["action_prefix"] = np.asarray(prefix, dtype=np.float32)
                if prefix_weights is not None:
                    msg["prefix_weights"] = np.asarray(prefix_weights, dtype=np.float32)
            else:
                msg.pop("action_prefix", None)
            return self.infer(msg)["actions"]

        meta = self.metadata  # what the executors read: the trained clean prefix, the dims a held tick zeroes
        fn.max_prefix = meta.get("max_prefix")
        fn.delta_dims = tuple(meta.get("delta_dims") or ())
        return fn
