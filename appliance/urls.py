"""``--url``: one reading of a server address for every command that talks to a server (eval, chat, adapters)."""

from __future__ import annotations

from urllib.parse import urlsplit

from appliance.datafiles import bad_char
from appliance.errors import ApplianceError

URL_FIX = "expected http://HOST:PORT, e.g. http://127.0.0.1:8000/v1 (the address `appliance up` printed)"
# endpoint URLs copied from a curl example or a client's docs: their /v1 base is meant
_ENDPOINTS = ("/chat/completions", "/completions", "/models")


def base_url(url: str) -> str:
    """``http://host:port``, ``.../v1`` or an endpoint URL (``.../v1/chat/completions``) -> the OpenAI base URL
    ending in ``/v1``; a malformed URL, or one with another path, is a one-line error."""
    u = url.strip().rstrip("/")
    try:
        parts = urlsplit(u)
        port = parts.port  # a ValueError when it is not a number in 0-65535
    except ValueError as e:
        raise ApplianceError(f"--url {url}: {e}; {URL_FIX}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApplianceError(f"--url {url}: {URL_FIX}")
    if port == 0:
        raise ApplianceError(f"--url {url}: port 0 is not a server's port; {URL_FIX}")
    if parts.query or parts.fragment or any(c.isspace() for c in u):
        raise ApplianceError(f"--url {url}: no spaces, '?' or '#' in it; {URL_FIX}")
    if (bad := bad_char(u, typed=True)) is not None:
        raise ApplianceError(f"--url {url!a}: holds {bad}; {URL_FIX}")
    root, path = u[: len(u) - len(parts.path)], parts.path
    endpoint = next((e for e in _ENDPOINTS if path.endswith("/v1" + e)), "")
    path = path[: len(path) - len(endpoint)]
    if path and not path.endswith("/v1"):
        # adding /v1 to any path (.../chat/completions/v1) would only fail later, as a server that is not OpenAI's
        raise ApplianceError(f"--url {url}: {parts.path} is not an OpenAI API base; give the server's address "
                             f"(--url {root}) or a base URL ending in /v1 (--url {root}/v1)")
    return root + (path or "/v1")


def server_url(url: str) -> str:
    """The server's own address (``base_url`` less ``/v1``): where vLLM's non-OpenAI routes such as
    ``/v1/load_lora_adapter`` and ``/health`` hang, and what ``appliance up``'s records are keyed by."""
    return base_url(url)[: -len("/v1")]
