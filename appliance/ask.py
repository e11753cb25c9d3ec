"""One streamed chat completion as the eval records it, and the served model list.

Talks to any OpenAI-compatible server through the ``openai`` client, and turns whatever the server
sends into one answers.jsonl row: a stream cut off without an end, a connection dropped mid-answer,
reasoning text, a server that sends no token usage or asks to be retried are each recorded for what
they are, never scored as a complete answer with made-up figures. Nothing here imports training code.
"""

from __future__ import annotations

import asyncio
import re
import time

from appliance.datafiles import bad_char
from appliance.errors import ApplianceError

MODELS_TIMEOUT_S = 30.0  # GET /models answers in milliseconds, even from a busy server
RETRIES = 2  # as the openai client's default: a 429 or 5xx, or a refused connection, is asked again twice
RETRY_WAIT_MAX_S = 20.0  # a longer Retry-After is not waited for: the request fails and says so
_SURROGATE = re.compile("[\ud800-\udfff]")
# a reasoning model served without its reasoning parser (Qwen3, DeepSeek-R1) streams its thinking as content
_THINK = re.compile(r"\A\s*<think>(.*?)(?:</think>\s*|\Z)", re.S)


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's text on one short line (servers put whole HTML pages in their error bodies)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "…"


async def served_models(client, url: str, fix_url: str) -> tuple[dict[str, str], dict[str, int]]:
    """The served model ids with their roots (an adapter's base), and the context length of those that say it (vLLM)."""
    import openai

    def not_openai(why: str) -> ApplianceError:
        return ApplianceError(f"--url {url}: GET /models did not answer like an OpenAI-compatible server ({why}); "
                              f"point --url at the server `appliance up` started (e.g. {fix_url})")

    try:
        # a server that accepts connections but never answers must not cost the requests' timeout and retries
        page = await client.with_options(timeout=MODELS_TIMEOUT_S, max_retries=0).models.list()
        served = {m.id: (getattr(m, "root", None) or m.id) for m in page.data}
        lengths = {m.id: m.max_model_len for m in page.data if isinstance(getattr(m, "max_model_len", None), int)}
        for m in page.data:  # vLLM lists an adapter's context as null: it is its base's (its "parent")
            if m.id not in lengths and isinstance(lengths.get(getattr(m, "parent", None)), int):
                lengths[m.id] = lengths[m.parent]
    except openai.AuthenticationError:
        from appliance.adapters import unauthorized

        raise unauthorized(f"--url {url}", key_sent=client.api_key != "EMPTY") from None
    except openai.APITimeoutError:
        raise ApplianceError(f"--url {url}: the server accepted the connection but did not answer GET /models within "
                             f"{MODELS_TIMEOUT_S:g} s; it may be hung: check `appliance status` (or restart it)") from None
    except openai.APIConnectionError as e:
        raise ApplianceError(f"--url {url}: cannot reach the server ({type(e).__name__}); start it with `appliance up` or fix --url")
    except openai.APIError as e:
        raise ApplianceError(f"--url {url}: GET /models failed ({one_line(e)}); is this an OpenAI-compatible server?")
    except (AttributeError, TypeError, ValueError, KeyError):
        # the client parses any 200 reply without checking it: plain text, a JSON list, {"data": 5} ...
        raise not_openai('no {"data": [{"id": ...}]} model list') from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in served.items()):
        raise not_openai("model ids that are not strings")
    return served, lengths


class _Retry(Exception):
    """An attempt the server asked to repeat (429, 5xx) or could not connect for; ``wait`` s from its Retry-After."""

    def __init__(self, error: str, wait: float | None):
        super().__init__(error)
        self.error, self.wait = error, wait


def _retry_after(e) -> float | None:
    try:
        return float(e.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _text(value: object, what: str) -> str:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"delta {what} is {type(value).__name__}, not text")
    if value and bad_char(value) is not None:
        # a lone surrogate escaped in the server's JSON: kept as is, answers.jsonl could not be
        # written, and every answer of the eval would be lost
        value = _SURROGATE.sub("\ufffd", value)
    return value or ""


