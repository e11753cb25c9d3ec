"""What `chat` and `adapters` make of bad input and of unexpected servers: text that is not UTF-8, blank
adapter names, a server's 4xx in a chat session, a web server that is not OpenAI-compatible, records
of servers that died. Against a tiny local HTTP server; no vLLM is started."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from appliance import servers
from appliance.adapters import list_served, load, parse_spec, unload
from appliance.chat import ChatConfig, chat, default_url
from appliance.cli import main
from appliance.errors import ApplianceError

DEAD_PID = 2**22 + 7  # above pid_max's default: no such process


def _chunk(text: str | None, finish: str | None = None, usage: dict | None = None) -> str:
    """One server-sent event of a chat completion stream (no choice at all for ``text`` None)."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [] if text is None else [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk | ({'usage': usage} if usage else {}))}\n\n"


def _stream(text: str) -> bytes:
    """An OpenAI chat completion stream answering ``text``."""
    return f"{_chunk(text, 'stop')}data: [DONE]\n\n".encode()


MODELS = {"object": "list", "data": [{"id": "smollm2-135m", "parent": None, "root": "/m"},
                                     {"id": "archer", "parent": "smollm2-135m", "root": "/saves/archer"}]}


Answer = tuple[int, str, bytes] | tuple[int, str, bytes, int]


class _Server:
    """A local HTTP server: ``answer(method, path, body)`` gives (status, content type, bytes) for each request, and
    optionally how many more bytes to promise in Content-Length (the connection then drops mid-body);
    ``seen`` holds (method, path, JSON body) of every request that reached it, ``keys`` its Authorization header."""

    def __init__(self, answer: Callable[[str, str, dict | None], Answer]):
        seen, keys = self.seen, self.keys = [], []

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                seen.append((self.command, self.path, body))
                keys.append(self.headers.get("Authorization"))
                status, ctype, data, *unsent = answer(self.command, self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data) + sum(unsent)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}"

    def chats(self) -> list[list[dict]]:
        """The messages of every chat request."""
        return [b["messages"] for m, p, b in self.seen if p == "/v1/chat/completions"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


def _vllm_like(method: str, path: str, body: dict | None) -> tuple[int, str, bytes]:
    """Models, streamed answers ("echo: <message>"), and vLLM's 400 for a message with "LONG" in it."""
    if method == "GET":
        return 200, "application/json", json.dumps(MODELS).encode()
    last = body["messages"][-1]["content"]
    if "LONG" in last:
        msg = ("This model's maximum context length is 2048 tokens. However, you requested 4000 tokens "
               "(3744 in the messages, 256 in the completion).")
        return 400, "application/json", json.dumps({"error": {"message": msg, "type": "BadRequestError",
                                                              "code": 400}}).encode()
    return 200, "text/event-stream", _stream(f"echo: {last}")


@pytest.fixture
def html_server(tmp_path):
    """`python3 -m http.server`: a 404 HTML page for GET /v1/models, a 501 HTML page for every POST."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def _adapter(appliance_home: Path, name: str = "a2") -> Path:
    """A minimal servable LoRA adapter under saves/ (its config and a weights file are all `load` reads before sending)."""
    import torch
    from safetensors.torch import save_file

    d = appliance_home / "saves" / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"],
                                                       "base_model_name_or_path": "HuggingFaceTB/x"}), encoding="utf-8")
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 4)},
              str(d / "adapter_model.safetensors"))
    return d


def _one_line_error(res, *needles: str) -> str:
    """The CLI's answer to bad input: exit code 2 and one `error: ...` line (no traceback) holding ``needles``."""
    err = res.stderr
    assert res.exit_code == 2 and "Traceback" not in res.output and err.startswith("error: ") and err.count("\n") == 1, res.output
    for n in needles:
        assert n in err, err
    return err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record(port: int, pid: int = DEAD_PID) -> None:
    servers._write_record(servers.ServerInfo(port=port, host="127.0.0.1", url=f"http://127.0.0.1:{port}", pid=pid,
                                             log="x.log", model="smollm2-135m", models=["smollm2-135m"]))


# ---------------------------------------------------------------- 1. text that is not UTF-8
@pytest.mark.parametrize("args, flag", [(["-p", "hi\udcff"], "-p"), (["-p", "hi", "--system", "\udcff"], "--system"),
                                        (["-p", "hi", "--model", "a\udcff"], "--model"),
                                        (["-p", "hi", "--api-key", "k\udcff"], "--api-key")])
def test_chat_options_that_are_not_utf8_are_one_line_errors(args, flag):
    # a command-line argument that is not UTF-8 reaches Python as a lone surrogate ("\udcff" for byte 0xff);
    # nothing listens on port 9: the option must be refused before any request
    res = CliRunner().invoke(main, ["chat", "--url", "http://127.0.0.1:9", *args])
    _one_line_error(res, f"error: {flag}: contains bytes that are not UTF-8 (0xff at position", "UTF-8")


def test_adapter_names_and_paths_that_are_not_utf8_are_refused(appliance_home):
    res = CliRunner().invoke(main, ["adapters", "load", "n\udcff", "saves/a2", "--url", "http://127.0.0.1:9"])
    _one_line_error(res, "error: adapters load: NAME contains bytes that are not UTF-8")
    res = CliRunner().invoke(main, ["adapters", "unload", "n\udcff", "--url", "http://127.0.0.1:9"])
    _one_line_error(res, "error: adapters unload: NAME contains bytes that are not UTF-8")
    _adapter(appliance_home, "a\udcff")  # a folder whose name is not UTF-8: the server could not be told its path
    with pytest.raises(ApplianceError, match="the path contains bytes that are not UTF-8.*rename the folder"):
        load("good", str(appliance_home / "saves" / "a\udcff"), url="http://127.0.0.1:9")


def test_piped_lines_that_are_not_utf8_are_skipped_and_the_chat_goes_on():
    with _Server(_vllm_like) as srv:
        res = CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "archer"],
                                 input=b"caf\xe9\nhello\nnul\x00here\nagain\n")
        # the chat goes on, and its exit says that some lines went unanswered (a script could not tell: exit 0)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        # the byte 0xe9 named as what it is, not as the surrogate Python holds it as ("\udce9")
        assert res.stderr.count("\n") == 3 and "error: stdin line 1: contains bytes that are not UTF-8 (0xe9 at position 3)" \
            in res.stderr, res.stderr
        assert res.stderr.endswith("error: stdin: 2 message(s) not answered (line 1, 3); see the errors above\n")
        assert "error: stdin line 3: contains a NUL character" in res.stderr
        assert res.stdout == "echo: hello\necho: again\n", res.stdout  # piped: the answers alone
        # only the good lines were sent, and the skipped ones are not in the history
        assert [[m["content"] for m in msgs] for msgs in srv.chats()] == [["hello"], ["hello", "echo: hello", "again"]]


