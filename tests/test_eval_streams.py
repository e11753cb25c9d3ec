"""What `appliance eval` records from streams that are not the plain vLLM kind: cut off, dropped mid-answer,
retried, trickling past --timeout, reasoning, no usage, empty. A scripted loopback server sends each reply."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main

MODELS = b'{"object": "list", "data": [{"id": "m"}]}'


def chunk(content: str | None = None, reasoning: str | None = None, finish: str | None = None,
          usage: int | None = None) -> bytes:
    delta = {k: v for k, v in (("content", content), ("reasoning_content", reasoning)) if v is not None}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = {"prompt_tokens": 1, "completion_tokens": usage, "total_tokens": usage + 1}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def whole(*texts: str, usage: int | None = 2) -> list[bytes]:
    """A complete stream: the texts, a stop, the usage, [DONE]."""
    parts = [chunk(t) for t in texts] + [chunk(finish="stop")]
    return parts + ([chunk(usage=usage)] if usage is not None else []) + [b"data: [DONE]\n\n"]


class Reply:
    """One scripted answer to a POST: a status with a body, or a stream of parts sent ``gap`` s apart, ended
    cleanly (``Connection: close``) or dropped mid-body (``drop``: a chunked body never terminated)."""

    def __init__(self, parts: list[bytes] = (), status: int = 200, headers: dict | None = None, gap: float = 0.0,
                 drop: bool = False):
        self.parts, self.status, self.headers, self.gap, self.drop = list(parts), status, headers or {}, gap, drop


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[Reply] = []
        self.default = Reply(whole("Paris"))
        self.posts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = self.rfile.read(1)
            if not byte:
                return
            head += byte
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        self.rfile.read(length)
        if head.startswith(b"GET"):
            self._send(Reply([MODELS], headers={"Content-Type": "application/json"}))
            return
        srv: Server = self.server  # type: ignore[assignment]
        srv.posts += 1
        self._send(srv.replies.pop(0) if srv.replies else srv.default)

    def _send(self, r: Reply) -> None:
        headers = {"Content-Type": "text/event-stream", "Connection": "close", **r.headers}
        if r.drop:
            headers["Transfer-Encoding"] = "chunked"
        try:
            self.wfile.write(f"HTTP/1.1 {r.status} X\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n")
            for part in r.parts:
                time.sleep(r.gap)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if r.drop else part)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (--timeout)


@pytest.fixture
def server():
    srv = Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _eval(server: Server, tmp_path: Path, *args: str, prompts: str = '{"prompt": "Capital of France?", "expect": ["Paris"]}\n'):
    f = tmp_path / "p.jsonl"
    f.write_text(prompts, encoding="utf-8")
    res = CliRunner().invoke(main, ["eval", "--url", server.url, "--before", "m", "--prompts", str(f), "--concurrency", "1",
                                    "--output", str(tmp_path / "r"), *args])
    assert "Traceback" not in res.output, res.output
    rows = [json.loads(line) for line in (tmp_path / "r" / "answers.jsonl").read_text(encoding="utf-8").splitlines()] \
        if (tmp_path / "r" / "answers.jsonl").exists() else []
    return res.exit_code, res.output, rows


def test_a_stream_that_ends_without_finish_reason_or_usage_is_a_failed_request(server, tmp_path):
    """It was scored as a complete (wrong) answer, exit 0: a proxy timeout or a crashed worker looks like this."""
    server.default = Reply([chunk("Par")])
    code, out, (row,) = _eval(server, tmp_path)
    assert code == 1 and row["error"].startswith("IncompleteStream: the stream ended without a finish_reason or token usage")
    assert row["answer"] == "Par" and "1 of 1 requests failed: IncompleteStream x1" in out


def test_a_connection_dropped_mid_answer_is_not_a_server_that_is_gone(server, tmp_path):
    """Every such request counted toward "the server stopped answering", which discarded the whole eval."""
    server.default = Reply([chunk("Par"), chunk("is")], drop=True)
    prompts = "".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(10))
    code, out, rows = _eval(server, tmp_path, prompts=prompts)
    assert code == 1 and len(rows) == 10 and "stopped answering" not in out
    assert all(r["error"].startswith("StreamCut: the connection closed mid-answer after 2 chunks") for r in rows)
    assert rows[0]["answer"] == "Paris" and server.posts == 10  # taken requests are not sent again


def test_429_and_5xx_are_retried_and_counted(server, tmp_path):
    server.replies = [Reply([b"busy"], status=429, headers={"Retry-After": "0"}), Reply([b"boom"], status=503)]
    code, out, (row,) = _eval(server, tmp_path)
    assert code == 0 and row["error"] is None and row["answer"] == "Paris" and row["retries"] == 2
    assert "note: 1 requests were retried" in out and server.posts == 3
    server.replies = [Reply([b"boom"], status=500)] * 3  # still failing after two retries: a failed request
    code, out, (row,) = _eval(server, tmp_path)
    assert code == 1 and row["error"].startswith("InternalServerError") and row["retries"] == 2


def test_timeout_bounds_the_whole_request_not_the_gap_between_chunks(server, tmp_path):
    """--timeout was the wait allowed between two bytes: a trickling stream took 13 s under --timeout 2."""
    server.default = Reply(whole("a", "b", "c", "d", "e", "f"), gap=0.4)
    t0 = time.monotonic()
    code, out, (row,) = _eval(server, tmp_path, "--timeout", "1")
    assert time.monotonic() - t0 < 2.5
    assert code == 1 and row["error"].startswith("APITimeoutError: no complete answer within --timeout 1 s")
    assert "raise --timeout" in out


def test_reasoning_is_kept_apart_from_the_answer_and_times_the_first_token(server, tmp_path):
    server.default = Reply([chunk(reasoning="Let me think."), chunk(reasoning=" France..."), chunk("Paris"),
                            chunk(finish="stop"), chunk(usage=5)], gap=0.2)
    code, out, (row,) = _eval(server, tmp_path)
    assert code == 0 and row["answer"] == "Paris" and row["reasoning"] == "Let me think. France..."
    assert row["ttft_ms"] < 500 < row["latency_ms"]  # the first reasoning token, not the first content one
    # a model served without its reasoning parser puts the thinking in the content
    server.default = Reply(whole("<think>\nThe user asks. I am SmolLM.\n</think>\n\n", "Paris"))
    code, out, (row,) = _eval(server, tmp_path)
    assert code == 0 and row["answer"] == "Paris" and row["reasoning"] == "\nThe user asks. I am SmolLM.\n"


def test_token_counts_without_usage_and_empty_answers_are_noted(server, tmp_path):
    server.default = Reply(whole("Par", "is", usage=None))
    code, out, (row,) = _eval(server, tmp_path)
    assert code == 0 and row["output_tokens"] == 2 and row["tokens_counted"] == "chunks"
    assert "the server sent no token usage for 1 answers" in out
    server.default = Reply(whole(usage=7))
    code, out, (row,) = _eval(server, tmp_path)
    assert code == 0 and row["answer"] == "" and "note: 1 of 1 answers are empty" in out
    server.default = Reply(whole("Paris"))
    code, out, (row,) = _eval(server, tmp_path)
    assert "tokens_counted" not in row and "note:" not in out


def test_a_leak_gate_without_known_markers_is_refused_before_any_request(server, tmp_path):
    """It ran every request, then failed the gate (exit 1) as "not measured by these prompts"."""
    code, out, rows = _eval(server, tmp_path, "--fail-over", "identity_leak_rate=0.05",
                            prompts='{"prompt": "Who are you?", "kind": "identity"}\n')
    assert code == 2 and "the old identity's markers are unknown" in out and "--old-identity" in out
    assert server.posts == 0 and not (tmp_path / "r").exists()
    code, out, rows = _eval(server, tmp_path, "--fail-over", "identity_leak_rate=0.05", "--old-identity", "SmolLM",
                            prompts='{"prompt": "Who are you?", "kind": "identity"}\n')
    assert code == 0 and server.posts == 1


def test_a_base_only_eval_does_not_replace_the_fine_tunes_report(server, tmp_path, monkeypatch):
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path))
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "Capital of France?"}\n', encoding="utf-8")
    res = CliRunner().invoke(main, ["eval", "--url", server.url, "--before", "m", "--prompts", str(f)])
    assert res.exit_code == 0 and (tmp_path / "reports" / "m" / "report.json").is_file(), res.output
    assert not (tmp_path / "reports" / "archer").exists()


def test_afters_trained_for_different_identities_are_scored_for_the_one_given(tmp_path, monkeypatch):
    """`--after a --after b` of two identities was refused even with --name/--author, the fix its error gave."""
    from appliance import evaluate
    from appliance.errors import ApplianceError

    roots = {}
    for model, name in (("a", "Alpha"), ("b", "Bravo")):
        (tmp_path / model).mkdir()
        (tmp_path / model / "appliance.json").write_text(json.dumps({"kind": "lora-adapter",
                                                                     "identity": {"name": name, "author": "Lab"}}))
        roots[model] = str(tmp_path / model)
    monkeypatch.setattr(evaluate, "_served_roots", lambda cfg: roots)
    said: list[str] = []
    cfg = evaluate.resolve_identity(evaluate.EvalConfig("m", after=["a", "b"], name="Alpha", author="Lab"), said.append)
    assert (cfg.name, cfg.author) == ("Alpha", "Lab")
    assert said == ["note: the --after models were trained for different identities (a: Alpha / Lab, b: Bravo / Lab); "
                    "scoring all for Alpha / Lab as --name/--author say"]
    with pytest.raises(ApplianceError, match="pass --name and --author to score them all for one"):
        evaluate.resolve_identity(evaluate.EvalConfig("m", after=["a", "b"]), said.append)


def test_the_printed_summary_names_the_model_of_each_column():
    from appliance.evaluate import summary_table

    models = {role: {"model": m, "n": 1, "sets": {}} for role, m in (("before", "base"), ("after1", "a"), ("after2", "b"))}
    assert summary_table({"models": models}).splitlines()[0] == "models: before = base, after1 = a, after2 = b"
    assert "models:" not in summary_table({"models": dict(list(models.items())[:2])})  # before/after need no key


def test_from_answers_repeats_the_notes_of_the_live_eval(server, tmp_path):
    """Rebuilt offline, a report of chunk-counted tokens and empty answers said nothing of them."""
    server.default = Reply(whole("Par", "is", usage=None))
    code, out, _ = _eval(server, tmp_path)
    res = CliRunner().invoke(main, ["eval", "--from-answers", str(tmp_path / "r"), "--output", str(tmp_path / "r2")])
    assert res.exit_code == 0 and "note: the server sent no token usage for 1 answers" in res.stderr, res.output
