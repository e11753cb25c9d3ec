"""``appliance chat``: a terminal chat with a served model through the ``openai`` client."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, TextIO

from appliance.datafiles import bad_char
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


class ServerRefused(ApplianceError):
    """The server answered one request with a 4xx (a message over the context length): in a chat
    session that message is dropped and the session goes on."""


def default_url() -> str:
    """The only running recorded server's URL, else the default ``http://127.0.0.1:8000`` when none is recorded."""
    from appliance.adapters import DEFAULT_URL
    from appliance.servers import is_alive, read_records

    recs = read_records()
    alive = [r for r in recs if is_alive(r)]
    if len(alive) > 1:
        raise ApplianceError(f"{len(alive)} servers are running ({', '.join(r.url for r in alive)}); pass --url to pick one")
    if alive:
        return alive[0].url
    # only dead records: their URLs would answer "no server" and the default port is not what was started
    if len(recs) == 1:
        raise ApplianceError(f"the server recorded on port {recs[0].port} ({recs[0].url}) is not running; start one with "
                             f"`appliance up` (`appliance down --port {recs[0].port}` clears the record), or pass --url")
    if recs:
        raise ApplianceError(f"none of the {len(recs)} recorded servers (ports {', '.join(str(r.port) for r in recs)}) is "
                             "running; start one with `appliance up` (`appliance down --all` clears the records), or pass --url")
    return DEFAULT_URL


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
    """Stream one answer to ``messages`` through ``write``; returns the whole answer.

    A 4xx answer about this request raises :class:`ServerRefused`; anything that ends the session, an
    :class:`ApplianceError`."""
    import openai

    from appliance.adapters import no_server, not_openai

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
        if not isinstance(e.body, (dict, list)):  # an HTML page: some other web server
            raise not_openai(cfg.url, 404, "POST /v1/chat/completions") from None
        try:  # vLLM's own message lists only the base's aliases, not the adapters: name what is served
            served = ", ".join(m.id for m in _client(cfg).models.list().data)
        except Exception:  # noqa: BLE001 - then its message is all there is
            served = ""
        why = f"it serves: {served}" if served else _msg(e)
        raise ApplianceError(f"--model {cfg.model}: not served at {cfg.url} ({why}); pass one of those names") from None
    except openai.APIConnectionError:
        raise no_server(cfg.url) from None
    except openai.APIStatusError as e:
        if not isinstance(e.body, (dict, list)):  # an HTML page: not echoed, it says nothing to the user
            raise not_openai(cfg.url, e.status_code, "POST /v1/chat/completions") from None
        error = ServerRefused if 400 <= e.status_code < 500 else ApplianceError
        said = _msg(e)
        # vLLM: "max_tokens=5000 cannot be greater than max_model_len=2048", "... maximum context length ..."
        hint = ("; lower --max-tokens, or send a shorter message (the server's context is `appliance up "
                "--max-model-len`)") if "max_tokens" in said or "context length" in said else ""
        raise error(f"{cfg.url}: server answered {e.status_code}: {said}{hint}") from None
    except _transport_errors() as e:  # the connection broke while the answer streamed
        raise ApplianceError(f"--url {cfg.url}: the server stopped answering mid-answer ({type(e).__name__}); "
                             "check `appliance status`") from None
    return "".join(parts)


def _transport_errors() -> tuple[type[Exception], ...]:
    """What a broken stream raises: the openai client's HTTP library (httpx2 in recent releases) or httpx."""
    import httpx

    try:
        import httpx2
    except ImportError:
        return (httpx.HTTPError,)
    return (httpx.HTTPError, httpx2.HTTPError)


def _msg(e) -> str:
    from appliance.adapters import error_message

    body = getattr(e, "body", None)
    return " ".join(str(error_message(body) or body or e).split())[:300]


