"""``appliance chat``: a terminal chat with a served model through the ``openai`` client."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
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


class Unanswered(ApplianceError):
    """One message got no whole answer from a server that is there (an error in its stream, a stream cut off, no
    stream at all): in a chat session that message is dropped and the session goes on."""


class ServerRefused(Unanswered):
    """The server answered one request with a 4xx (a message over the context length)."""


@dataclass
class _Stream:
    """What one answer's stream brought: how it ended tells a whole answer from a cut one."""

    ctype: str | None = None  # set once the server answered the request (its content type)
    chunks: int = 0  # chat completion chunks: a choice or a usage
    parts: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: bool = False

    def take(self, chunk, write: Callable[[str], None]) -> None:
        choice = chunk.choices[0] if chunk.choices else None
        usage = getattr(chunk, "usage", None) is not None
        if choice is None and not usage:  # an event that is no chat completion chunk
            return
        self.chunks += 1
        self.usage = self.usage or usage
        self.finish = getattr(choice, "finish_reason", None) or self.finish
        if delta := getattr(getattr(choice, "delta", None), "content", None):
            self.parts.append(delta)
            write(delta)


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

    A 4xx answer about this request, or an answer that broke off, raises :class:`Unanswered`; anything that ends
    the session, an :class:`ApplianceError`."""
    import openai

    from appliance.adapters import no_server, not_openai

    extra = {} if cfg.temperature is None else {"temperature": cfg.temperature}
    got = _Stream()
    try:
        stream = _client(cfg).chat.completions.create(model=cfg.model, messages=messages, max_tokens=cfg.max_tokens,
                                                      stream=True, **extra)
        got.ctype = stream.response.headers.get("content-type", "")
        for chunk in stream:
            got.take(chunk, write)
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
    except openai.APIConnectionError as e:
        # the openai client wraps a connection that drops mid-body as it wraps one that was never made
        raise (_cut_off(cfg, got, type(e).__name__) if got.ctype is not None else no_server(cfg.url)) from None
    except openai.APIStatusError as e:
        raise _refused(cfg, e) from None
    except openai.APIError as e:  # vLLM's `data: {"error": ...}` event: the engine failed on this request
        where = "mid-answer" if got.parts else "instead of answering"
        raise Unanswered(f"--url {cfg.url}: the server reported an error {where}: {_msg(e)}{_log_cause(cfg.url)}") from None
    except _transport_errors() as e:
        raise _cut_off(cfg, got, type(e).__name__) from None
    _check_ending(cfg, got)
    return "".join(got.parts)


def _refused(cfg: ChatConfig, e) -> ApplianceError:
    """A 4xx or 5xx other than 401 / 404: a 4xx is about this message only."""
    from appliance.adapters import not_openai

    if not isinstance(e.body, (dict, list)):  # an HTML page: not echoed, it says nothing to the user
        return not_openai(cfg.url, e.status_code, "POST /v1/chat/completions")
    error = ServerRefused if 400 <= e.status_code < 500 else ApplianceError
    said = _msg(e)
    # vLLM: "max_tokens=5000 cannot be greater than max_model_len=2048", "... maximum context length ..."
    hint = ("; lower --max-tokens, or send a shorter message (the server's context is `appliance up "
            "--max-model-len`)") if "max_tokens" in said or "context length" in said else ""
    if cfg.system and 400 <= e.status_code < 500 and "system" in said.lower():
        # Gemma's and Mistral's templates raise on a system turn ("System role not supported")
        hint = "; this model's chat template takes no system prompt: leave out --system"
    return error(f"{cfg.url}: server answered {e.status_code}: {said}{hint}")


def _cut_off(cfg: ChatConfig, got: _Stream, why: str) -> Unanswered:
    """The connection broke after the server began to answer: it is there, this answer is lost."""
    where = f"mid-answer ({why}), so the answer above is cut off" if got.parts else f"before the answer began ({why})"
    return Unanswered(f"--url {cfg.url}: the connection closed {where}; check `appliance status`")


def _check_ending(cfg: ChatConfig, got: _Stream) -> None:
    """A stream that ended with neither a finish_reason nor usage was cut off, however cleanly it closed."""
    if not got.chunks:  # an HTML page, or a server that ignored stream=true: no chunk parses out of its body
        kind = (got.ctype or "").split(";")[0].strip()
        body = f"a {kind} page" if "html" in kind else f"content type: {kind or 'none'}"
        what = "answered without streaming (one JSON body)" if "json" in kind else f"sent no chat completion stream ({body})"
        raise Unanswered(f"--url {cfg.url}: the server {what}; is it an OpenAI-compatible server? check --url")
    if got.finish is None and not got.usage:
        raise Unanswered(f"--url {cfg.url}: the answer stream ended without a finish_reason, so the answer "
                         f"{'above ' if got.parts else ''}is cut off; check `appliance status`")
    if got.finish == "length":  # on stderr: stdout holds the answer alone
        # flushed: stderr holds a line until its newline, which a note after the answer would share
        print(f"\n[cut at --max-tokens {cfg.max_tokens}]", file=sys.stderr, end="", flush=True)


def _transport_errors() -> tuple[type[Exception], ...]:
    """What a broken stream raises: the openai client's HTTP library (httpx2 in recent releases) or httpx."""
    import httpx

    try:
        import httpx2
    except ImportError:
        return (httpx.HTTPError,)
    return (httpx.HTTPError, httpx2.HTTPError)


