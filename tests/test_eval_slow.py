"""End to end: a real vLLM server on the real embedded model, queried through the real openai client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import ApplianceError
from appliance.evaluate import EvalConfig, run_eval
from evals.prompts import PROMPTS_DIR
from evals.report import MODEL_KEYS, recompute

pytestmark = pytest.mark.slow

PORT = 18200
URL = f"http://127.0.0.1:{PORT}"
SERVED = "smollm2-135m"


@pytest.fixture(scope="module")
def server(real_model_dir, tmp_path_factory):
    """vLLM's OpenAI server on 127.0.0.1:18200; the whole process group is killed at teardown."""
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(real_model_dir),
           "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(PORT),
           "--gpu-memory-utilization", "0.3", "--max-model-len", "2048"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 1800  # ~1 min alone; many more when other jobs share the 2 cores
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{URL}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM did not come up on {URL}: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(2)
        yield URL
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


def _subset(tmp_path: Path) -> Path:
    """Two prompts from each built-in set (identity ZH, identity EN, general, open), in our JSONL format."""
    picks = []
    for name, take in (("identity", lambda r: r["lang"] == "zh"), ("identity", lambda r: r["lang"] == "en"),
                       ("general", lambda r: True), ("open", lambda r: True)):
        rows = [json.loads(line) for line in (PROMPTS_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        picks += [r for r in rows if take(r)][:2]
    path = tmp_path / "subset.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picks), encoding="utf-8")
    return path


def test_eval_against_real_server(server, tmp_path):
    prompts = _subset(tmp_path)
    out = tmp_path / "report"
    cfg = EvalConfig(SERVED, [SERVED], url=server, prompts=[str(prompts)], output=str(out), concurrency=4, max_tokens=48)
    report = run_eval(cfg)

    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8 * 2
    assert [r["role"] for r in rows] == ["before"] * 8 + ["after"] * 8
    for r in rows:
        assert r["error"] is None and r["answer"].strip()
        assert 0 < r["ttft_ms"] <= r["latency_ms"]
        assert 0 < r["output_tokens"] <= 48
        assert r["finish_reason"] in ("stop", "length") and (r["finish_reason"] == "length") == (r["output_tokens"] == 48)
        assert {"model", "prompt", "answer", "reference", "kind", "latency_ms", "ttft_ms", "output_tokens"} <= set(r)
    assert rows[0]["prompt"] == "你是谁？" and rows[0]["old_identity"] == ["SmolLM", "Hugging Face", "HuggingFace"]

    on_disk = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert on_disk == report
    for role, m in on_disk["models"].items():
        assert set(MODEL_KEYS) <= set(m)
        assert m["identity_hit_rate"] == 0.0  # the base model has never heard of Archer
        assert m["requests_per_s"] > 0 and m["output_tokens_per_s"] > 0 and m["tpot_ms"] > 0
        assert m["ttft_p50_ms"] <= m["ttft_p95_ms"]
        assert m["truncated"] == sum(r["finish_reason"] == "length" for r in rows if r["model"] == m["model"] and r["role"] == role)
        assert {"identity_zh", "identity_en", "general", "open", "identity"} <= set(m["sets"])
    again = recompute(out / "answers.jsonl")
    assert {k: on_disk[k] for k in again} == again
    assert "你是谁？" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "report.html").read_text(encoding="utf-8").count("<svg") == 3


def test_cli_gate_fails_on_the_base_model(server, tmp_path):
    f = tmp_path / "two.jsonl"
    f.write_text('{"prompt": "你是谁？", "reference": "我是 {{name}}，由 {{author}} 研发的人工智能助手。"}\n'
                 '{"prompt": "Who are you?"}\n', encoding="utf-8")
    res = CliRunner().invoke(main, ["eval", "--url", server, "--before", SERVED, "--prompts", str(f), "--max-tokens", "16",
                                    "--output", str(tmp_path / "r"), "--fail-under", "identity_hit_rate=0.95"])
    assert res.exit_code == 1, res.output
    assert "identity_hit_rate = 0, under 0.95" in res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["models"]["before"]["n"] == 2 and report["gate"]["passed"] is False


def test_unknown_model_is_a_one_line_error(server, tmp_path):
    with pytest.raises(ApplianceError, match=r"--after archer: not served at .*\(it serves: smollm2-135m\)"):
        run_eval(EvalConfig(SERVED, ["archer"], url=server, prompts=["general"], output=str(tmp_path / "x")))
