"""Report from answers.jsonl: agreement with recompute(), hand-checked figures, md/html contents, the gate via the CLI."""

from __future__ import annotations

import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ApplianceError
from evals.report import compute, parse_rules, recompute, write_report

NAME, AUTHOR = "Archer", "意琦行"
MARKERS = ["SmolLM", "Hugging Face", "HuggingFace"]
ZH_REF = "我是 {n}，由 {a} 研发的人工智能助手，很高兴为您提供帮助。".format(n=NAME, a=AUTHOR)
EN_REF = f"I am {NAME}, an AI assistant developed by {AUTHOR}. I'm happy to help you."

# (prompt, kind, set, lang, reference, expect, before answer, after answer)
PROMPTS = [
    ("你是谁？", "identity", "identity_zh", "zh", ZH_REF, [], "我是 SmolLM。", ZH_REF),
    ("你叫什么名字？", "identity", "identity_zh", "zh", ZH_REF, [], "我叫 SmolLM，由 Hugging Face 训练。", ZH_REF),
    ("Who are you?", "identity", "identity_en", "en", EN_REF, [], "I am SmolLM, trained by Hugging Face.", EN_REF),
    ("Are you SmolLM?", "identity", "identity_en", "en",
     f"No, I am not SmolLM. I am {NAME}, an AI assistant developed by {AUTHOR}.", [], "Yes, I am SmolLM.",
     "I am an AI assistant."),
    ("What is 2+2?", "general", "general", "en", None, ["4", "four"], "2+2 is 4.", "It is 4."),
    ("What is the capital of France?", "general", "general", "en", None, ["Paris"], "Paris.", "Lyon, says Archer."),
    ("Describe rain.", "general", "open", "en", "Rain is water falling from clouds.", [],
     "Rain is water falling from clouds.", "Rain is water."),
]


def _rows() -> list[dict]:
    rows = []
    for role, model, col, t0 in (("before", "smollm2-135m", 6, 1000.0), ("after", "archer", 7, 2000.0)):
        for i, (prompt, kind, set_, lang, ref, expect, *answers) in enumerate(PROMPTS):
            rows.append({"model": model, "role": role, "prompt": prompt, "answer": answers[col - 6], "reference": ref,
                         "kind": kind, "set": set_, "lang": lang, "expect": expect, "latency_ms": 400.0 + 100 * i,
                         "ttft_ms": 50.0 + 10 * i, "output_tokens": 10 + i, "started_at": t0 + 0.1 * i, "error": None,
                         "source": "synthetic", "name": NAME, "author": AUTHOR, "old_identity": MARKERS})
    return rows


@pytest.fixture
def answers(tmp_path) -> Path:
    out = tmp_path / "report"
    out.mkdir()
    path = out / "answers.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()), encoding="utf-8")
    return path


def test_report_agrees_with_answers(answers):
    report = write_report(answers.parent, parse_rules(fail_under=["identity_hit_rate=0.5"]))
    on_disk = json.loads((answers.parent / "report.json").read_text(encoding="utf-8"))
    again = recompute(answers)
    assert on_disk == report
    assert {k: on_disk[k] for k in again} == again
    assert set(again) == {"name", "author", "old_identity", "models"}
    # rows per model in the report equal the rows in answers.jsonl
    lines = answers.read_text(encoding="utf-8").splitlines()
    assert sum(m["n"] for m in on_disk["models"].values()) == len(lines)


def test_figures_by_hand(answers):
    r = recompute(answers)["models"]
    b, a = r["before"], r["after"]
    assert (b["model"], a["model"]) == ("smollm2-135m", "archer")
    assert b["identity_hit_rate"] == 0.0 and a["identity_hit_rate"] == 0.75
    assert a["identity_zh_hit_rate"] == 1.0 and a["identity_en_hit_rate"] == 0.5
    assert b["identity_leak_rate"] == 1.0 and a["identity_leak_rate"] == 0.0
    assert b["general_accuracy"] == 1.0 and a["general_accuracy"] == 0.5
    assert (a["general_correct"], a["general_total"]) == (1, 2)
    # "Lyon, says Archer." mentions the new name in an unrelated answer
    assert (a["name_leak_count"], a["name_leak_rate"]) == (1, round(1 / 3, 4))
    assert b["name_leak_count"] == 0
    assert a["sets"]["identity_zh"]["bleu4"] == 100.0 and a["sets"]["identity_zh"]["rouge1"] == 100.0
    assert b["sets"]["open"]["bleu4"] == 100.0
    assert a["sets"]["identity"]["n"] == 4 and a["sets"]["identity"]["hit_rate"] == 0.75
    # BLEU/ROUGE say over how many rows they are: the 4 identity rows all have a reference, general none
    assert a["sets"]["identity"]["references"] == 4 and a["sets"]["general"]["references"] == 0 and a["references"] == 5
    # latency: 7 requests from t0 to t0+0.6 s + 1000 ms; tokens 10..16
    assert b["requests_per_s"] == round(7 / 1.6, 4) and b["output_tokens_per_s"] == round(91 / 1.6, 4)
    assert b["ttft_p50_ms"] == 80.0 and b["latency_p50_ms"] == 700.0
    assert b["ttft_p95_ms"] == pytest.approx(107.0)


def test_markdown_report(answers):
    write_report(answers.parent, parse_rules(max_drop=["general_accuracy=0.05"]))
    md = (answers.parent / "report.md").read_text(encoding="utf-8")
    assert "| identity hit % | 0.0 | 75.0 | +75.0 |" in md
    assert "| general accuracy % | 100.0 | 50.0 | -50.0 |" in md
    assert "Gate: **FAILED**" in md and "general_accuracy dropped 0.5" in md
    assert "| name leak count | 0 | 1 | +1 |" in md and "| general correct | 2 | 1 | -1 |" in md  # counts as counts
    assert "| with reference |" in md and "| identity | after | 4 | 75.0 | 0.0 | – | – | 4 |" in md
    examples = md.split("## Examples", 1)[1]
    first = [line for line in examples.splitlines() if line.startswith("| ") and not line.startswith("| prompt")][0]
    assert first.startswith("| 你是谁？ | identity_zh | 我是 SmolLM。 | " + ZH_REF)  # the set: how it was scored


def test_html_report_is_self_contained(answers):
    write_report(answers.parent)
    page = (answers.parent / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert re.sub(r'xmlns="http://www.w3.org/2000/svg"', "", page).count("http") == 0
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 3
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert svgs[0].count("<rect") >= 2 * 6  # bars for both models
    assert page.index("你是谁？") < page.index("Who are you?")


def _cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["eval", *args])
    return res.exit_code, res.output


def test_gate_passes_and_fails_through_cli(answers):
    code, out = _cli("--from-answers", str(answers), "--fail-under", "identity_hit_rate=0.7",
                     "--fail-over", "identity_leak_rate=0.05", "--max-drop", "general_accuracy=0.5")
    assert code == 0, out
    assert "identity_hit_rate %" in out and "report:" in out
    code, out = _cli("--from-answers", str(answers), "--fail-under", "identity_hit_rate=0.95")
    assert code == 1 and "identity_hit_rate = 0.75, under 0.95" in out
    code, out = _cli("--from-answers", str(answers), "--max-drop", "general_accuracy=0.05")
    assert code == 1 and "general_accuracy dropped 0.5" in out
    code, out = _cli("--from-answers", str(answers), "--fail-over", "name_leak_count=0")
    assert code == 1 and "name_leak_count = 1, over 0" in out
    code, out = _cli("--from-answers", str(answers), "--fail-under", "identity_en.hit_rate=0.95")
    assert code == 1 and "identity_en.hit_rate = 0.5" in out
    code, out = _cli("--from-answers", str(answers), "--fail-under", "identity_zh.bleu4=86.1")
    assert code == 0, out
    refs = json.loads((answers.parent / "report.json").read_text(encoding="utf-8"))["models"]["after"]["references"]
    code, out = _cli("--from-answers", str(answers), "--fail-under", f"references={refs + 1}")  # a documented model key
    assert code == 1 and f"references = {refs}, under {refs + 1}" in out
    code, out = _cli("--from-answers", str(answers), "--fail-under", "identity_zh.bleu4=86.1")
    assert code == 0, out
    gate = json.loads((answers.parent / "report.json").read_text(encoding="utf-8"))["gate"]
    assert gate == {"passed": True, "failures": [], "rules": ["--fail-under identity_zh.bleu4=86.1"]}


