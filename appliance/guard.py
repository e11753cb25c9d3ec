"""Server-side guard for runtime LoRA loading, installed into vLLM with
``--middleware appliance.guard.AdapterRootGuard``.

vLLM loads an adapter from whatever path a client names in ``POST /v1/load_lora_adapter``
(and in the SageMaker-style ``POST /adapters`` that vLLM 0.32 also mounts, outside ``/v1``
and therefore outside vLLM's own ``--api-key`` check). This pure ASGI middleware sits in
front of both: it resolves the requested path (``~``, ``..``, symlinks) and forwards the
request only when the real path is an existing directory under one of the allowed roots,
rewriting the body to that real path so a symlink swapped after the check cannot redirect
the load. Everything else answers 403 with a JSON error and never reaches vLLM.

The roots arrive through ``APPLIANCE_ADAPTER_ROOTS`` (a JSON list; by hand, one folder or ``os.pathsep``-separated), set by
``appliance up``. With an API key (``VLLM_API_KEY``, which ``appliance up`` sets instead of
putting the key on the command line) the guard also demands it on every path vLLM leaves
open, except the health probes.

This module is imported inside the vLLM server process: keep it free of heavy imports.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable

ROOTS_ENV = "APPLIANCE_ADAPTER_ROOTS"
KEY_ENV = "VLLM_API_KEY"
MAX_BODY = 1 << 20
# request path -> the JSON field that names the adapter directory
LOAD_ROUTES = {"/v1/load_lora_adapter": "lora_path", "/adapters": "src"}
OPEN_PATHS = ("/health", "/ping", "/version", "/metrics")


def real(path: str) -> str:
    """``path`` with ``~`` expanded and every symlink and ``..`` resolved."""
    return os.path.realpath(os.path.expanduser(path))


def roots_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The allowed roots named in ``APPLIANCE_ADAPTER_ROOTS``, resolved."""
    raw = (environ if environ is not None else os.environ).get(ROOTS_ENV, "")
    if raw.lstrip().startswith("["):
        # a JSON list, as `appliance up` writes it: a folder may hold os.pathsep (/data/ext:dir), which split
        # into pieces would refuse its adapters, or allow a folder nobody named (/data/q:/etc gave /etc)
        try:
            roots = json.loads(raw)
        except ValueError:
            roots = None
        if not isinstance(roots, list) or not all(isinstance(p, str) for p in roots):
            return []  # unreadable: nothing is allowed, rather than a guess
        return [real(p) for p in roots if p.strip()]
    return [real(p) for p in raw.split(os.pathsep) if p.strip()]  # set by hand: "/saves" or "/a:/b"


def is_allowed(path: str, roots: Iterable[str]) -> bool:
    """True when the real path of ``path`` is one of ``roots`` or lies below one of them."""
    target = real(path)
    for root in roots:
        root = real(root)
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _norm_path(scope: dict) -> str:
    path = scope.get("path", "")
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path):]
    while "//" in path:
        path = path.replace("//", "/")
    return path.rstrip("/") or "/"


class AdapterRootGuard:
    """ASGI middleware: adapter loads only from allowed roots; API key on vLLM's open paths."""

    def __init__(self, app, roots: list[str] | None = None, api_key: str | None = None) -> None:
        self.app = app
        self.roots = roots if roots is not None else roots_from_env()
        key = api_key if api_key is not None else os.environ.get(KEY_ENV, "")
        self._key_hash = hashlib.sha256(key.encode()).digest() if key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = _norm_path(scope)
        if self._key_hash and scope.get("method") != "OPTIONS" and not self._authorized(scope, path):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _json(send, 401, "Unauthorized: send 'Authorization: Bearer <api key>'")
        field = LOAD_ROUTES.get(path)
        if scope["type"] != "http" or field is None or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:
            return await _json(send, 413, "request body too large")
        try:
            data = json.loads(body)
            requested = data[field]
            if not isinstance(requested, str) or not requested:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return await _json(send, 400, f"body must be a JSON object with a non-empty string '{field}'")
        resolved = real(requested)
        if not (os.path.isdir(resolved) and is_allowed(resolved, self.roots)):
            return await _json(send, 403, f"adapter path '{requested}' is not a directory under the allowed "
                               f"adapter roots; start the server with --adapter-root for its folder")
        data[field] = resolved
        new_body = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(new_body)).encode()))
        return await self.app(dict(scope, headers=headers), _replay(new_body, receive), send)

    def _authorized(self, scope: dict, path: str) -> bool:
        # vLLM checks /v1, /v2, ... itself; the guard covers what it leaves open (/adapters, /invocations, ...)
        if path in OPEN_PATHS:
            return True
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._key_hash)
        return False


async def _read_body(receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A ``receive`` that hands the app the (rewritten) body once, then the client's own events."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(send, status: int, message: str) -> None:
    payload = json.dumps({"error": {"message": message, "type": "AdapterRootGuard", "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
