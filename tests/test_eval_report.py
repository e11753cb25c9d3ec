"""Report from answers.jsonl: agreement with recompute(), hand-checked figures, md/html contents, the gate via the CLI."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ApplianceError
from evals.report import parse_rules, recompute, write_report

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
    examples = md.split("## Examples", 1)[1]
    first = [line for line in examples.splitlines() if line.startswith("| ") and not line.startswith("| prompt")][0]
    assert first.startswith("| 你是谁？ | 我是 SmolLM。 | " + ZH_REF)


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
    code, out = _cli("--after", "x")
    assert code == 2 and "--before is required" in out


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