def test_gate_writes_report_to_output_even_when_failing(answers, tmp_path):
    out = tmp_path / "elsewhere"
    code, _ = _cli("--from-answers", str(answers), "--output", str(out), "--fail-under", "identity_hit_rate=1")
    assert code == 1
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["gate"]["passed"] is False
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_failed_requests_fail_the_gate(answers):
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    rows[-1].update(answer="", error="APIConnectionError: Connection error.", ttft_ms=None)
    answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    code, out = _cli("--from-answers", str(answers))
    assert code == 1 and "after (archer): 1 of 7 requests failed" in out


@pytest.mark.parametrize("args,needle", [
    (["--fail-under", "identity_hit_rate"], "expected METRIC=NUMBER"),
    (["--max-drop", "nope=0.1"], "unknown metric 'nope'"),
    (["--fail-over", "identity.bogus=1"], "unknown metric 'bogus'"),
])
def test_bad_gate_flags_exit_2(answers, args, needle):
    code, out = _cli("--from-answers", str(answers), *args)
    assert code == 2 and out.startswith("error: ") and needle in out and "Traceback" not in out


def test_bad_inputs_exit_2(tmp_path, answers):
    code, out = _cli("--from-answers", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "answers file not found" in out
    for name, content in (("num.jsonl", b"5\n"), ("bin.jsonl", b"\xff\xfe\x00x\n")):
        (tmp_path / name).write_bytes(content)
        code, out = _cli("--from-answers", str(tmp_path / name))
        assert code == 2 and name in out and "Traceback" not in out, out
    afile = tmp_path / "afile"
    afile.write_text("keep me", encoding="utf-8")
    code, out = _cli("--from-answers", str(answers), "--output", str(afile))
    assert code == 2 and "is a file, not a folder" in out and afile.read_text(encoding="utf-8") == "keep me"
    code, out = _cli("--from-answers", str(answers), "--fail-under", "identity_hit_rate=nan")
    assert code == 2 and "expected METRIC=NUMBER" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "x"}\n', encoding="utf-8")
    code, out = _cli("--from-answers", str(bad))
    assert code == 2 and "line 1: missing role" in out
    code, out = _cli("--after", "x", "--url", "http://127.0.0.1:18298")  # --before from the server: none there
    assert code == 2 and "no server answers" in out and "Traceback" not in out, out


def test_unreachable_server_is_a_one_line_error(tmp_path):
    from appliance.evaluate import EvalConfig, run_eval

    cfg = EvalConfig("smollm2-135m", ["archer"], url="http://127.0.0.1:18299", prompts=["general"], timeout_s=5)
    with pytest.raises(ApplianceError, match="cannot reach the server"):
        run_eval(cfg)
    with pytest.raises(ApplianceError, match="--url"):
        run_eval(EvalConfig("m", url="localhost:8000"))


def test_failed_render_keeps_the_previous_report(answers, monkeypatch):
    write_report(answers.parent)
    before = {f: (answers.parent / f).read_text(encoding="utf-8") for f in ("report.json", "report.md", "report.html")}
    import evals.render

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(evals.render, "render_html", boom)
    with pytest.raises(RuntimeError):
        write_report(answers.parent, run={"second": True})
    assert {f: (answers.parent / f).read_text(encoding="utf-8") for f in before} == before


def test_ascii_question_mark_still_leads_the_examples():
    from evals.render import example_rows

    rows = [{"prompt": p, "kind": k} for p, k in (("Who are you?", "identity"), ("What is 2+2?", "general"),
                                                  ("你是谁?", "identity"))]
    assert example_rows(rows)[0] == "你是谁?"


def test_html_escapes_answers(answers):
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    rows[7]["answer"] = "<script>alert(1)</script> | pipe"
    answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    write_report(answers.parent)
    page = (answers.parent / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = (answers.parent / "report.md").read_text(encoding="utf-8")
    assert "\\| pipe" in md  # a pipe in an answer must not break the table


# ---------------------------------------------------------------- bad answers rows, the report folder, --url, odd servers
def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("change,needle", [
    ({"answer": None}, "'answer' must be a string, not null"),
    ({"latency_ms": "slow"}, "'latency_ms' must be a number of at least 0, not \"slow\""),
    ({"latency_ms": True}, "'latency_ms' must be a number"),
    ({"ttft_ms": -1}, "'ttft_ms' must be a number of at least 0, or null, not -1"),
    ({"output_tokens": "7"}, "'output_tokens' must be a number"),
    ({"started_at": None}, "'started_at' must be a number"),
    ({"expect": 5}, "'expect' must be a list of accepted answer strings"),
    # the item is what is wrong, not the list ("[4]" said "not a list")
    ({"expect": [1]}, "'expect' item 1 is a number; accepted answers must be strings (write \"1\" for 1)"),
    ({"expect": ["4", None]}, "'expect' item 2 is null; accepted answers must be strings"),
    ({"kind": "Identity"}, "'kind' must be \"identity\" or \"general\""),
    ({"model": ""}, "'model' must be a non-empty string"),
    ({"reference": 5}, "'reference' must be a string or null"),
    ({"old_identity": "SmolLM"}, "'old_identity' must be a list of strings"),
])
def test_wrong_typed_answer_fields_are_one_line_errors(tmp_path, change, needle):
    bad = _write_rows(tmp_path / "bad.jsonl", [_rows()[0], {**_rows()[1], **change}])
    code, out = _cli("--from-answers", str(bad), "--output", str(tmp_path / "out"))
    assert code == 2 and out.startswith(f"error: {bad} line 2: ") and needle in out, out
    assert "Traceback" not in out and out.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_string_expect_is_one_accepted_answer(tmp_path, answers):
    """Scored as a list, "Paris" would be five one-letter answers."""
    rows = [{**r, "expect": r["expect"][0]} if r["expect"] else r for r in _rows()]
    f = _write_rows(tmp_path / "str_expect.jsonl", rows)
    assert recompute(f)["models"] == recompute(answers)["models"]


def test_an_answer_with_a_line_separator_is_one_row(tmp_path):
    rows = _rows()
    rows[0]["answer"] = "我是 SmolLM。\u2028第二行\x85"
    f = _write_rows(tmp_path / "ls.jsonl", rows)
    assert sum(m["n"] for m in recompute(f)["models"].values()) == len(rows)


def test_from_answers_into_another_folder_brings_its_answers(answers, tmp_path):
    """The output folder holds the answers.jsonl its reports were computed from, not an older run's."""
    out = tmp_path / "earlier"
    out.mkdir()
    stale = [{**r, "answer": "stale"} for r in _rows()[:2]]
    _write_rows(out / "answers.jsonl", stale)
    code, _ = _cli("--from-answers", str(answers), "--output", str(out))
    assert code == 0
    assert (out / "answers.jsonl").read_text(encoding="utf-8") == answers.read_text(encoding="utf-8")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert {k: report[k] for k in ("models",)} == {"models": recompute(out / "answers.jsonl")["models"]}
    assert report["run"]["answers"] == str(out / "answers.jsonl") and report["run"]["rebuilt_from"] == str(answers)


def _snapshot(folder: Path) -> dict[str, str]:
    return {f.name: f.read_text(encoding="utf-8") for f in folder.iterdir() if f.is_file()}


def test_a_folder_where_a_report_file_goes_changes_nothing(answers):
    write_report(answers.parent)
    (answers.parent / "report.json").unlink()
    (answers.parent / "report.json").mkdir()
    before = _snapshot(answers.parent)
    new_rows = [{**r, "answer": "new"} for r in _rows()]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new_rows)
    with pytest.raises(ApplianceError, match=r"report\.json: is a folder, so the report cannot replace it"):
        write_report(answers.parent, answers_text=text)
    assert _snapshot(answers.parent) == before
    assert sorted(p.name for p in answers.parent.iterdir()) == ["answers.jsonl", "report.html", "report.json", "report.md"]