def _read_line(stdin: TextIO, write: Callable[[str], None], tty: bool) -> str:
    """A line with a trailing newline, or "" at end of input (line editing on a terminal).

    The ``you>`` prompt only on a terminal: piped, stdout holds the answers alone."""
    if tty and stdin is sys.stdin:
        try:
            return input("you> ") + "\n"
        except EOFError:
            return ""
    if tty:
        write("you> ")
    return stdin.readline()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or a bare stream
        return False


def _check_text(value: str | None, flag: str) -> None:
    """Text that cannot be sent as UTF-8 (bytes that are not UTF-8 on the command line): refused before any request."""
    if value is not None and (why := bad_char(value)):
        raise ApplianceError(f"{flag}: contains {why}; give it as UTF-8 text")


def chat(cfg: ChatConfig, prompt: str | None = None, stdin: TextIO | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> str:
    """One answer to ``prompt``, or an interactive session (history kept) reading ``stdin``.

    In a session ``/reset`` forgets the history and ``/exit`` (or end of input) leaves; a message the
    server refuses, or one that is not UTF-8, is reported on ``err`` and dropped, and the session goes on.
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
    for value, flag in ((prompt, "-p"), (cfg.system, "--system"), (cfg.model, "--model"), (cfg.api_key, "--api-key")):
        _check_text(value, flag)
    out = out or sys.stdout
    err = err or sys.stderr
    stdin = stdin or sys.stdin
    if stdin is sys.stdin and hasattr(stdin, "reconfigure"):
        try:  # bytes that are not UTF-8 become lone surrogates, refused line by line, not a UnicodeDecodeError
            stdin.reconfigure(errors="surrogateescape")
        except (ValueError, OSError):
            pass
    if not cfg.model:
        cfg.model = pick_model(list_served(cfg.url, cfg.api_key))

    def write(s: str) -> None:
        try:
            out.write(s)
        except UnicodeEncodeError:  # a lone surrogate in an answer ("\ud800" in its JSON)
            out.write(s.encode("utf-8", "backslashreplace").decode("utf-8"))
        out.flush()

    def warn(msg: str) -> None:
        print(msg.encode("utf-8", "backslashreplace").decode("utf-8"), file=err, flush=True)

    base = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if prompt is not None:
        answer = reply(cfg, base + [{"role": "user", "content": prompt}], write)
        write("\n")
        return answer
    history, answer = list(base), ""
    tty = _isatty(stdin)
    if tty:  # the banner and the model's name before each answer: piped, stdout holds the answers alone
        write(f"chatting with {cfg.model} at {cfg.url}; /reset clears the history, /exit or Ctrl-D leaves\n")
    lineno, unanswered = 0, []
    while True:
        line = _read_line(stdin, write, tty)
        lineno += 1
        if not line or line.strip() in ("/exit", "/quit"):
            write("\n" if not line and tty else "")
            if unanswered and not tty:  # a script feeding stdin must see that some of its messages failed
                raise ApplianceError(f"stdin: {len(unanswered)} message(s) not answered (line "
                                     f"{', '.join(map(str, unanswered))}); see the errors above")
            return answer
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = list(base)
            continue
        if why := bad_char(text):
            warn(f"error: {'your message' if tty else f'stdin line {lineno}'}: contains {why}; not sent (send UTF-8 text), "
                 "the chat goes on")
            unanswered.append(lineno)
            continue
        history.append({"role": "user", "content": text})
        if tty:
            write(f"{cfg.model}> ")
        try:
            answer = reply(cfg, history, write)
        except ServerRefused as e:  # about this message only (too long for the context): the session goes on
            write("\n" if tty else "")
            history.pop()
            warn(f"error: {e}; the message was dropped from the history (/reset clears the history if it grew too long)")
            unanswered.append(lineno)
            continue
        except ApplianceError:  # the session ends: the error goes on a line of its own
            write("\n" if tty else "")
            raise
        write("\n")
        history.append({"role": "assistant", "content": answer})