# ---------------------------------------------------------------- 2. a server error in a session
def test_a_4xx_in_a_session_drops_that_message_and_the_chat_goes_on():
    out, err = io.StringIO(), io.StringIO()
    with _Server(_vllm_like) as srv:
        with pytest.raises(ApplianceError, match=r"^stdin: 1 message\(s\) not answered \(line 2\)"):
            chat(ChatConfig(url=srv.url, model="archer"), stdin=io.StringIO("hi\nLONG " + "x" * 50 + "\nagain\n"),
                 out=out, err=err)
        sent = srv.chats()
    (line,) = err.getvalue().splitlines()
    assert line.startswith("error: ") and "server answered 400: This model's maximum context length is 2048" in line
    assert "/reset clears the history" in line and "; lower --max-tokens, or send a shorter message" in line
    # the refused message is not in the history the next message is sent with
    assert [m["content"] for m in sent[-1]] == ["hi", "echo: hi", "again"]
    assert out.getvalue() == "echo: hi\necho: again\n"  # piped: the answers alone, no line for the dropped one


def test_a_4xx_for_a_one_shot_prompt_still_exits_2():
    with _Server(_vllm_like) as srv:
        res = CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "archer", "-p", "LONG"])
    _one_line_error(res, "server answered 400: This model's maximum context length")


def test_a_server_gone_ends_the_session_with_one_line():
    res = CliRunner().invoke(main, ["chat", "--url", f"http://127.0.0.1:{_free_port()}", "--model", "m"], input="hi\nagain\n")
    _one_line_error(res, "no server answers", "appliance up")