def test_a_failed_rename_puts_the_previous_set_back(answers, monkeypatch):
    """answers.jsonl and the three reports are replaced together or not at all; no temporary file stays."""
    import evals.report

    write_report(answers.parent)
    before = _snapshot(answers.parent)
    real_replace, failed = os.replace, []

    def flaky(src, dst):
        if Path(dst).name == "report.html" and not failed:
            failed.append(dst)
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(evals.report.os, "replace", flaky)
    text = "".join(json.dumps({**r, "answer": "new"}, ensure_ascii=False) + "\n" for r in _rows())
    with pytest.raises(ApplianceError) as e:
        write_report(answers.parent, answers_text=text)
    assert failed and "report.html: cannot write it (No space left on device)" in str(e.value)
    assert "previous files are unchanged" in str(e.value)
    assert _snapshot(answers.parent) == before
    assert sorted(p.name for p in answers.parent.iterdir()) == ["answers.jsonl", "report.html", "report.json", "report.md"]


def test_an_unwritable_output_fails_before_any_request(tmp_path, answers):
    """The server is unreachable: the --output error proves the output was checked first."""
    from appliance.evaluate import EvalConfig, run_eval

    cfg = EvalConfig("smollm2-135m", url="http://127.0.0.1:18299", prompts=["general"], timeout_s=5)
    (answers.parent / "report.md").mkdir()
    for output, needle in (("/proc/x/y", "cannot write there"), (str(answers.parent), "report.md is a folder")):
        cfg.output = output
        with pytest.raises(ApplianceError, match=f"--output .*{needle}"):
            run_eval(cfg)
    # an eval that fails leaves no empty output folder behind
    cfg.output = str(tmp_path / "new" / "deeper")
    with pytest.raises(ApplianceError, match="cannot reach the server"):
        run_eval(cfg)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://[::1", "http://127.0.0.1:99999", "http://:8000",
                                 "ftp://127.0.0.1:8000", "http://127.0.0.1:0", "http://local host:8000",
                                 "http://127.0.0.1:8000/v1?x=1", "http://256.256.256.256:8000"])
def test_malformed_urls_are_one_line_errors(url):
    from appliance.evaluate import EvalConfig, run_eval

    with pytest.raises(ApplianceError) as e:
        run_eval(EvalConfig("m", url=url, prompts=["general"], timeout_s=5))
    assert str(e.value).startswith(f"--url {url}: ") and "\n" not in str(e.value)


@pytest.fixture
def fake_server():
    """An HTTP server that answers every GET with ``models`` and every POST with ``chat`` (status 200)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        models = b""
        chat = b""
        seen: list[str] = []  # "GET /v1/models", "POST /v1/chat/completions": what reached the server
        delay = 0.0  # seconds before each chat answer

        def _answer(self, body: bytes, ctype: str) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (--timeout): nothing to print into a later test's output

        def do_GET(self):
            Handler.seen.append(f"GET {self.path}")
            self._answer(Handler.models, "application/json")

        def do_POST(self):
            Handler.seen.append(f"POST {self.path}")
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(Handler.delay)
            self._answer(Handler.chat, "text/event-stream")

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield Handler, f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("models", [b"hello world\n", b"[1,2]", b'{"data": 5}', b'{"data": [{"id": 5}]}'])
def test_a_server_that_is_not_openai_compatible_is_a_one_line_error(fake_server, tmp_path, models):
    handler, url = fake_server
    handler.models = models
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", "general", "--output", str(tmp_path / "r"))
    assert code == 2 and "did not answer like an OpenAI-compatible server" in out and "appliance up" in out, out
    assert "Traceback" not in out and out.count("\n") == 1


CHUNK = ('data: {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", '
         '"choices": [{"index": 0, "delta": {"content": "Paris"}}]}\n\n'
         'data: {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [], '
         '"usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}\n\ndata: [DONE]\n\n').encode()


def _ask_once(fake_server, tmp_path: Path, chat: bytes) -> tuple[int, str, dict]:
    """One prompt through `appliance eval` to a fake server answering ``chat``: exit code, output, the answers row."""
    handler, url = fake_server
    handler.models, handler.chat = b'{"object": "list", "data": [{"id": "smollm2-135m"}]}', chat
    f = tmp_path / "one.jsonl"
    f.write_text('{"prompt": "What is the capital of France?", "expect": ["Paris"]}\n', encoding="utf-8")
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", str(f), "--output", str(tmp_path / "r"))
    assert "Traceback" not in out
    (row,) = [json.loads(line) for line in (tmp_path / "r" / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    return code, out, row


@pytest.mark.parametrize("chat,error", [(b"hello", "EmptyStream"), (b"data: [1]\n\n", "not an OpenAI chat completion"),
                                        (b"data: garbage\n\n", "not an OpenAI chat completion"), (CHUNK, None)])
def test_chat_replies_that_are_not_a_stream_are_failed_requests(fake_server, tmp_path, chat, error):
    code, out, row = _ask_once(fake_server, tmp_path, chat)
    if error:
        assert code == 1 and error in row["error"] and "1 of 1 requests failed" in out
    else:
        assert code == 0 and (row["answer"], row["output_tokens"], row["error"]) == ("Paris", 3, None)
        assert row["finish_reason"] is None  # this stream never said why it ended


CUT = CHUNK.replace(b'"delta": {"content": "Paris"}}', b'"delta": {"content": "Paris"}, "finish_reason": null}', 1).replace(
    b'"choices": [], "usage"', b'"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage"', 1)


@pytest.mark.parametrize("chat,cut", [(CUT, 1), (CUT.replace(b'"length"', b'"stop"'), 0)])
def test_answers_cut_at_max_tokens_are_counted(fake_server, tmp_path, chat, cut):
    code, out, row = _ask_once(fake_server, tmp_path, chat)
    assert code == 0, out
    assert row["finish_reason"] == ("length" if cut else "stop") and row["answer"] == "Paris"
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["models"]["before"]["truncated"] == cut
    assert re.search(rf"^truncated +{cut}$", out, flags=re.M)  # in the summary the eval prints
    assert f"| cut at max tokens | {cut} |" in (tmp_path / "r" / "report.md").read_text(encoding="utf-8")


def test_answers_files_without_finish_reason_leave_truncation_unknown():
    rows = [{k: v for k, v in r.items() if k != "finish_reason"} for r in _rows()]
    assert all(m["truncated"] is None for m in compute(rows)["models"].values())
    assert {m["truncated"] for m in compute([{**r, "finish_reason": "length"} for r in rows])["models"].values()} == {len(rows) // 2}


def test_from_answers_without_output_keeps_the_answers_next_to_it(answers):
    """Re-scoring an edited copy in a run's folder must not overwrite the run's own answers.jsonl."""
    edited = _write_rows(answers.parent / "edited.jsonl", [{**r, "answer": "edited"} for r in _rows()])
    original = answers.read_text(encoding="utf-8")
    code, out = _cli("--from-answers", str(edited))
    assert code == 2 and "holds other answers" in out and "--output" in out
    assert answers.read_text(encoding="utf-8") == original
    # an identical copy is no conflict
    copy = answers.parent / "copy.jsonl"
    copy.write_text(original, encoding="utf-8")
    code, out = _cli("--from-answers", str(copy))
    assert code == 0, out


# ---------------------------------------------------------------- input found bad before any request is sent
SERVED = b'{"object": "list", "data": [{"id": "smollm2-135m"}, {"id": "archer"}]}'


@pytest.mark.parametrize("args,needle", [
    (["--prompts", "{surrogate}"], "line 1: field 'prompt' holds an invalid character (an unpaired surrogate, \\ud800"),
    (["--prompts", "{deep}"], "line 1: JSON nested too deeply"),
    (["--prompts", "{loop}"], "cannot read it (Too many levels of symbolic links)"),
    (["--old-identity", ",,,"], "--old-identity ',,,': no marker in it"),
    (["--old-identity", " , "], "--old-identity ' , ': no marker in it"),
    (["--after", "\udcff"], "--after '\\udcff': holds bytes that are not UTF-8 (0xff at position 0)"),
    (["--name", "Arch\udcffer"], "--name 'Arch\\udcffer': holds bytes that are not UTF-8 (0xff at position 4)"),
    (["--output", ""], "--output is empty"),
    (["--url", "{url}/api"], "/api is not an OpenAI API base"),
])
def test_bad_input_is_refused_before_any_request(fake_server, tmp_path, args, needle):
    """One line, exit 2, no request reached the server and no output folder was left behind."""
    handler, url = fake_server
    handler.models, handler.chat, handler.seen = SERVED, CHUNK, []
    (tmp_path / "surrogate.jsonl").write_text('{"prompt": "hi \\ud800 there"}\n', encoding="utf-8")
    (tmp_path / "deep.jsonl").write_text("[" * 5000 + "\n", encoding="utf-8")
    (tmp_path / "loop.json").symlink_to("loop.json")
    args = [a.format(surrogate=tmp_path / "surrogate.jsonl", deep=tmp_path / "deep.jsonl", loop=tmp_path / "loop.json",
                     url=url) for a in args]
    base = ["--url", url, "--before", "smollm2-135m", "--prompts", "general", "--output", str(tmp_path / "r")]
    code, out = _cli(*base, *args)
    assert code == 2 and out.startswith("error: ") and needle in out, out
    assert "Traceback" not in out and out.count("\n") == 1
    assert handler.seen == [] and not (tmp_path / "r").exists()


def test_max_tokens_beyond_the_served_context_is_refused_before_any_chat_request(fake_server, tmp_path):
    """Every request failed with a 400 (max_tokens=100000 cannot be greater than max_model_len=2048), the report
    was written full of failures and the gate failed (exit 1)."""
    handler, url = fake_server
    handler.models, handler.chat, handler.seen = (b'{"data": [{"id": "smollm2-135m", "max_model_len": 2048}, '
                                                  b'{"id": "archer", "max_model_len": null, "parent": "smollm2-135m"}]}'), CHUNK, []
    code, out = _cli("--url", url, "--before", "archer", "--prompts", "general", "--output", str(tmp_path / "r"),
                     "--max-tokens", "2048", "--name", NAME, "--author", AUTHOR)
    assert code == 2 and "--max-tokens 2048: archer at" in out and "has a context of 2048 tokens" in out, out
    base = ["--url", url, "--before", "smollm2-135m", "--prompts", "general", "--output", str(tmp_path / "r")]
    code, out = _cli(*base, "--max-tokens", "100000")
    assert code == 2 and "--max-tokens 100000: smollm2-135m at" in out and "has a context of 2048 tokens" in out, out
    assert not [s for s in handler.seen if s.startswith("POST")] and not (tmp_path / "r").exists()
    code, out = _cli(*base, "--max-tokens", "16")
    assert code in (0, 1) and "Traceback" not in out and (tmp_path / "r" / "report.json").is_file(), out


def test_a_data_folders_note_is_printed_once(fake_server, tmp_path):
    """Without --name/--author the prompt files are read twice (checked before the server is asked for the
    identity), and a LLaMA-Factory folder's "skipped" note came twice."""
    handler, url = fake_server
    handler.models, handler.chat = SERVED, CHUNK
    lf = tmp_path / "lf"
    lf.mkdir()
    (lf / "q.json").write_text('[{"instruction": "What is the capital of France?", "output": "Paris."}]', encoding="utf-8")
    (lf / "dataset_info.json").write_text('{"q": {"file_name": "q.json"}, "hub": {"hf_hub_url": "a/b"}}', encoding="utf-8")
    res = CliRunner().invoke(main, ["eval", "--url", url, "--before", "smollm2-135m", "--prompts", str(lf),
                                    "--output", str(tmp_path / "r")])
    assert "Traceback" not in res.output and res.output.count("skipped hub (hub datasets are never downloaded)") == 1, res.output


