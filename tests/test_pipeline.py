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