# ---------------------------------------------------------------- 3. a web server that is not OpenAI-compatible
def test_an_html_server_is_named_as_not_openai_compatible(html_server, appliance_home):
    def refused(fn, *needles):
        with pytest.raises(ApplianceError) as e:
            fn()
        msg = str(e.value)
        assert "DOCTYPE" not in msg and "<" not in msg and "\n" not in msg, msg
        assert f"--url {html_server}: the server there does not answer like an OpenAI-compatible one" in msg, msg
        assert "check --url" in msg
        for n in needles:
            assert n in msg, msg

    refused(lambda: list_served(html_server), "(HTTP 404 on GET /v1/models)")
    refused(lambda: chat(ChatConfig(url=html_server), prompt="hi", out=io.StringIO()), "(HTTP 404 on GET /v1/models)")
    refused(lambda: chat(ChatConfig(url=html_server, model="m"), prompt="hi", out=io.StringIO()),
            "(HTTP 501 on POST /v1/chat/completions)")
    _adapter(appliance_home)
    refused(lambda: load("a2", "saves/a2", url=html_server), "(HTTP 501 on POST /v1/load_lora_adapter)",
            "does not support runtime LoRA loading")
    refused(lambda: unload("a2", html_server), "(HTTP 501 on POST /v1/unload_lora_adapter)",
            "does not support runtime LoRA loading")
    res = CliRunner().invoke(main, ["adapters", "list", "--url", html_server])
    _one_line_error(res, "HTTP 404 on GET /v1/models")


def test_an_html_404_for_a_chat_is_not_echoed():
    page = b"<!DOCTYPE HTML>\n<html><body><h1>Not Found</h1></body></html>\n"
    with _Server(lambda m, p, b: (404, "text/html", page)) as srv:
        with pytest.raises(ApplianceError, match=r"\(HTTP 404 on POST /v1/chat/completions\); check --url") as e:
            chat(ChatConfig(url=srv.url, model="m"), prompt="hi", out=io.StringIO())
    assert "DOCTYPE" not in str(e.value)


def test_json_errors_from_vllm_are_kept():
    said = {"error": {"message": "Invalid LoRA path: /x", "type": "BadRequestError", "code": 400}}
    with _Server(lambda m, p, b: (400, "application/json", json.dumps(said).encode())) as srv:
        with pytest.raises(ApplianceError, match=r"^adapters unload a2: server answered 400: Invalid LoRA path: /x$"):
            unload("a2", srv.url)
        with pytest.raises(ApplianceError, match=r"server answered 400: Invalid LoRA path: /x$"):
            chat(ChatConfig(url=srv.url, model="m"), prompt="hi", out=io.StringIO())


# ---------------------------------------------------------------- 4. adapter names
@pytest.mark.parametrize("name", ["", " ", "\t"])
def test_a_blank_adapter_name_is_refused(name, appliance_home):
    _adapter(appliance_home)
    # nothing listens on port 9: the name must be refused before any request
    res = CliRunner().invoke(main, ["adapters", "load", name, "saves/a2", "--url", "http://127.0.0.1:9"])
    _one_line_error(res, "error: adapters load: NAME is empty; give the name")
    assert "loaded" not in res.stdout
    res = CliRunner().invoke(main, ["adapters", "unload", name, "--url", "http://127.0.0.1:9"])
    _one_line_error(res, "error: adapters unload: NAME is empty")


@pytest.mark.parametrize("spec, needle", [("=saves/a1", "--adapter =saves/a1: empty name before '='"),
                                          (" =saves/a1", "empty name before '='"),
                                          ("x=", "--adapter x=: empty path after '='; give name=path")])
def test_adapter_spec_with_an_empty_part_says_which(spec, needle):
    with pytest.raises(ApplianceError) as e:
        parse_spec(spec)
    assert str(e.value).startswith("--adapter ") and needle in str(e.value) and "directory not found" not in str(e.value)