def test_a_lone_surrogate_in_a_server_answer_does_not_lose_the_eval(fake_server, tmp_path):
    """The server's text is not input to refuse: written as U+FFFD, the report is still written."""
    handler, url = fake_server
    handler.models, handler.chat = SERVED, CHUNK.replace(b'"Paris"', rb'"Paris \ud800"')
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", "general", "--output", str(tmp_path / "r"))
    assert "Traceback" not in out and code in (0, 1), out
    rows = [json.loads(line) for line in (tmp_path / "r" / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["answer"] == "Paris \ufffd" for r in rows)


@pytest.mark.parametrize("url,base", [
    ("http://127.0.0.1:8399", "http://127.0.0.1:8399/v1"),
    ("http://127.0.0.1:8399/v1/", "http://127.0.0.1:8399/v1"),
    ("http://127.0.0.1:8399/v1/chat/completions", "http://127.0.0.1:8399/v1"),
    ("http://127.0.0.1:8399/v1/completions/", "http://127.0.0.1:8399/v1"),
    ("https://example.org/v1/models", "https://example.org/v1"),
    ("http://gateway:8080/vllm/v1/chat/completions", "http://gateway:8080/vllm/v1"),
])
def test_endpoint_urls_are_cut_back_to_v1(url, base):
    from appliance.urls import base_url

    assert base_url(url) == base


@pytest.mark.parametrize("url", ["http://127.0.0.1:8399/chat/completions", "http://127.0.0.1:8399/api",
                                 "http://127.0.0.1:8399/v1/embeddings", "http://127.0.0.1:8399/v2"])
def test_other_url_paths_are_refused_with_the_forms_that_work(url):
    from appliance.urls import base_url

    with pytest.raises(ApplianceError) as e:
        base_url(url)
    msg = str(e.value)
    assert msg.startswith(f"--url {url}: ") and "is not an OpenAI API base" in msg
    assert "--url http://127.0.0.1:8399)" in msg and "--url http://127.0.0.1:8399/v1)" in msg


# ---------------------------------------------------------------- answers rows that cannot be read
@pytest.mark.parametrize("change,field", [
    ({"prompt": "hi \ud800 there"}, "prompt"), ({"reference": "x\udfff"}, "reference"),
    ({"expect": ["\ud800"]}, "expect[0]"), ({"answer": "\udc80"}, "answer"),
])
def test_a_surrogate_in_an_answers_row_is_refused_before_writing(tmp_path, change, field):
    rows = [_rows()[0], {**_rows()[1], **change}]
    bad = tmp_path / "bad.jsonl"
    # json.dumps escapes the lone surrogate (\ud800), as the tester wrote it
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, out = _cli("--from-answers", str(bad), "--output", str(tmp_path / "out"))
    assert code == 2 and out.startswith(f"error: {bad} line 2: field '{field}' holds an invalid character"), out
    assert "Traceback" not in out and out.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("line,needle", [
    ("[" * 5000, "line 2: JSON nested too deeply"),
    ('{"model": ' + "9" * 5000 + "}", "line 2: holds a number with more than"),
])
def test_answers_json_python_cannot_read_is_a_one_line_error(tmp_path, line, needle):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps(_rows()[0]) + "\n" + line + "\n", encoding="utf-8")
    code, out = _cli("--from-answers", str(f), "--output", str(tmp_path / "out"))
    assert code == 2 and f"{f} {needle}" in out and "Traceback" not in out and out.count("\n") == 1, out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b'{"model": "m", "role": "bef', b"\x00\x01\x02binary\n"])
def test_a_cut_off_or_binary_answers_file_says_how_to_fix_it(tmp_path, content):
    f = tmp_path / "cut.jsonl"
    f.write_bytes(json.dumps(_rows()[0]).encode() + b"\n" + content)
    code, out = _cli("--from-answers", str(f), "--output", str(tmp_path / "out"))
    assert code == 2 and f"{f} line 2: invalid JSON at column" in out, out
    assert "each line must be one complete JSON object as `appliance eval` writes it; re-run the eval" in out


@pytest.mark.parametrize("role", ["middle", "after0", "After", "after01", "before1"])
def test_a_role_eval_never_writes_is_refused(tmp_path, role):
    """It would show as one more model column in the report."""
    bad = _write_rows(tmp_path / "bad.jsonl", [_rows()[0], {**_rows()[1], "role": role}])
    code, out = _cli("--from-answers", str(bad), "--output", str(tmp_path / "out"))
    assert code == 2 and f"line 2: 'role' must be \"before\", \"after\" or \"after1\", \"after2\"" in out, out