def _log_cause(url: str) -> str:
    """For a server `appliance up` started: what its log names as the cause. vLLM's own message for a dead
    engine ("EngineCore encountered an issue. See stack trace (above) ...") points at a log the client never sees."""
    from pathlib import Path

    from appliance import servers

    try:
        rec = servers.find_record(url)
        if rec is None or not Path(rec.log).is_file():
            return ""
        cause = servers.root_cause(rec.log)
    except (OSError, ValueError):
        return ""
    return f" (its log {rec.log} names the cause: {cause})" if cause else f" (see its log {rec.log})"


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


class _Out:
    """Where a chat writes: each error on a line of its own, after whatever part of an answer came."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err, self.open_line = out, err, False

    def write(self, s: str) -> None:
        try:
            self.out.write(s)
        except UnicodeEncodeError:  # a lone surrogate in an answer ("\ud800" in its JSON)
            self.out.write(s.encode("utf-8", "backslashreplace").decode("utf-8"))
        self.out.flush()
        if s:
            self.open_line = not s.endswith("\n")

    def end_line(self) -> None:
        if self.open_line:
            self.write("\n")

    def warn(self, msg: str) -> None:
        print(msg.encode("utf-8", "backslashreplace").decode("utf-8"), file=self.err, flush=True)

    def answered(self, answer: str) -> None:
        """An answer's line ends; a blank line alone would not tell an empty answer from a lost one."""
        self.write("\n")
        if not answer.strip():  # line breaks alone look empty too, but are tokens the model produced
            self.warn("note: the model's answer was " + ("empty" if not answer else "white space only (line breaks or spaces)"))


def _check_text(value: str | None, flag: str) -> None:
    """Text that cannot be sent as UTF-8 (bytes that are not UTF-8 on the command line): refused before any request."""
    if value is not None and (why := bad_char(value, typed=True)):
        raise ApplianceError(f"{flag}: contains {why}; give it as UTF-8 text")


def chat(cfg: ChatConfig, prompt: str | None = None, stdin: TextIO | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> str:
    """One answer to ``prompt``, or an interactive session (history kept) reading ``stdin``.

    In a session ``/reset`` forgets the history and ``/exit`` (or end of input) leaves; a message the
    server refuses or answers in part, or one that is not UTF-8, is reported on ``err`` and dropped, and the
    session goes on. Returns the last answer.
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
    stdin = stdin or sys.stdin
    if stdin is sys.stdin and hasattr(stdin, "reconfigure"):
        try:  # bytes that are not UTF-8 become lone surrogates, refused line by line, not a UnicodeDecodeError
            stdin.reconfigure(errors="surrogateescape")
        except (ValueError, OSError):
            pass
    if not cfg.model:
        cfg.model = pick_model(list_served(cfg.url, cfg.api_key))
    term = _Out(out or sys.stdout, err or sys.stderr)
    base = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if prompt is None:
        return _session(cfg, base, stdin, term)
    try:
        answer = reply(cfg, base + [{"role": "user", "content": prompt}], term.write)
    except ApplianceError:
        term.end_line()
        raise
    term.answered(answer)
    return answer


def _session(cfg: ChatConfig, base: list[dict], stdin: TextIO, term: _Out) -> str:
    """Messages read from ``stdin`` until /exit or its end, history kept; returns the last answer."""
    history, answer = list(base), ""
    tty = _isatty(stdin)
    if tty:  # the banner and the model's name before each answer: piped, stdout holds the answers alone
        term.write(f"chatting with {cfg.model} at {cfg.url}; /reset clears the history, /exit or Ctrl-D leaves\n")
    lineno, unanswered = 0, []
    while True:
        line = _read_line(stdin, term.write, tty)
        lineno += 1
        if not line or line.strip() in ("/exit", "/quit"):
            term.write("\n" if not line and tty else "")
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
        if why := bad_char(text, typed=True):
            term.warn(f"error: {'your message' if tty else f'stdin line {lineno}'}: contains {why}; not sent (send UTF-8 "
                      "text), the chat goes on")
            unanswered.append(lineno)
            continue
        history.append({"role": "user", "content": text})
        if tty:
            term.write(f"{cfg.model}> ")
        try:
            answer = reply(cfg, history, term.write)
        except Unanswered as e:  # about this message only (too long for the context, cut off): the session goes on
            term.end_line()
            history.pop()
            hint = " (/reset clears the history if it grew too long)" if isinstance(e, ServerRefused) else ""
            term.warn(f"error: {e}; the message was dropped from the history{hint}")
            unanswered.append(lineno)
            continue
        except ApplianceError:  # the session ends: the error goes on a line of its own
            term.end_line()
            raise
        term.answered(answer)
        history.append({"role": "assistant", "content": answer})