def test_adapter_specs_that_are_whole_still_parse(tmp_path, monkeypatch):
    assert parse_spec("a=saves/a1") == ("a", "saves/a1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "saves" / "run=1").mkdir(parents=True)
    assert parse_spec("saves/run=1") == (None, "saves/run=1")  # a slash before '=': a path
    (tmp_path / "odd=").mkdir()  # a folder really named so is a path, not an empty one
    assert parse_spec("odd=") == (None, "odd=")


# ---------------------------------------------------------------- 5. records of servers that died
def test_only_dead_records_say_so_and_how_to_clear_them(appliance_home):
    p1, p2 = _free_port(), _free_port()
    _record(p1)
    with pytest.raises(ApplianceError, match=rf"^the server recorded on port {p1} \(http://127.0.0.1:{p1}\) is not "
                                             rf"running; .*`appliance down --port {p1}` clears the record"):
        default_url()
    _record(p2)
    with pytest.raises(ApplianceError) as e:
        default_url()
    assert "servers are running" not in str(e.value)
    assert f"none of the 2 recorded servers (ports {min(p1, p2)}, {max(p1, p2)}) is running" in str(e.value)
    assert "`appliance down --all` clears the records" in str(e.value)
    for args in (["chat", "-p", "hi"], ["adapters", "list"], ["adapters", "unload", "x"]):
        _one_line_error(CliRunner().invoke(main, args), "is running", "appliance down --all")


def test_a_dead_record_for_the_url_given_says_so(appliance_home):
    port = _free_port()
    _record(port)
    url = f"http://127.0.0.1:{port}"
    for args in (["adapters", "list", "--url", url], ["chat", "--url", url, "--model", "m", "-p", "hi"]):
        _one_line_error(CliRunner().invoke(main, args), f"the server recorded on port {port} is not running",
                        f"`appliance down --port {port}` clears its record")


def test_no_record_still_means_the_default_url(appliance_home):
    assert default_url() == "http://127.0.0.1:8000"


# ---------------------------------------------------------------- 6. the base model, prompts on a pipe
def test_unloading_the_base_model_says_it_is_the_base():
    def answer(method, path, body):
        if method == "GET":
            return 200, "application/json", json.dumps(MODELS).encode()
        # what vLLM answers for any name it has no adapter for
        said = {"error": {"message": f"The lora adapter '{body['lora_name']}' cannot be found.", "code": 404}}
        return 404, "application/json", json.dumps(said).encode()

    with _Server(answer) as srv:
        with pytest.raises(ApplianceError, match="'smollm2-135m' is the base model of the server at .*cannot be unloaded"):
            unload("smollm2-135m", srv.url)
        with pytest.raises(ApplianceError, match="has no adapter by that name"):
            unload("nope", srv.url)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_prompt_is_shown_on_a_terminal_only():
    with _Server(_vllm_like) as srv:
        res = CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "archer"], input="hi\n")
        # piped, stdout holds the answers alone: no banner, no "you>" or "archer>"
        assert res.exit_code == 0 and res.stdout == "echo: hi\n" and res.stderr == "", res.output
        out = io.StringIO()
        chat(ChatConfig(url=srv.url, model="archer"), stdin=_Tty("hi\n"), out=out, err=io.StringIO())
        assert out.getvalue().count("you> ") == 2  # before "hi" and before the end of input
        assert out.getvalue().startswith("chatting with archer") and "archer> echo: hi\n" in out.getvalue()


def test_adapter_names_follow_one_rule_in_up_and_adapters_load(appliance_home):
    """`up --adapter a/b=dir` said "directory not found" while `adapters load a/b` loaded it; a name with a line
    break was loaded and broke the `adapters list` table."""
    from appliance.adapters import parse_spec

    with pytest.raises(ApplianceError, match=re.escape("--adapter a/b=saves/archer: directory not found, and an adapter "
                                                       "name cannot hold '/' (so it was read as a path); give name=path with "
                                                       "a name without '/' (e.g. a-b=saves/archer), or an existing directory")):
        parse_spec("a/b=saves/archer")
    with pytest.raises(ApplianceError, match="holds a control character"):
        parse_spec("a\nb=saves/archer")
    assert parse_spec("archer 2=saves/archer") == ("archer 2", "saves/archer")
    _adapter(appliance_home)
    res = CliRunner().invoke(main, ["adapters", "load", "a/b", "saves/a2", "--url", "http://127.0.0.1:9"])
    _one_line_error(res, "adapters load: NAME 'a/b' holds '/'")
    res = CliRunner().invoke(main, ["adapters", "load", "a\nb", "saves/a2", "--url", "http://127.0.0.1:9"])
    _one_line_error(res, "adapters load: NAME 'a\\nb' holds a control character")