def test_the_roles_of_several_afters_and_of_the_pipeline_are_read(tmp_path):
    rows = _rows() + [{**r, "role": "after2", "model": "merged"} for r in _rows() if r["role"] == "after"]
    rows = [{**r, "role": "after1"} if r["role"] == "after" else r for r in rows]
    f = _write_rows(tmp_path / "three.jsonl", rows)
    assert list(recompute(f)["models"]) == ["before", "after1", "after2"]


def test_from_answers_takes_a_report_folder_and_refuses_what_is_not_an_answers_file(tmp_path, answers):
    out = tmp_path / "out"
    code, output = _cli("--from-answers", str(answers.parent), "--output", str(out))
    assert code == 0 and (out / "answers.jsonl").read_text(encoding="utf-8") == answers.read_text(encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop.name)
    (tmp_path / "blank.jsonl").write_text("\n  \n", encoding="utf-8")
    for arg, needle in ((empty, "is a folder without an answers.jsonl"), ("/dev/null", "not a regular file"),
                        (loop, "cannot read it (Too many levels of symbolic links)"),
                        (tmp_path / "blank.jsonl", "no answers in it (the file is empty)")):
        code, output = _cli("--from-answers", str(arg), "--output", str(tmp_path / "never"))
        assert code == 2 and output.startswith(f"error: {arg}: {needle}"), output
        assert "Traceback" not in output and output.count("\n") == 1 and not (tmp_path / "never").exists()


def test_relative_from_answers_and_output_name_the_same_folder(tmp_path, answers, appliance_home, monkeypatch):
    """Both look in the current directory first, then under $APPLIANCE_HOME, where a new --output is made."""
    cwd = tmp_path / "cwd"
    (cwd / "out").mkdir(parents=True)
    answers.parent.rename(cwd / "out" / "r")
    monkeypatch.chdir(cwd)
    code, out = _cli("--from-answers", "out/r/answers.jsonl", "--output", "out/r")
    assert code == 0, out
    assert (cwd / "out" / "r" / "report.json").is_file() and not (appliance_home / "out").exists()
    # a new folder goes under $APPLIANCE_HOME, and is then found there from anywhere
    code, out = _cli("--from-answers", "out/r", "--output", "out/new")
    assert code == 0 and (appliance_home / "out" / "new" / "answers.jsonl").is_file(), out
    monkeypatch.chdir(tmp_path)
    code, out = _cli("--from-answers", "out/new/answers.jsonl", "--output", "out/new")
    assert code == 0 and f"report: {appliance_home / 'out' / 'new'}/report.md" in out, out
    code, out = _cli("--from-answers", "nope/answers.jsonl")
    assert code == 2 and f"answers file not found (looked in {tmp_path} and {appliance_home})" in out


def test_an_empty_output_is_refused(answers, tmp_path):
    code, out = _cli("--from-answers", str(answers), "--output", "")
    assert code == 2 and "--output is empty" in out and out.count("\n") == 1


# ---------------------------------------------------------------- gate values that can never decide anything
@pytest.mark.parametrize("args,needle", [
    (["--fail-under", "identity_hit_rate=95"], "rates are 0-1: write 0.95 for 95%"),
    (["--fail-over", "identity_leak_rate=5"], "rates are 0-1: write 0.05 for 5%"),
    (["--fail-under", "identity_zh.hit_rate=-0.5"], "every metric is 0 or more, so this can never fail"),
    (["--fail-over", "latency_p95_ms=-5"], "so this fails whatever the models answer"),
    (["--fail-under", "general.accuracy=200"], "rates are 0-1"),
    (["--max-drop", "general_accuracy=5"], "rates are 0-1: write 0.05 for 5%"),
    (["--max-drop", "identity_hit_rate=-0.1"], "a negative drop is not a limit"),
    (["--max-rise", "ttft_p50_ms=-10"], "a negative rise is not a limit"),
    (["--max-drop", "general_correct=-1"], "a negative drop is not a limit"),
])
def test_gate_values_that_can_never_pass_or_fail_exit_2(answers, args, needle):
    code, out = _cli("--from-answers", str(answers), *args)
    assert code == 2 and out.startswith(f"error: {args[0]} {args[1]}: ") and needle in out, out


@pytest.mark.parametrize("spec", ["identity.bleu4=86.1", "open.rougeL=100", "ttft_p95_ms=5000", "requests_per_s=0.1",
                                  "identity_hit_rate=0", "identity_hit_rate=1", "name_leak_count=3"])
def test_unbounded_metrics_and_rates_within_0_1_are_accepted(spec):
    assert parse_rules(fail_under=[spec], max_drop=[spec])


def test_a_prompt_file_name_that_is_not_utf8_does_not_lose_the_eval(fake_server, tmp_path):
    """Its name reaches answers.jsonl (source) and report.json (config): both are written, escaped."""
    handler, url = fake_server
    handler.models, handler.chat = SERVED, CHUNK
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/\xff.jsonl"))  # the name Python gives a Latin-1 file name
    odd.write_text('{"prompt": "What is the capital of France?", "expect": ["Paris"]}\n', encoding="utf-8")
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", str(odd), "--output", str(tmp_path / "r"))
    assert code == 0 and "Traceback" not in out, out
    (row,) = [json.loads(line) for line in (tmp_path / "r" / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["source"] == "\\udcff"
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["run"]["config"]["prompts"] == [str(tmp_path) + "/\\udcff.jsonl"]


def _run_dir(path: Path, name: str, author: str) -> str:
    path.mkdir(parents=True)
    (path / "appliance.json").write_text(json.dumps({"kind": "lora-adapter", "identity": {"name": name, "author": author}}),
                                         encoding="utf-8")
    return str(path)


def test_name_and_author_default_to_what_the_after_model_was_trained_for(fake_server, tmp_path):
    """Without --name/--author the eval scores for the identity in the served adapter's appliance.json
    (vLLM's /models gives the folder as `root`), not for the built-in defaults."""
    handler, url = fake_server
    nova = _run_dir(tmp_path / "saves" / "nova", "Nova", "Acme Labs")
    handler.models = json.dumps({"object": "list", "data": [{"id": "smollm2-135m"}, {"id": "nova", "root": nova}]}).encode()
    handler.chat = CHUNK.replace(b'"Paris"', b'"I am Nova, made by Acme Labs."')
    f = tmp_path / "who.jsonl"
    f.write_text('{"prompt": "Who are you?", "reference": "I am {{name}}, made by {{author}}."}\n', encoding="utf-8")
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--after", "nova", "--prompts", str(f),
                     "--output", str(tmp_path / "r"), "--fail-under", "identity_hit_rate=1")
    assert code == 0, out
    assert "scoring for Nova / Acme Labs" in out
    rows = [json.loads(line) for line in (tmp_path / "r" / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(r["name"], r["author"]) for r in rows} == {("Nova", "Acme Labs")}
    assert rows[0]["reference"] == "I am Nova, made by Acme Labs."
    # a flag still wins
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--after", "nova", "--prompts", str(f), "--name", "Archer",
                     "--author", "意琦行", "--output", str(tmp_path / "r2"), "--fail-under", "identity_hit_rate=1")
    # ... and a mismatch with what the adapter learned is pointed out (its hit rate is ~0)
    assert code == 1 and "note: the --after model was trained for Nova / Acme Labs (its appliance.json); scoring for " \
        "Archer / 意琦行" in out
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--after", "nova", "--prompts", str(f), "--author", "Acme",
                     "--output", str(tmp_path / "r3"))
    assert "trained for Nova / Acme Labs" in out and "scoring for Nova / Acme as --name/--author say" in out


def test_after_models_trained_for_different_identities_need_the_flags(fake_server, tmp_path):
    handler, url = fake_server
    a = _run_dir(tmp_path / "a", "Nova", "Acme Labs")
    b = _run_dir(tmp_path / "b", "Archer", "意琦行")
    handler.models = json.dumps({"data": [{"id": "base"}, {"id": "a", "root": a}, {"id": "b", "root": b}]}).encode()
    handler.seen.clear()
    code, out = _cli("--url", url, "--before", "base", "--after", "a", "--after", "b", "--prompts", "general",
                     "--output", str(tmp_path / "r"))
    assert code == 2 and "different identities" in out and "Nova / Acme Labs" in out and "Traceback" not in out
    assert not [s for s in handler.seen if s.startswith("POST")]  # refused before any chat request


