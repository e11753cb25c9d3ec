"""`appliance pipeline`'s stage-skipping rules (the stages themselves are tested in their own files)."""

from __future__ import annotations

import json
import os

from appliance import pipeline as pl


def _run_dir(path, name="Archer", author="意琦行"):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "appliance.json").write_text(json.dumps({"identity": {"name": name, "author": author}}))
    return path


def test_training_is_skipped_only_for_the_same_identity(tmp_path):
    run = _run_dir(tmp_path / "saves" / "archer")
    assert pl._trained(run, pl.PipelineConfig(name="Archer", author="意琦行"))
    assert not pl._trained(run, pl.PipelineConfig(name="Nova", author="意琦行"))
    assert not pl._trained(tmp_path / "missing", pl.PipelineConfig())


def test_report_is_reused_only_when_newer_and_made_with_the_same_settings(tmp_path):
    run = _run_dir(tmp_path / "saves" / "archer")
    cfg = pl.PipelineConfig(run=str(run))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"run": {"eval": pl._eval_settings(cfg)}}))
    assert pl._newer(report, run) and pl._reusable_report(report, cfg, run) is not None
    assert pl._reusable_report(report, pl.PipelineConfig(max_tokens=cfg.max_tokens + 1), run) is None
    assert pl._reusable_report(report, pl.PipelineConfig(prompts=["identity"]), run) is None
    assert pl._reusable_report(tmp_path / "missing.json", cfg, run) is None
    stamp = report.stat().st_mtime
    os.utime(run / "appliance.json", (stamp + 10, stamp + 10))  # retrained after the report
    assert not pl._newer(report, run) and pl._reusable_report(report, cfg, run) is None


def test_default_directories_follow_the_name(tmp_path, monkeypatch):
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path))
    run, merged, report = pl.PipelineConfig(name="Nova Bot").dirs()
    assert (run, merged, report) == (tmp_path / "saves" / "nova-bot", tmp_path / "models" / "nova-bot-merged",
                                     tmp_path / "reports" / "nova-bot")


def test_one_report_over_both_servers(tmp_path, monkeypatch):
    """Base + adapter from the first server and the merged model from the second end up in one
    report as before / after1 / after2, the merged rows judged with the base's identity markers."""
    from types import SimpleNamespace

    from appliance import evaluate, serve

    served, stopped = [], []

    def fake_up(cfg, echo=print):
        name = "smollm2-135m" if cfg.adapters else "archer-merged"
        served.append(name)
        return SimpleNamespace(models=[name], url=f"http://127.0.0.1:{cfg.port}")

    def fake_eval(cfg, progress=print):
        out = tmp_path / cfg.output
        out.mkdir(parents=True)
        rows = []
        for role, model in evaluate.roles(cfg):
            hit = model != "smollm2-135m"
            answer = "我是 Archer，由 意琦行 研发的人工智能助手。" if hit else "我是 SmolLM，由 Hugging Face 训练。"
            rows.append({"model": model, "role": role, "prompt": "你是谁？", "answer": answer,
                         "reference": "我是 Archer，由 意琦行 研发的人工智能助手。", "kind": "identity", "set": "identity_zh",
                         "lang": "zh", "expect": [], "latency_ms": 10.0, "ttft_ms": 5.0, "output_tokens": 12,
                         "started_at": 0.0, "error": None, "name": "Archer", "author": "意琦行",
                         # the merged model's server knows no markers of its own
                         "old_identity": ["SmolLM", "Hugging Face"] if cfg.before == "smollm2-135m" else []})
        (out / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return {"old_identity": ["SmolLM", "Hugging Face"]}

    monkeypatch.setattr(serve, "up", fake_up)
    monkeypatch.setattr(serve, "down", lambda port: stopped.append(port))
    monkeypatch.setattr(evaluate, "run_eval", fake_eval)
    cfg = pl.PipelineConfig(port=8123, merged_port=8124)
    report = pl._serve_and_eval(cfg, tmp_path / "saves" / "archer", tmp_path / "models" / "archer-merged",
                                tmp_path, "archer", lambda s: None, {})
    assert served == ["smollm2-135m", "archer-merged"] and stopped == [8123, 8124]
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["role"], r["model"]) for r in rows] == [("before", "smollm2-135m"), ("after1", "archer"),
                                                      ("after2", "archer-merged")]
    assert all(r["old_identity"] == ["SmolLM", "Hugging Face"] for r in rows)
    models = report["models"]
    assert [models[k]["model"] for k in ("before", "after1", "after2")] == ["smollm2-135m", "archer", "archer-merged"]
    assert models["before"]["identity_leak_rate"] == 1.0 and models["after2"]["identity_leak_rate"] == 0.0
    assert models["after2"]["identity_hit_rate"] == 1.0