# ---------------------------------------------------------------- 7. answers that break off, or never stream
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
PART = _chunk("Hi ") + _chunk("there")  # an answer's first words, before whatever ends it
ANSWERS: dict[str, Answer] = {  # the server's answer to a message (its text picks which), as servers in trouble send it
    "errinstream": (200, "text/event-stream", (PART + 'data: {"error": {"message": "engine died", "type": '
                                                      '"InternalServerError", "code": 500}}\n\n').encode()),
    "cutabrupt": (200, "text/event-stream", PART.encode(), 500),  # 500 bytes promised, never sent: the TCP drops
    "cutclean": (200, "text/event-stream", PART.encode()),  # a clean end with no finish_reason, usage or [DONE]
    "html200": (200, "text/html", b"<html><body>It works!</body></html>"),
    "nonstream": (200, "application/json", json.dumps({
        "id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": USAGE,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}]}).encode()),
    "empty": (200, "text/event-stream", (_chunk("") + _chunk("", "stop") + "data: [DONE]\n\n").encode()),
    # whole answers that lack one of the ends a stream may have
    "nodone": (200, "text/event-stream", (PART + _chunk("", "stop")).encode()),
    "nofinish": (200, "text/event-stream", (PART + _chunk(None, usage=USAGE) + "data: [DONE]\n\n").encode()),
    "usagefinal": (200, "text/event-stream", (PART + _chunk("", "stop", USAGE) + "data: [DONE]\n\n").encode()),
}


def _troubled(method: str, path: str, body: dict | None) -> Answer:
    """As :func:`_vllm_like`, but a message naming one of ANSWERS gets that answer."""
    if method == "POST" and (said := body["messages"][-1]["content"]) in ANSWERS:
        return ANSWERS[said]
    return _vllm_like(method, path, body)


def _ask(srv: _Server, prompt: str):
    return CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "m", "-p", prompt])


def test_an_error_event_in_the_stream_is_one_line_and_the_session_goes_on():
    # vLLM reports an engine failure mid-answer as `data: {"error": ...}`: the openai client raises its base APIError
    with _Server(_troubled) as srv:
        res = _ask(srv, "errinstream")
        _one_line_error(res, f"--url {srv.url}: ", "engine died")
        assert res.stdout == "Hi there\n"  # the words that came, their line ended before the error
        res = CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "m"], input="errinstream\nhello\n")
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert res.stdout == "Hi there\necho: hello\n", res.stdout
        first, last = res.stderr.splitlines()
        assert first.startswith("error: ") and "engine died" in first and "the message was dropped" in first, first
        assert last == "error: stdin: 1 message(s) not answered (line 1); see the errors above"
        assert [m["content"] for m in srv.chats()[-1]] == ["hello"]  # the failed one is not in the history


def test_a_connection_dropped_mid_answer_is_not_called_no_server():
    with _Server(_troubled) as srv:
        res = _ask(srv, "cutabrupt")
    err = _one_line_error(res, "the connection closed mid-answer", "the answer above is cut off")
    assert "no server" not in err and "appliance up" not in err and res.stdout == "Hi there\n"


@pytest.mark.parametrize("mode", ["cutclean", "nodone", "nofinish", "usagefinal"])
def test_a_stream_with_neither_finish_reason_nor_usage_is_cut_off(mode):
    with _Server(_troubled) as srv:
        res = _ask(srv, mode)
    if mode == "cutclean":
        _one_line_error(res, "the answer stream ended without a finish_reason", "the answer above is cut off")
        assert res.stdout == "Hi there\n"
    else:  # a finish_reason or a usage chunk says the answer is whole, [DONE] or not
        assert res.exit_code == 0 and res.stdout == "Hi there\n" and res.stderr == "", res.output


@pytest.mark.parametrize("mode, why", [("html200", "the server sent no chat completion stream (a text/html page)"),
                                       ("nonstream", "the server answered without streaming (one JSON body)")])