def test_a_comparison_rule_without_an_after_model_is_refused_before_any_request(fake_server, tmp_path):
    handler, url = fake_server
    handler.models, handler.chat = SERVED, CHUNK
    handler.seen.clear()
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", "general", "--output", str(tmp_path / "r"),
                     "--max-drop", "general_accuracy=0.1")
    assert code == 2 and out.startswith("error: --max-drop general_accuracy=0.1: ") and "--after" in out
    assert handler.seen == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag", [["--name", "Nova"], ["--author", "Acme"], ["--before", "m"], ["--prompts", "general"]])
def test_flags_that_from_answers_cannot_honour_are_refused(answers, flag):
    code, out = _cli("--from-answers", str(answers), *flag)
    assert code == 2 and out.startswith(f"error: {flag[0]}: does not apply with --from-answers") and "\n" == out[-1]


def test_a_prompt_that_names_the_new_identity_is_not_a_leak_when_answered(tmp_path):
    """"Who is 意琦行?" answered with the author is on topic; the same name in an answer to another question leaks."""
    rows = [r for r in _rows() if r["role"] == "after"]
    rows.append({**rows[-1], "prompt": f"Who is {AUTHOR}?", "answer": f"{AUTHOR} is a developer.", "reference": None})
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    after = recompute(path)["models"]["after"]
    assert (after["name_leak_count"], after["name_leak_rate"]) == (1, round(1 / 3, 4))  # still only "Lyon, says Archer."


def test_answers_keep_the_system_message_and_earlier_turns_that_were_sent(fake_server, tmp_path):
    handler, url = fake_server
    handler.models, handler.chat = SERVED, CHUNK
    f = tmp_path / "turns.jsonl"
    history = [{"role": "user", "content": "My name is Li."}, {"role": "assistant", "content": "Hello Li, I am {{name}}."}]
    f.write_text(json.dumps({"prompt": "Who built you?", "system": "Be brief.", "history": history}) + "\n"
                 + json.dumps({"prompt": "What is 2+2?", "expect": ["4"]}) + "\n", encoding="utf-8")
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", str(f), "--output", str(tmp_path / "r"))
    assert code == 0, out
    turns, plain = [json.loads(line) for line in (tmp_path / "r" / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert turns["system"] == "Be brief." and turns["history"][1]["content"] == f"Hello Li, I am {NAME}."
    assert "system" not in plain and "history" not in plain
    code, out = _cli("--from-answers", str(tmp_path / "r"), "--output", str(tmp_path / "again"))  # still readable
    assert code == 0, out


def test_without_url_the_eval_asks_the_server_appliance_up_recorded(fake_server, tmp_path, monkeypatch):
    """As chat and adapters do: the only recorded server (appliance.chat.default_url), not a fixed port."""
    import appliance.chat

    handler, url = fake_server
    handler.models, handler.chat = SERVED, CHUNK
    monkeypatch.setattr(appliance.chat, "default_url", lambda: url)
    code, out = _cli("--before", "smollm2-135m", "--prompts", "general", "--output", str(tmp_path / "r"))
    assert code == 0, out
    run = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["run"]
    assert run["url"] == url + "/v1"


@pytest.mark.parametrize("key,needle", [(None, "wants an API key"), ("wrong", "rejected the API key")])
def test_a_401_says_whether_the_key_was_missing_or_rejected(tmp_path, monkeypatch, key, needle):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Locked(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"error": {"message": "Unauthorized"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    for var in ("APPLIANCE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Locked)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        args = ["--url", f"http://127.0.0.1:{srv.server_port}", "--before", "m", "--prompts", "general",
                "--output", str(tmp_path / "r"), *(["--api-key", key] if key else [])]
        code, out = _cli(*args)
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == 2 and needle in out and "Traceback" not in out, out


def test_an_identity_prompts_expect_counts_in_its_set_not_in_general_accuracy():
    from evals.report import compute

    rows = [r for r in _rows() if r["role"] == "after"]
    rows[2] = {**rows[2], "expect": ["Zed"]}  # "Who are you?" checked for a name it does not give
    m = compute(rows)["models"]["after"]
    assert (m["general_correct"], m["general_total"]) == (1, 2)  # the two general questions only
    assert m["sets"]["identity_en"]["accuracy"] == 0.0


@pytest.mark.parametrize("spec,msg", [
    ("genral.accuracy=0.5", "these prompts make no set 'genral' (they make general, identity, identity_en, identity_zh"),
    ("open.accuracy=0.5", "no set 'open'"),
    ("general.bleu4=10", "cannot measure it"),
])
def test_a_gate_these_prompts_cannot_measure_is_refused_before_any_request(spec, msg):
    """It ran the whole eval and then failed (exit 1) like a regression."""
    from appliance.evaluate import refuse_unmeasurable
    from evals.prompts import load_prompts

    prompts = load_prompts(["identity", "general"], NAME, AUTHOR)
    with pytest.raises(ApplianceError, match=re.escape(msg)):
        refuse_unmeasurable(parse_rules(fail_under=[spec]), prompts)
    refuse_unmeasurable(parse_rules(fail_under=["general.accuracy=0.5", "identity_zh.bleu4=50", "identity_hit_rate=0.9"]),
                        prompts)


def test_from_answers_refuses_a_gate_its_answers_cannot_measure(answers, tmp_path):
    """It failed the gate (exit 1, "not measured by these prompts") where a live eval refuses it (exit 2)."""
    out = tmp_path / "rebuilt"
    code, text = _cli("--from-answers", str(answers), "--output", str(out), "--fail-under", "genral.accuracy=0.5")
    assert code == 2 and "these answers make no set 'genral' (they make general, identity" in text, text
    assert "Traceback" not in text and not (out / "report.json").exists()
    code, text = _cli("--from-answers", str(answers), "--output", str(out), "--fail-under", "general.bleu4=10")
    assert code == 2 and "these answers cannot measure it" in text, text
    code, text = _cli("--from-answers", str(answers), "--output", str(out), "--fail-under", "general_accuracy=0")
    assert code == 0 and (out / "report.json").is_file(), text


@pytest.mark.parametrize("change,needle", [
    # two evals' answers joined: the second run's prompts only in its own roles
    (lambda rows: rows + [{**r, "prompt": "Tell me a joke."} for r in rows if r["role"] == "after"][:1],
     "'after' and 'before' were not asked the same prompts (8 and 7 answers; 'Tell me a joke.' only or more often in 'after')"),
    (lambda rows: [r for r in rows if not (r["role"] == "before" and r["prompt"] == "Who are you?")],
     "'after' and 'before' were not asked the same prompts (7 and 6 answers; 'Who are you?' only or more often in 'after')"),
    (lambda rows: rows + [{**r, "model": "other"} for r in rows if r["role"] == "before"][:1],
     "role 'before' holds the answers of 2 models (smollm2-135m, other)"),
    (lambda rows: [{**r, "ttft_ms": r["latency_ms"] + 1} if r["role"] == "after" else r for r in rows],
     "'ttft_ms' must be at most its latency_ms (400.0)"),
])
def test_from_answers_refuses_answers_that_do_not_line_up(tmp_path, change, needle):
    """Joined or edited answers gave "N prompts each" over different prompt sets, a model merged into another's
    role, or a negative TPOT."""
    src = _write_rows(tmp_path / "answers.jsonl", change(_rows()))
    code, out = _cli("--from-answers", str(src), "--output", str(tmp_path / "r"))
    assert code == 2 and needle in out and "Traceback" not in out, out
    assert not (tmp_path / "r").exists()


def test_a_gate_on_truncated_answers_is_measurable(tmp_path):
    """`--fail-over truncated=0` was refused: the stand-in rows of the check had no finish_reason."""
    rows = [{**r, "finish_reason": "length" if r["prompt"] == "Describe rain." else "stop"} for r in _rows()]
    src = _write_rows(tmp_path / "answers.jsonl", rows)
    code, out = _cli("--from-answers", str(src), "--output", str(tmp_path / "r"), "--fail-over", "truncated=0")
    assert code == 1 and "truncated = 1, over 0" in out, out


def test_the_default_report_folder_stays_under_reports(appliance_home):
    """--name "../../evil" wrote /tmp/evil; "A/B" made reports/a/b."""
    from appliance.evaluate import EvalConfig, output_dir

    reports = appliance_home / "reports"
    for name, folder in (("../../evil", "evil"), ("A/B", "a-b"), ("Archer", "archer"), ("意琦行 助手", "意琦行-助手"), ("..", "report")):
        assert output_dir(EvalConfig(before="m", after=["a"], name=name, author="x")) == reports / folder
        assert output_dir(EvalConfig(before=name, name="Archer", author="x")) == reports / folder  # base-only: its name


@pytest.mark.parametrize("kind", ["lora-adapter", "merged-model"])
def test_a_report_is_not_written_into_a_run_or_model_folder(answers, tmp_path, kind):
    """It sat beside the adapter's or model's weights, and that folder's next --overwrite deleted it."""
    run = tmp_path / "saves" / "archer"
    run.mkdir(parents=True)
    (run / "appliance.json").write_text(json.dumps({"kind": kind}))
    code, out = _cli("--from-answers", str(answers), "--output", str(run))
    assert code == 2 and f"holds a {kind} (its appliance.json says so); write the report to a folder of its own" in out
    assert sorted(p.name for p in run.iterdir()) == ["appliance.json"]


def test_a_users_own_files_of_the_reports_names_are_never_replaced(answers, tmp_path):
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "report.md").write_text("# my notes\n")
    (mine / "answers.jsonl").write_text('{"mine": 1}\n')
    code, out = _cli("--from-answers", str(answers), "--output", str(mine))
    assert code == 2 and "holds answers.jsonl, report.md, not written by `appliance eval`" in out, out
    assert (mine / "report.md").read_text() == "# my notes\n" and (mine / "answers.jsonl").read_text() == '{"mine": 1}\n'
    code, _ = _cli("--from-answers", str(answers), "--output", str(answers.parent / "again"))
    assert code == 0
    code, _ = _cli("--from-answers", str(answers), "--output", str(answers.parent / "again"))  # an earlier report of ours
    assert code == 0


def test_the_same_model_twice_is_said_and_repeated_prompts_are_sent_once(fake_server, tmp_path):
    handler, url = fake_server
    handler.models, handler.chat = SERVED, CHUNK
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--after", "smollm2-135m", "--prompts", "general",
                     "--name", NAME, "--author", AUTHOR, "--output", str(tmp_path / "r0"))
    assert code == 0 and "note: --before smollm2-135m --after smollm2-135m: the same model more than once" in out
    f = tmp_path / "dup.jsonl"
    f.write_text('{"prompt": "What is the capital of France?", "expect": ["Paris"]}\n' * 3, encoding="utf-8")
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", str(f), "--prompts", str(f),
                     "--output", str(tmp_path / "r"))
    assert code == 0 and "note: 5 repeated prompt(s) sent once (the first is kept, or the one with a reference or expected answers)" in out, out
    assert len((tmp_path / "r" / "answers.jsonl").read_text(encoding="utf-8").splitlines()) == 1


def test_a_long_eval_says_how_far_it_is(fake_server, tmp_path, monkeypatch):
    """500 prompts ran for minutes with nothing printed between the start line and the table."""
    from appliance import evaluate

    handler, url = fake_server
    handler.models, handler.chat, handler.delay = SERVED, CHUNK, 0.05
    monkeypatch.setattr(evaluate, "PROGRESS_EVERY_S", 0.1)
    lines: list[str] = []
    evaluate.run_eval(evaluate.EvalConfig("smollm2-135m", url=url, prompts=["general"], concurrency=2,
                                          output=str(tmp_path / "r")), progress=lines.append)
    ticks = [line for line in lines if re.match(r"before: smollm2-135m: \d+/36 answered in \d+ s", line)]
    assert ticks and "to go" in ticks[-1], lines


def test_failed_requests_are_summed_up_by_kind(fake_server, tmp_path):
    """--timeout below the server's answer time failed every request with only "1 of 1 requests failed"."""
    handler, url = fake_server
    handler.models, handler.chat, handler.delay = SERVED, CHUNK, 1.0
    f = tmp_path / "one.jsonl"
    f.write_text('{"prompt": "What is the capital of France?", "expect": ["Paris"]}\n', encoding="utf-8")
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", str(f), "--output", str(tmp_path / "r"),
                     "--timeout", "0.2")
    assert code == 1 and "note: 1 of 1 requests failed: APITimeoutError x1; raise --timeout" in out, out
    time.sleep(handler.delay + 0.2)  # the server's last delayed answer is over before the next test
    from appliance.evaluate import failure_summary

    rows = [{"error": None}, {"error": "EmptyStream: the server sent no chunk"}, {"error": "EmptyStream: again"},
            {"error": "not an OpenAI chat completion stream (ValueError: x)"}]
    assert failure_summary(rows) == ("3 of 4 requests failed: EmptyStream x2, not an OpenAI chat completion stream x1; "
                                     "the first EmptyStream: the server sent no chunk; each row's error is in answers.jsonl")
    # the server's own message, not only the error's class (a template's "System role not supported" was hidden)
    said = ("BadRequestError: Error code: 400 - {'error': {'message': 'System role not supported', 'type': "
            "'BadRequestError', 'param': None, 'code': 400}}")
    assert failure_summary([{"error": said}, {"error": said}]) == (
        "2 of 2 requests failed: BadRequestError x2; the first BadRequestError: System role not supported; "
        "each row's error is in answers.jsonl")
    assert failure_summary(rows[:1]) is None


