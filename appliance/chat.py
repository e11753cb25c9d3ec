"""``appliance chat``: a terminal chat with a served model through the ``openai`` client."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, TextIO

from appliance.errors import ApplianceError


@dataclass
class ChatConfig:
    """Options of ``appliance chat``."""

    url: str
    model: str | None = None  # default: the first adapter the server lists, else its base
    api_key: str | None = None
    system: str | None = None
    max_tokens: int = 256
    # greedy, as `eval` asks: a small model's own default (SmolLM2 sets none: 1.0) samples noise
    temperature: float | None = 0.0


def default_url() -> str:
    """The only recorded server's URL, else the default ``http://127.0.0.1:8000``."""
    from appliance.adapters import DEFAULT_URL
    from appliance.servers import live_records

    recs = live_records()
    if len(recs) > 1:
        raise ApplianceError(f"{len(recs)} servers are running ({', '.join(r.url for r in recs)}); pass --url to pick one")
    return recs[0].url if recs else DEFAULT_URL


def pick_model(entries: list[dict]) -> str:
    """The first adapter (an entry with a parent) in ``/v1/models``, else the first base model."""
    if not entries:
        raise ApplianceError("the server lists no models; check `appliance status`")
    adapters = [m["id"] for m in entries if m.get("parent")]
    return adapters[0] if adapters else entries[0]["id"]


def _client(cfg: ChatConfig):
    from openai import OpenAI

    from appliance.urls import server_url

    return OpenAI(base_url=server_url(cfg.url) + "/v1", api_key=cfg.api_key or "EMPTY", max_retries=0)


def reply(cfg: ChatConfig, messages: list[dict], write: Callable[[str], None]) -> str:
    """Stream one answer to ``messages`` through ``write``; returns the whole answer."""
    import openai

    extra = {} if cfg.temperature is None else {"temperature": cfg.temperature}
    try:
        stream = _client(cfg).chat.completions.create(model=cfg.model, messages=messages, max_tokens=cfg.max_tokens,
                                                      stream=True, **extra)
        parts = []
        finish = None
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
            if delta:
                parts.append(delta)
                write(delta)
        if finish == "length":  # on stderr: stdout holds the answer alone
            print(f"\n[cut at --max-tokens {cfg.max_tokens}]", file=sys.stderr, end="")
    except openai.AuthenticationError:
        from appliance.adapters import unauthorized

        raise unauthorized(f"--url {cfg.url}", key_sent=bool(cfg.api_key)) from None
    except openai.NotFoundError as e:
        try:  # vLLM's own message lists only the base's aliases, not the adapters: name what is served
            served = ", ".join(m.id for m in _client(cfg).models.list().data)
        except Exception:  # noqa: BLE001 - then its message is all there is
            served = ""
        why = f"it serves: {served}" if served else _msg(e)
        raise ApplianceError(f"--model {cfg.model}: not served at {cfg.url} ({why}); pass one of those names") from None
    except openai.APIConnectionError:
        raise ApplianceError(f"--url {cfg.url}: no server answers; start one with `appliance up`")
    except openai.APIStatusError as e:
        raise ApplianceError(f"{cfg.url}: server answered {e.status_code}: {_msg(e)}")
    return "".join(parts)


def _msg(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error", {}).get("message") or body)[:200]
    return str(e)[:200]


def _read_line(stdin: TextIO, write: Callable[[str], None]) -> str:
    """A line with a trailing newline, or "" at end of input (line editing on a terminal)."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            return input("you> ") + "\n"
        except EOFError:
            return ""
    write("you> ")
    return stdin.readline()


def chat(cfg: ChatConfig, prompt: str | None = None, stdin: TextIO | None = None, out: TextIO | None = None) -> str:
    """One answer to ``prompt``, or an interactive session (history kept) reading ``stdin``.

    In a session ``/reset`` forgets the history and ``/exit`` (or end of input) leaves.
    Returns the last answer.
    """
    from appliance.adapters import list_served

    import math

    if cfg.max_tokens < 1:
        raise ApplianceError(f"--max-tokens {cfg.max_tokens}: must be at least 1")
    if cfg.temperature is not None and not (math.isfinite(cfg.temperature) and 0 <= cfg.temperature <= 2):
        raise ApplianceError(f"--temperature {cfg.temperature}: must be 0-2 (0: always the likeliest token)")
    if prompt is not None and not prompt.strip():
        raise ApplianceError("-p: the prompt is empty; give the message to send, or leave -p out to chat interactively")
    out = out or sys.stdout
    stdin = stdin or sys.stdin
    if not cfg.model:
        cfg.model = pick_model(list_served(cfg.url, cfg.api_key))

    def write(s: str) -> None:
        out.write(s)
        out.flush()

    base = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if prompt is not None:
        answer = reply(cfg, base + [{"role": "user", "content": prompt}], write)
        write("\n")
        return answer
    history, answer = list(base), ""
    write(f"chatting with {cfg.model} at {cfg.url}; /reset clears the history, /exit or Ctrl-D leaves\n")
    while True:
        line = _read_line(stdin, write)
        if not line or line.strip() in ("/exit", "/quit"):
            write("\n" if not line else "")
            return answer
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = list(base)
            continue
        history.append({"role": "user", "content": text})
        write(f"{cfg.model}> ")
        answer = reply(cfg, history, write)
        write("\n")
        history.append({"role": "assistant", "content": answer})