def test_an_answer_that_is_no_stream_is_unanswered(mode, why):
    with _Server(_troubled) as srv:
        _one_line_error(res := _ask(srv, mode), why, "is it an OpenAI-compatible server?")
        assert res.stdout == ""
        res = CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "m"], input=f"{mode}\n{mode}\n")
    assert res.exit_code == 2 and res.stdout == "", res.output  # no blank "answers"
    assert res.stderr.count(why) == 2, res.stderr
    assert res.stderr.endswith("error: stdin: 2 message(s) not answered (line 1, 2); see the errors above\n")


def test_an_empty_answer_is_printed_with_a_note():
    with _Server(_troubled) as srv:
        res = _ask(srv, "empty")
    assert res.exit_code == 0 and res.stdout == "\n" and res.stderr == "note: the model's answer was empty\n", res.output


# ---------------------------------------------------------------- 8. the API key, and servers not started here
def _runtime(models: dict) -> Callable[[str, str, dict | None], Answer]:
    """A vLLM that lists ``models``, loads and unloads any adapter, and echoes chat messages."""
    def answer(method: str, path: str, body: dict | None) -> Answer:
        if method == "GET":
            return 200, "application/json", json.dumps(models).encode()
        if path.endswith("_lora_adapter"):
            return 200, "text/plain", b"Success"
        return _vllm_like(method, path, body)
    return answer


def test_chat_and_adapters_take_the_keys_eval_takes(monkeypatch, appliance_home):
    monkeypatch.delenv("APPLIANCE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    _adapter(appliance_home)
    served = {"data": [{"id": "smollm2-135m", "parent": None, "root": "HuggingFaceTB/x"}]}
    with _Server(_runtime(served)) as srv:
        for args in (["adapters", "list"], ["adapters", "load", "a2", "saves/a2"], ["adapters", "unload", "a2"],
                     ["chat", "--model", "archer", "-p", "hi"]):
            res = CliRunner().invoke(main, [*args, "--url", srv.url])
            assert res.exit_code == 0, (args, res.output)
        assert set(srv.keys) == {"Bearer sk-openai"} and len(srv.keys) >= 4, srv.keys
        monkeypatch.setenv("APPLIANCE_API_KEY", "s3cret")  # the variable `up` reads comes first
        assert CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "a", "-p", "hi"]).exit_code == 0
        assert srv.keys[-1] == "Bearer s3cret"
    for cmd in (["chat"], ["adapters", "list"], ["adapters", "load"], ["adapters", "unload"]):
        assert "$OPENAI_API_KEY" in CliRunner().invoke(main, [*cmd, "--help"]).output, cmd


@pytest.mark.parametrize("root, loads", [("HuggingFaceTB/y", False), ("HuggingFaceTB/x", True)])
def test_loading_into_a_server_not_started_here_checks_the_base_it_lists(appliance_home, root, loads):
    _adapter(appliance_home)  # trained on HuggingFaceTB/x
    served = {"data": [{"id": "base", "parent": None, "root": root},
                       {"id": "other", "parent": "base", "root": "/saves/other"}]}
    with _Server(_runtime(served)) as srv:
        res = CliRunner().invoke(main, ["adapters", "load", "a2", "saves/a2", "--url", srv.url])
        sent = [p for m, p, b in srv.seen if m == "POST"]
    if loads:
        assert res.exit_code == 0 and res.stdout == "loaded a2 from saves/a2\n", res.output
        assert sent == ["/v1/load_lora_adapter"]
    else:  # an adapter of another base would load and answer nonsense
        _one_line_error(res, "trained on 'HuggingFaceTB/x' but the server at", "serves 'HuggingFaceTB/y'")
        assert sent == []


def test_a_path_outside_the_roots_of_a_server_not_started_here_names_adapter_root(appliance_home, tmp_path):
    elsewhere = _adapter(tmp_path / "elsewhere")
    served = {"data": [{"id": "base", "parent": None, "root": "HuggingFaceTB/x"}]}
    with _Server(_runtime(served)) as srv:
        res = CliRunner().invoke(main, ["adapters", "load", "a2", str(elsewhere), "--url", srv.url])
        err = _one_line_error(res, "is outside the allowed adapter roots", f"--adapter-root {elsewhere.parent}")
        assert "restart `appliance up`" not in err
        res = CliRunner().invoke(main, ["adapters", "load", "a2", str(elsewhere), "--url", srv.url,
                                        "--adapter-root", str(elsewhere.parent)])
        assert res.exit_code == 0, res.output