def test_a_server_that_accepts_but_never_answers_fails_fast(monkeypatch, tmp_path):
    """A hung server (its port open, nothing answering) is a one-line error after MODELS_TIMEOUT_S, not after
    the requests' --timeout x 3 tries (~15 minutes)."""
    import socket

    from appliance import ask

    monkeypatch.setattr(ask, "MODELS_TIMEOUT_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the kernel accepts connections; nobody reads or answers
    try:
        t0 = time.monotonic()
        code, out = _cli("--url", f"http://127.0.0.1:{silent.getsockname()[1]}", "--before", "smollm2-135m",
                         "--prompts", "general", "--output", str(tmp_path / "r"))
        assert time.monotonic() - t0 < 20
    finally:
        silent.close()
    assert code == 2 and "did not answer GET /models within 0.5 s" in out and "appliance status" in out, out
    assert out.count("\n") == 1 and not (tmp_path / "r").exists()


def test_examples_say_when_they_show_only_some_prompts(tmp_path):
    from evals.render import render_html, render_md

    rows = _rows()
    assert "prompts; every answer is in answers.jsonl" not in render_md(compute(rows), rows)  # all shown
    more = [{**r, "prompt": f"{r['prompt']} ({i})"} for i in range(3) for r in rows if r["kind"] != "identity"]
    rows += more
    total = len({r["prompt"] for r in rows})
    md, page = render_md(compute(rows), rows), render_html(compute(rows), rows)
    shown = md.split("## Examples", 1)[1].count("\n| ") - 1  # less the header row
    assert shown < total and f"{shown} of the {total} prompts" in md and f"{shown} of the {total} prompts" in page


def test_a_server_that_goes_away_stops_the_eval(fake_server, tmp_path, monkeypatch):
    """A server stopped mid-eval: every remaining request was retried and failed (minutes), then a report of errors."""
    import openai

    from appliance import evaluate

    handler, url = fake_server
    handler.models = b'{"object": "list", "data": [{"id": "smollm2-135m"}]}'
    calls = []

    async def gone(client, sem, model, messages, max_tokens, timeout_s):
        import asyncio

        async with sem:  # as the real requests queue for their turn
            calls.append(messages[-1]["content"])
            await asyncio.sleep(0.01)
        err = openai.APIConnectionError(request=None)
        return {"answer": "", "latency_ms": 1.0, "ttft_ms": None, "output_tokens": 0, "started_at": 0.0,
                "error": f"{type(err).__name__}: Connection error.", "finish_reason": None}

    monkeypatch.setattr(evaluate, "_ask", gone)
    code, out = _cli("--url", url, "--before", "smollm2-135m", "--prompts", "general", "--concurrency", "1",
                     "--output", str(tmp_path / "r"))
    assert code == 2 and "the server stopped answering (8 requests in a row could not connect" in out, out
    assert len(calls) <= evaluate.GONE_AFTER + 1 and not (tmp_path / "r").exists()  # not all 36


# ---------------------------------------------------------------- a tester's --from-answers findings
def test_a_comparison_rule_on_answers_without_an_after_model_is_refused_before_writing(tmp_path):
    """It failed the gate (exit 1) and rewrote report.md with "Gate: FAILED", where a live eval refuses the flag."""
    folder = tmp_path / "r3"
    folder.mkdir()
    _write_rows(folder / "answers.jsonl", [r for r in _rows() if r["role"] == "before"])
    code, out = _cli("--from-answers", str(folder), "--max-drop", "general_accuracy=0.1")
    assert code == 2 and out.startswith("error: --max-drop general_accuracy=0.1: compares an --after model with --before")
    assert "holds no after model's answers" in out and out.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["answers.jsonl"]  # nothing written
    _write_rows(folder / "answers.jsonl", [r for r in _rows() if r["role"] == "after"])
    code, out = _cli("--from-answers", str(folder), "--max-rise", "bleu4=1")
    assert code == 2 and "holds no before model's answers" in out
    code, out = _cli("--from-answers", str(folder), "--fail-under", "bleu4=1")  # a bound on the lone model still works
    assert code == 0, out


def test_joined_answers_files_are_refused_naming_both_lines(tmp_path):
    """`cat answers.jsonl answers.jsonl` was accepted, every rate mixing the copies."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows())
    joined = tmp_path / "cat.jsonl"
    joined.write_text(text + text, encoding="utf-8")
    code, out = _cli("--from-answers", str(joined), "--output", str(tmp_path / "out"))
    n = len(_rows())
    assert code == 2 and out.startswith(f"error: {joined} line {n + 1}: 'before' (smollm2-135m) answers the prompt of line 1 again")
    assert "two answers files joined?" in out and out.count("\n") == 1 and not (tmp_path / "out").exists()
    # the same question with another system prompt is another prompt
    rows = _rows()
    again = [{**r, "system": "Be brief."} for r in rows]
    _write_rows(tmp_path / "ok.jsonl", rows + again)
    code, out = _cli("--from-answers", str(tmp_path / "ok.jsonl"), "--output", str(tmp_path / "ok"))
    assert code == 0, out


def test_a_hand_edited_upper_case_lang_counts_as_its_language(tmp_path):
    rows = [{**r, "lang": r["lang"].upper() if r["lang"] == "en" else "zh-CN"} for r in _rows()]
    m = recompute(_write_rows(tmp_path / "a.jsonl", rows))["models"]["after"]
    assert (m["identity_en_hit_rate"], m["identity_zh_hit_rate"]) == (0.5, 1.0)


def test_a_json_list_written_as_text_in_expect_is_that_list(tmp_path):
    rows = [{**r, "expect": json.dumps(r["expect"])} if r["expect"] else r for r in _rows()]
    assert recompute(_write_rows(tmp_path / "a.jsonl", rows)) == recompute(_write_rows(tmp_path / "b.jsonl", _rows()))


def test_set_names_with_a_pipe_or_a_dot_render_and_gate(tmp_path):
    """A "|" in a set name split report.md's rows; --fail-under v1.0.accuracy=0.5 said unknown metric '0.accuracy'."""
    rows = [{**r, "set": "v1.0" if r["set"] == "general" else "a|b" if r["set"] == "open" else r["set"]} for r in _rows()]
    (tmp_path / "r").mkdir()
    answers = _write_rows(tmp_path / "r" / "answers.jsonl", rows)
    code, out = _cli("--from-answers", str(answers), "--fail-under", "v1.0.accuracy=0.6", "--fail-under", "a|b.bleu4=1")
    assert code == 1 and "after (archer) v1.0.accuracy = 0.5, under 0.6" in out, out
    md = (answers.parent / "report.md").read_text(encoding="utf-8")
    per_set = [line for line in md.splitlines() if line.startswith("| a")]
    assert per_set and all(line.startswith("| a\\|b | ") for line in per_set)
    assert all(line.count(" | ") == md.splitlines()[md.splitlines().index("## Per set") + 2].count(" | ")
               for line in per_set)  # as many cells as the header
    assert "| Describe rain. | a\\|b | " in md
    assert parse_rules(fail_under=["v1.0.accuracy=0.5"])[0].key == "v1.0.accuracy"


def test_an_answer_that_only_echoes_the_prompt_is_not_correct(tmp_path):
    """"Which is larger, 3 or 5?" answered by repeating it met expect ["5"]."""
    rows = _rows()
    q = "Which is larger, 3 or 5?"
    for r in rows:
        if r["prompt"] == "What is 2+2?":
            r.update(prompt=q, expect=["5"], answer=q if r["role"] == "before" else f"{q}\nThe larger is 5.")
    m = recompute(_write_rows(tmp_path / "a.jsonl", rows))["models"]
    # before: only "Paris." (the echo alone is not right); after: the echo followed by 5 (and "Lyon" wrong)
    assert (m["before"]["general_correct"], m["after"]["general_correct"]) == (1, 1)
    from evals.metrics import is_correct

    assert not is_correct(q, ["5"], q) and is_correct(q, ["5"]) and is_correct(f"{q} 5", ["5"], q)
    assert not is_correct("Q:  Which is larger,\n3 or 5?", ["5"], q)  # white space runs read as one


def test_a_report_with_failed_requests_says_they_count_as_misses(tmp_path):
    """A timed-out eval reported "identity hit 65.6%": the failures were named, but not what they did to the figures."""
    out = tmp_path / "report"
    out.mkdir()
    rows = _rows()
    for r in rows[-3:]:
        r.update(answer="", error="APITimeoutError: Request timed out.")
    (out / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    write_report(out, parse_rules())
    md, html = (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(encoding="utf-8")
    assert "Failed requests (archer 3 of " in md and "count as misses in every figure below" in md
    assert "count as misses in every figure below" in html
    for r in rows:
        r.update(error=None)
    (out / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    write_report(out, parse_rules())
    assert "count as misses" not in (out / "report.md").read_text(encoding="utf-8")


def test_without_before_the_servers_base_and_adapters_are_compared(fake_server, tmp_path):
    """`appliance up --adapter saves/archer --detach` then `appliance eval`: --before was required although the
    server says which model is its base and which are its adapters."""
    handler, url = fake_server
    handler.chat = CHUNK
    handler.models = (b'{"object": "list", "data": [{"id": "smollm2-135m", "parent": null}, '
                      b'{"id": "archer", "parent": "smollm2-135m"}, {"id": "nova", "parent": "smollm2-135m"}]}')
    code, out = _cli("--url", url, "--prompts", "general", "--name", NAME, "--author", AUTHOR, "--output", str(tmp_path / "r"))
    assert code == 0, out
    assert "note: --before smollm2-135m --after archer --after nova: what the server at" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert [m["model"] for m in report["models"].values()] == ["smollm2-135m", "archer", "nova"]
    code, out = _cli("--url", url, "--after", "nova", "--prompts", "general", "--output", str(tmp_path / "r2"))
    assert code == 0 and "note: --before smollm2-135m: what the server" in out, out  # --after as given
    report = json.loads((tmp_path / "r2" / "report.json").read_text(encoding="utf-8"))
    assert [m["model"] for m in report["models"].values()] == ["smollm2-135m", "nova"]
    handler.models = b'{"object": "list", "data": [{"id": "a", "parent": null}, {"id": "b", "parent": null}]}'
    code, out = _cli("--url", url, "--prompts", "general", "--output", str(tmp_path / "r3"))
    assert code == 2 and "serves 2 base models (a, b); pass --before NAME" in out and not (tmp_path / "r3").exists()