async def _attempt(client, model: str, messages: list[dict], max_tokens: int, r: dict) -> None:
    """One request, its figures written into ``r`` as they arrive (a cut stream keeps what came)."""
    t0 = time.perf_counter()
    try:
        await _stream(client, model, messages, max_tokens, r, t0)
    finally:
        r["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)


async def _stream(client, model: str, messages: list[dict], max_tokens: int, r: dict, t0: float) -> None:
    import httpx
    import openai

    parts, thinking, chunks, usage = [], [], 0, None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True})
    except openai.APIStatusError as e:
        if e.status_code in (408, 409, 429) or e.status_code >= 500:
            raise _Retry(f"{type(e).__name__}: {one_line(e)}", _retry_after(e)) from None
        raise
    except openai.APIConnectionError as e:  # before any byte of an answer: nobody took the request
        if isinstance(e, openai.APITimeoutError):
            raise
        raise _Retry(f"{type(e).__name__}: {one_line(e)}", None) from None
    try:
        async with stream:  # closed even when a chunk is garbage, so no half-read response is left behind
            async for chunk in stream:
                chunks += 1
                tokens = getattr(chunk.usage, "completion_tokens", None)
                if isinstance(tokens, int):
                    usage = tokens
                for choice in chunk.choices or []:
                    if isinstance(choice.finish_reason, str):
                        r["finish_reason"] = choice.finish_reason  # "length": the answer was cut at max_tokens
                    delta = choice.delta
                    # vLLM's reasoning parsers send the thinking as reasoning_content (newer: reasoning)
                    think = _text(getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None),
                                  "reasoning") if delta else ""
                    content = _text(delta.content, "content") if delta else ""
                    if (think or content) and r["ttft_ms"] is None:  # the first token, thought or said
                        r["ttft_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
                    if think:
                        thinking.append(think)
                        r["_pieces"] += 1
                    if content:
                        parts.append(content)
                        r["_pieces"] += 1
                r["answer"], r["_thinking"], r["_usage"] = "".join(parts), "".join(thinking), usage
        if not chunks:
            r["error"] = "EmptyStream: the server sent no chat completion chunk; is it an OpenAI-compatible server?"
        elif r["finish_reason"] is None and usage is None:
            # every complete stream ends with a finish_reason or (asked with include_usage) a usage chunk
            r["error"] = ("IncompleteStream: the stream ended without a finish_reason or token usage after "
                          f"{chunks} chunks (cut off by the server or a proxy?)")
    except (openai.APITimeoutError, httpx.TimeoutException):
        raise TimeoutError from None
    except (openai.APIConnectionError, httpx.TransportError) as e:
        if not chunks:
            raise _Retry(f"APIConnectionError: {one_line(e)}", None) from None
        # the server took the request and began answering: not a server that is gone
        r["error"] = f"StreamCut: the connection closed mid-answer after {chunks} chunks ({type(e).__name__}: {one_line(e)})"


async def ask(client, sem: asyncio.Semaphore, model: str, messages: list[dict], max_tokens: int,
              timeout_s: float) -> dict:
    """One streamed chat completion: answer text, latency, time to first token, output tokens, within
    ``timeout_s`` in all (retries included). Latency and TTFT are those of the attempt that answered; its
    retries are counted in ``retries``."""
    import openai

    async with sem:
        deadline = time.monotonic() + timeout_s
        retries = 0
        while True:
            r = {"answer": "", "latency_ms": 0.0, "ttft_ms": None, "started_at": round(time.time(), 6), "error": None,
                 "finish_reason": None, "_pieces": 0, "_thinking": "", "_usage": None}
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await _attempt(client, model, messages, max_tokens, r)
            except _Retry as e:
                wait = min(e.wait if e.wait is not None else 0.5 * 2 ** retries, RETRY_WAIT_MAX_S)
                if retries < RETRIES and time.monotonic() + wait < deadline:
                    retries += 1
                    await asyncio.sleep(wait)
                    continue
                r["error"] = e.error
            except (TimeoutError, openai.APITimeoutError):
                r["error"] = (f"APITimeoutError: no complete answer within --timeout {timeout_s:g} s "
                              f"({r['_pieces']} pieces received)")
            except openai.APIError as e:
                r["error"] = f"{type(e).__name__}: {one_line(e)}"
            except Exception as e:
                # a 200 reply that is not an OpenAI chat completion stream, or a connection dropped
                # mid-stream (raised by the client's HTTP library, whose exception types vary by
                # version): one failed request, kept in answers.jsonl, not a crash of the whole eval
                r["error"] = f"not an OpenAI chat completion stream ({type(e).__name__}: {one_line(e)})"
            break
    return _row(r, retries)


def _row(r: dict, retries: int) -> dict:
    answer, thinking = r["answer"], r["_thinking"]
    inline = _THINK.match(answer)
    if inline:  # <think>...</think> in the content: the answer is what follows it
        thinking, answer = thinking + inline.group(1), answer[inline.end():]
    usage = r["_usage"]
    row = {"answer": answer, "latency_ms": r["latency_ms"], "ttft_ms": r["ttft_ms"],
           "output_tokens": usage if usage is not None else r["_pieces"], "started_at": r["started_at"],
           "error": r["error"], "finish_reason": r["finish_reason"]}
    if usage is None and r["_pieces"]:
        row["tokens_counted"] = "chunks"  # the server sent no usage: one token per chunk on most servers, not all
    if thinking:
        row["reasoning"] = thinking
    if retries:
        row["retries"] = retries
    return row
