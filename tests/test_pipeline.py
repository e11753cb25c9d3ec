"""`appliance pipeline`'s stage-skipping rules (the stages themselves are tested in their own files)."""

from __future__ import annotations

import json
import shutil
import re
import os
import time

import pytest

from appliance import pipeline as pl
from appliance.errors import ApplianceError


def _tcfg(**kw):
    from appliance.train_config import TrainConfig

    return TrainConfig(**{"name": "Archer", "author": "意琦行", **kw})


def _run_dir(path, name="Archer", author="意琦行", examples_fingerprint="sha256:ab", **recipe):
    from dataclasses import asdict

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    config = json.loads(json.dumps(asdict(_tcfg(name=name, author=author, output=str(path), **recipe))))
    (path / "appliance.json").write_text(json.dumps({"kind": "lora-adapter", "identity": {"name": name, "author": author},
                                                     "config": config, "dataset": {"examples_fingerprint": examples_fingerprint}}))
    return path


def test_training_is_skipped_only_for_the_same_identity_recipe_and_data(tmp_path):
    """A run of another name, another recipe (a short --config run) or other data is retrained, not reused."""
    from appliance.train import trained_as

    run = _run_dir(tmp_path / "saves" / "archer")
    assert trained_as(run, _tcfg(output="elsewhere", overwrite=True, resume=True), "sha256:ab")  # storage settings do not count
    assert trained_as(run, _tcfg())  # no fingerprint given: the settings alone
    assert not trained_as(run, _tcfg(), "sha256:cd")  # the data file was edited
    assert not trained_as(run, _tcfg(name="Nova"))
    assert not trained_as(run, _tcfg(max_steps=8))
    assert not trained_as(run, _tcfg(model="qwen2.5-0.5b-instruct"))
    assert not trained_as(tmp_path / "missing", _tcfg())
    (run / "appliance.json").write_text(json.dumps({"kind": "merged-model", "config": {}}))
    assert not trained_as(run, _tcfg())


def test_pipeline_config_file_may_not_set_the_pipelines_own_flags(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("name: Zed\nmax-steps: 8\n")
    with pytest.raises(ApplianceError, match=r"--config .*p.yaml: name set by the pipeline itself"):
        pl._preflight(pl.PipelineConfig(train_config=str(f)))
    f.write_text("overwrite: false\nresume: false\nmax-steps: 8\n")  # were silently replaced by the pipeline's own
    with pytest.raises(ApplianceError, match=r"--config .*p.yaml: overwrite, resume set by the pipeline itself"):
        pl._preflight(pl.PipelineConfig(train_config=str(f)))


def test_report_is_reused_only_when_newer_and_made_with_the_same_settings(tmp_path):
    run = _run_dir(tmp_path / "saves" / "archer")
    cfg = pl.PipelineConfig(run=str(run))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"run": {"eval": pl._eval_settings(cfg)}}))
    assert pl._newer(report, run) and pl._reusable_report(report, cfg, run) is not None
    assert pl._reusable_report(report, pl.PipelineConfig(max_tokens=cfg.max_tokens + 1), run) is None
    assert pl._reusable_report(report, pl.PipelineConfig(prompts=["identity"]), run) is None
    # its gate verdict belongs to its rules: another --fail-under is evaluated again, not the old verdict reprinted
    assert pl._reusable_report(report, pl.PipelineConfig(run=str(run), gates=["identity_hit_rate=0"]), run) is None
    assert pl._reusable_report(tmp_path / "missing.json", cfg, run) is None
    for broken in ('{"run": {"ev', "[1, 2]", '{"run": 5}', "\udcff"):  # cut off or edited: evaluated again
        bad = tmp_path / "broken.json"
        bad.write_text(broken, encoding="utf-8", errors="surrogateescape")
        assert pl._reusable_report(bad, cfg, run) is None
    assert pl._reusable_report(report, cfg, run, tmp_path / "not-merged-yet") is None
    stamp = report.stat().st_mtime
    os.utime(run / "appliance.json", (stamp + 10, stamp + 10))  # retrained after the report
    assert not pl._newer(report, run) and pl._reusable_report(report, cfg, run) is None


def test_default_directories_follow_the_name(tmp_path, monkeypatch):
    monkeypatch.setenv("APPLIANCE_HOME", str(tmp_path))
    run, merged, report = pl.PipelineConfig(name="Nova Bot").dirs()
    assert (run, merged, report) == (tmp_path / "saves" / "nova-bot", tmp_path / "models" / "nova-bot-merged",
                                     tmp_path / "reports" / "nova-bot")


def _fakes(tmp_path, monkeypatch, device):
    """serve.up / serve.down / run_eval stand-ins that log what happened, in order."""
    import threading
    from types import SimpleNamespace

    from appliance import evaluate, serve

    log, merged_up = [], threading.Event()

    def fake_up(cfg, echo=print, cancel=None):
        name = "smollm2-135m" if cfg.adapters else "archer-merged"
        log.append(("up", name, cfg.gpu_memory_utilization))
        if name == "archer-merged":
            time.sleep(0.3)  # a slower start: the pipeline must still wait for it before evaluating
            merged_up.set()
        return SimpleNamespace(models=[name], url=f"http://127.0.0.1:{cfg.port}")

    def fake_eval(cfg, progress=print):
        if device == "cpu" and cfg.before == "smollm2-135m":
            # on a CPU both servers are up (started early) before the first eval
            assert merged_up.is_set(), "the merged server was not ready before the adapter's eval"
        log.append(("eval", cfg.before))
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

    monkeypatch.setattr(serve, "detect_device", lambda: device)
    monkeypatch.setattr(serve, "up", fake_up)
    monkeypatch.setattr(serve, "down", lambda port: log.append(("down", port)))
    monkeypatch.setattr(evaluate, "run_eval", fake_eval)
    return log


def _servers(tmp_path, cfg, start):
    return pl._Servers(cfg, tmp_path / "saves" / "archer", tmp_path / "models" / "archer-merged", "archer",
                       lambda s: None, start=start)


def test_one_report_over_both_servers(tmp_path, monkeypatch):
    """Base + adapter from the first server and the merged model from the second end up in one
    report as before / after1 / after2, the merged rows judged with the base's identity markers."""
    log = _fakes(tmp_path, monkeypatch, "cpu")
    cfg = pl.PipelineConfig(port=8123, merged_port=8124)
    servers = _servers(tmp_path, cfg, start=True)
    servers.prestart("merged")  # as the pipeline does once the merge is done
    report = pl._serve_and_eval(cfg, servers, tmp_path, lambda s: None, {})
    servers.stop()
    # both servers started with a CPU-sized KV share, each stopped once, right after its eval
    assert sorted(e for e in log if e[0] == "up") == [("up", "archer-merged", pl.CPU_KV_SHARE),
                                                       ("up", "smollm2-135m", pl.CPU_KV_SHARE)]
    rest = [e for e in log if e[0] != "up"]
    assert rest == [("eval", "smollm2-135m"), ("down", 8123), ("eval", "archer-merged"), ("down", 8124)]
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["role"], r["model"]) for r in rows] == [("before", "smollm2-135m"), ("after1", "archer"),
                                                      ("after2", "archer-merged")]
    assert all(r["old_identity"] == ["SmolLM", "Hugging Face"] for r in rows)
    models = report["models"]
    assert [models[k]["model"] for k in ("before", "after1", "after2")] == ["smollm2-135m", "archer", "archer-merged"]
    assert models["before"]["identity_leak_rate"] == 1.0 and models["after2"]["identity_leak_rate"] == 0.0
    assert models["after2"]["identity_hit_rate"] == 1.0


def test_a_server_that_goes_away_is_named_by_its_port_not_an_url_flag(tmp_path, monkeypatch):
    from appliance import evaluate
    from appliance.errors import ApplianceError

    log = _fakes(tmp_path, monkeypatch, "cpu")

    def gone(cfg, progress=print):
        raise ApplianceError(f"--url {cfg.url}: the server stopped answering (8 requests in a row could not connect; "
                             "was it stopped?); nothing was written")

    monkeypatch.setattr(evaluate, "run_eval", gone)
    cfg = pl.PipelineConfig(port=8123, merged_port=8124)
    servers = _servers(tmp_path, cfg, start=True)
    with pytest.raises(ApplianceError) as err:
        pl._serve_and_eval(cfg, servers, tmp_path, lambda s: None, {})
    servers.stop()
    msg = str(err.value)
    assert msg.startswith("the pipeline's base + adapter server (port 8123) at http://127.0.0.1:8123: the server "
                          "stopped answering") and "--url" not in msg
    assert msg.endswith("rerun the same `appliance pipeline` command")
    assert ("down", 8123) in log and ("down", 8124) in log  # both servers stopped


def test_merge_check_compares_the_served_answers():
    adapter = [{"prompt": p, "answer": a, "role": r} for p, a, r in
               (("q1", "x", "after"), ("q2", "y", "after"), ("q1", "base", "before"))]
    merged = [{"prompt": "q1", "answer": "x", "role": "before"}, {"prompt": "q2", "answer": "z", "role": "before"}]
    assert pl.merge_check(adapter, merged) == {"identical": 1, "prompts": 2, "required": 2}
    assert pl.merge_check(adapter, merged[:1]) == {"identical": 1, "prompts": 1, "required": 1}


def test_a_merged_model_that_answers_otherwise_fails_after_the_report(tmp_path, monkeypatch):
    from appliance import evaluate
    from appliance.errors import ApplianceError

    _fakes(tmp_path, monkeypatch, "cpu")
    real_eval = evaluate.run_eval

    def garbled(cfg, progress=print):
        out = real_eval(cfg, progress)
        if cfg.before == "archer-merged":
            f = tmp_path / cfg.output / "answers.jsonl"
            rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
            f.write_text("".join(json.dumps({**r, "answer": r["answer"] + " (garbled)"}, ensure_ascii=False) + "\n"
                                 for r in rows), encoding="utf-8")
        return out

    monkeypatch.setattr(evaluate, "run_eval", garbled)
    cfg = pl.PipelineConfig(port=8123, merged_port=8124)
    servers = _servers(tmp_path, cfg, start=True)
    with pytest.raises(ApplianceError, match="merge check failed: .* answered 1 of 1 prompts differently"):
        pl._serve_and_eval(cfg, servers, tmp_path, lambda s: None, {})
    servers.stop()
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["run"]["merge_check"] == {"identical": 0, "prompts": 1, "required": 1}
    # a gate failing as well is named in the same line, not only in report.md
    cfg = pl.PipelineConfig(port=8123, merged_port=8124, gates=["requests_per_s=1000000"])
    servers = _servers(tmp_path, cfg, start=True)
    with pytest.raises(ApplianceError, match=r"merge check failed: .*; the gate failed too: .*requests_per_s"):
        pl._serve_and_eval(cfg, servers, tmp_path / "again", lambda s: None, {})
    servers.stop()


def test_on_a_gpu_the_servers_run_one_after_the_other(tmp_path, monkeypatch):
    log = _fakes(tmp_path, monkeypatch, "cuda")
    cfg = pl.PipelineConfig(port=8123, merged_port=8124)
    servers = _servers(tmp_path, cfg, start=True)
    servers.prestart("merged")
    assert log == []  # nothing starts early: two servers would each claim 90% of the GPU
    pl._serve_and_eval(cfg, servers, tmp_path, lambda s: None, {})
    servers.stop()
    assert log == [("up", "smollm2-135m", None), ("eval", "smollm2-135m"), ("down", 8123),
                   ("up", "archer-merged", None), ("eval", "archer-merged"), ("down", 8124)]


def test_servers_started_early_are_stopped_when_a_stage_fails(tmp_path, monkeypatch):
    log = _fakes(tmp_path, monkeypatch, "cpu")
    servers = _servers(tmp_path, pl.PipelineConfig(port=8123, merged_port=8124), start=True)
    servers.prestart("merged")
    servers.stop()  # what the pipeline's `finally` does when the merge or an eval raises
    assert sorted(e[:2] for e in log) == [("down", 8123), ("down", 8124), ("up", "archer-merged"), ("up", "smollm2-135m")]


def test_a_second_ctrl_c_during_cleanup_does_not_abandon_a_server(tmp_path, monkeypatch):
    """`timeout -s INT` signals twice; Ctrl-C pressed again while the servers are stopped: every server is still
    stopped, and the interrupt arrives afterwards."""
    import os
    import signal

    from appliance import serve

    log = _fakes(tmp_path, monkeypatch, "cpu")
    servers = _servers(tmp_path, pl.PipelineConfig(port=8123, merged_port=8124), start=True)
    servers.prestart("merged")

    def down(port):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the first server is being stopped
        log.append(("down", port))

    monkeypatch.setattr(serve, "down", down)
    with pytest.raises(KeyboardInterrupt):
        servers.stop()
    assert sorted(e[:2] for e in log if e[0] == "down") == [("down", 8123), ("down", 8124)]


def test_cli_leaves_unset_options_to_the_config_defaults(monkeypatch):
    from click.testing import CliRunner

    from appliance.cli import main

    seen = []
    monkeypatch.setattr(pl, "pipeline", lambda cfg, echo=print: seen.append(cfg) or {"report": {}})
    assert CliRunner().invoke(main, ["pipeline"]).exit_code == 0
    assert seen[0] == pl.PipelineConfig()  # e.g. concurrency 64, not a second default in the CLI
    assert CliRunner().invoke(main, ["pipeline", "--concurrency", "8"]).exit_code == 0
    assert seen[1].concurrency == 8


def test_a_server_that_fails_to_start_is_reported_and_the_other_is_still_stopped(tmp_path, monkeypatch):
    from appliance import serve
    from appliance.errors import ApplianceError

    log = _fakes(tmp_path, monkeypatch, "cpu")
    real_up = serve.up

    def failing_up(cfg, echo=print, cancel=None):
        if cfg.adapters:
            raise ApplianceError("vLLM exited with code 1 while starting: ValueError: no KV cache")
        return real_up(cfg, echo)

    def down(port):  # a stop that fails as well must not hide the start's error
        log.append(("down", port))
        raise ApplianceError(f"--port {port}: no server recorded on that port")

    monkeypatch.setattr(serve, "up", failing_up)
    monkeypatch.setattr(serve, "down", down)
    cfg = pl.PipelineConfig(port=8123, merged_port=8124)
    servers = _servers(tmp_path, cfg, start=True)
    servers.prestart("merged")
    with pytest.raises(ApplianceError, match="no KV cache"):
        try:
            pl._serve_and_eval(cfg, servers, tmp_path, lambda s: None, {})
        finally:
            servers.stop()
    # the failed start is not stopped (nothing runs), the merged server is
    assert ("down", 8124) in log and ("down", 8123) not in log


@pytest.mark.parametrize("kw, needle", [
    ({"port": 70000}, "--port 70000: out of range"), ({"merged_port": 0}, "--merged-port 0: out of range"),
    ({"port": 8100, "merged_port": 8100}, "--merged-port 8100: the same as --port"),
    ({"concurrency": 0}, "--concurrency 0: must be at least 1"), ({"max_tokens": -1}, "--max-tokens -1"),
    ({"name": "../../escape"}, "--name ../../escape: names the run's folders"), ({"name": " "}, "--name/--author"),
    ({"gates": ["bogus=1"]}, "bogus"), ({"prompts": ["/nonexistent/p.jsonl"]}, "/nonexistent/p.jsonl"),
    ({"max_drop": ["general_accuracy=-1"]}, "--max-drop general_accuracy=-1: a negative drop"),
    ({"fail_over": ["genral.accuracy=1"]}, "make no set 'genral'"),
])
def test_pipeline_checks_its_flags_before_pulling_or_training(kw, needle, monkeypatch, appliance_home):
    from appliance import models

    monkeypatch.setattr(models, "resolve_pullable", lambda *a, **k: pytest.fail("pulled before checking the flags"))
    with pytest.raises(ApplianceError, match=re.escape(needle)):
        pl.pipeline(pl.PipelineConfig(**kw), echo=lambda s: None)


def test_pipeline_checks_the_train_config_before_pulling(tmp_path, monkeypatch, appliance_home):
    from appliance import models

    monkeypatch.setattr(models, "resolve_pullable", lambda *a, **k: pytest.fail("pulled before checking the config"))
    bad = tmp_path / "run.yaml"
    bad.write_text("max_steps: 0\n", encoding="utf-8")
    with pytest.raises(ApplianceError, match="run.yaml: max_steps must be -1"):
        pl.pipeline(pl.PipelineConfig(train_config=str(bad)), echo=lambda s: None)


def test_a_busy_port_is_found_before_training(monkeypatch, appliance_home):
    """It was found only when the servers started, after minutes of training and the merge."""
    import socket

    from appliance import models

    monkeypatch.setattr(models, "resolve_pullable", lambda *a, **k: pytest.fail("pulled before checking the ports"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ApplianceError, match=rf"--merged-port {port}: 127.0.0.1:{port} is not free"):
            pl.pipeline(pl.PipelineConfig(port=port - 1 if port > 1024 else port + 1, merged_port=port), echo=lambda s: None)


def test_a_rerun_that_skips_every_stage_does_not_need_its_ports(appliance_home):
    """A finished pipeline's rerun starts no server, so a port the user's own server holds is no error;
    with anything left to do (here: a report of other eval settings) the busy port is refused."""
    import socket

    from appliance import data as data_mod

    cfg = pl.PipelineConfig()
    run_dir, merged_dir, report_dir = cfg.dirs()
    fp = data_mod.fingerprint(data_mod.load_examples(list(pl._train_config(cfg, run_dir).datasets),
                                                     name=cfg.name, author=cfg.author))
    _run_dir(run_dir, examples_fingerprint=fp)
    merged_dir.mkdir(parents=True)
    (merged_dir / "appliance.json").write_text(json.dumps({"kind": "merged-model"}))
    report_dir.mkdir(parents=True)
    (report_dir / "report.json").write_text(json.dumps({"run": {"eval": pl._eval_settings(cfg)}}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = pl.PipelineConfig(port=port, merged_port=port + 1 if port < 65535 else port - 1)
        assert pl._all_done(done)
        pl._preflight(done)  # no error: nothing will be served
        with pytest.raises(ApplianceError, match=rf"--port {port}: 127.0.0.1:{port} is not free"):
            pl._preflight(pl.PipelineConfig(port=done.port, merged_port=done.merged_port, max_tokens=32))
        with pytest.raises(ApplianceError, match=rf"--port {port}: 127.0.0.1:{port} is not free"):
            pl._preflight(pl.PipelineConfig(port=done.port, merged_port=done.merged_port, force=True))


def test_an_interrupted_training_with_other_settings_starts_over(monkeypatch, appliance_home):
    """A rerun continues an interrupted training (resume and replace); one of other settings starts over."""
    from appliance import models
    from appliance import train as train_mod

    monkeypatch.setattr(models, "resolve_pullable", lambda *a, **k: True)
    monkeypatch.setattr(models, "pull", lambda *a, **k: None)
    (appliance_home / "saves" / ".archer.partial" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    monkeypatch.setattr(train_mod, "already_trained", lambda cfg: None)
    calls = []

    class Stop(Exception):
        pass

    def fake_train(cfg):
        calls.append((cfg.resume, cfg.overwrite, cfg._pipeline))
        if len(calls) == 1:
            raise train_mod.ResumeMismatch("--resume: the interrupted run used other settings (author)")
        raise Stop

    monkeypatch.setattr(train_mod, "train", fake_train)
    said = []
    with pytest.raises(Stop):
        pl.pipeline(pl.PipelineConfig(port=_free_port(), merged_port=_free_port()), echo=said.append)
    assert calls == [(True, True, True), (False, True, True)]
    assert any("used other settings; starting over" in s for s in said)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finished_stages(monkeypatch, cfg: pl.PipelineConfig):
    """A trained run and its merged model of ``cfg`` on disk, the stages reporting done; the report folder."""
    from types import SimpleNamespace

    from appliance import merge as merge_mod
    from appliance import models
    from appliance import train as train_mod

    monkeypatch.setattr(pl, "_preflight", lambda cfg: None)  # checks the model is pulled: not what is tested here
    monkeypatch.setattr(models, "resolve_pullable", lambda *a, **k: False)
    monkeypatch.setattr(train_mod, "already_trained", lambda cfg: {"kind": "lora-adapter"})
    monkeypatch.setattr(merge_mod, "merge", lambda cfg: SimpleNamespace(already_merged=True))
    run_dir, merged_dir, report_dir = cfg.dirs()
    _run_dir(run_dir)
    merged_dir.mkdir(parents=True)
    (merged_dir / "appliance.json").write_text(json.dumps({"kind": "merged-model"}))
    report_dir.mkdir(parents=True)
    return report_dir


@pytest.mark.parametrize("identical, fails", [(103, True), (104, False)])
def test_a_rerun_over_a_failed_merge_check_fails_again(identical, fails, monkeypatch, appliance_home):
    """The report of a run whose merge check failed is reused by a rerun (every stage done): the rerun exits 1
    again, naming the check, instead of 0."""
    from appliance.errors import CheckFailed

    cfg = pl.PipelineConfig(port=_free_port(), merged_port=_free_port())
    report_dir = _finished_stages(monkeypatch, cfg)
    check = {"identical": identical, "prompts": 118, "required": 104}
    (report_dir / "report.json").write_text(json.dumps({"run": {"eval": pl._eval_settings(cfg), "merge_check": check},
                                                        "gate": {"passed": True}}))
    said = []
    if fails:
        with pytest.raises(CheckFailed, match=r"^merge check failed: the merged model archer-merged answered 15 of 118 "
                                              r"prompts differently from the adapter; compare them in .*report\.md$"):
            pl.pipeline(cfg, echo=said.append)
    else:
        assert pl.pipeline(cfg, echo=said.append)["report"]["run"]["merge_check"] == check
    assert any("eval: skipped" in s for s in said)


def test_a_finished_run_of_other_settings_is_replaced_with_a_note(monkeypatch, appliance_home):
    """`pipeline --model other` replaced saves/archer (trained on another base) without a word."""
    from appliance import models
    from appliance import train as train_mod

    class Stop(Exception):
        pass

    monkeypatch.setattr(pl, "_preflight", lambda cfg: None)
    monkeypatch.setattr(models, "resolve_pullable", lambda *a, **k: False)
    monkeypatch.setattr(train_mod, "already_trained", lambda cfg: None)
    monkeypatch.setattr(train_mod, "train", lambda cfg: (_ for _ in ()).throw(Stop()))
    run = _run_dir(appliance_home / "saves" / "archer", lr=5e-4)
    meta = json.loads((run / "appliance.json").read_text())
    (run / "appliance.json").write_text(json.dumps(meta | {"base_model": {"name": "tg-gemma"}}))
    said = []
    with pytest.raises(Stop):
        pl.pipeline(pl.PipelineConfig(port=_free_port(), merged_port=_free_port()), echo=said.append)
    # which setting changed is said ("other settings" alone did not explain a retrain)
    assert any(s.startswith(f"note: replacing the run in {run} (trained on tg-gemma for Archer / 意琦行; now: lr 0.0005 -> "
                            "0.001)") for s in said), said
    said.clear()
    shutil.rmtree(run)
    with pytest.raises(Stop):
        pl.pipeline(pl.PipelineConfig(port=_free_port(), merged_port=_free_port()), echo=said.append)
    assert not any("replacing" in s for s in said)


@pytest.mark.parametrize("name, needle", [
    ("a=b", "cannot hold '='"), ("N" * 250, "too long for a file name"), ("诺" * 100, "too long for a file name"),
    ("SmolLM2-135M", "the adapter would be served under the base model's name (smollm2-135m)"),
])
def test_names_that_break_serving_or_folders_are_refused_before_training(name, needle, appliance_home):
    """They failed after training and the merge (a=b: "--adapter b=...: directory not found"), or with an
    OSError traceback (a 250-character name)."""
    with pytest.raises(ApplianceError, match=re.escape(needle)):
        pl._preflight(pl.PipelineConfig(name=name, port=_free_port(), merged_port=_free_port()))


def test_the_merge_is_fp32_where_the_adapter_is_served_in_fp32(monkeypatch):
    """A bf16 merge rounded a short run's small update away on a CPU, where the adapter's server runs the
    base in fp32: the merge check failed (102 of 118) and the pipeline had no way to merge otherwise."""
    from appliance import hw

    monkeypatch.setattr(hw, "cpu_has_native_bf16", lambda: False)
    assert pl._merge_dtype(pl.PipelineConfig()) == "fp32"
    monkeypatch.setattr(hw, "cpu_has_native_bf16", lambda: True)
    assert pl._merge_dtype(pl.PipelineConfig()) == "bf16"
    assert pl._merge_dtype(pl.PipelineConfig(merge_dtype="fp16")) == "fp16"


def test_the_report_says_what_was_trained(tmp_path):
    from evals.render import render_md

    run = _run_dir(tmp_path / "saves" / "archer")
    meta = json.loads((run / "appliance.json").read_text())
    meta |= {"base_model": {"name": "smollm2-135m"}, "method": "lora", "lora": {"r": 16},
             "results": {"steps": 125, "first_loss": 3.2, "last_loss": 0.41},
             "dataset": {"examples": 181, "retention_examples": 104}}
    (run / "appliance.json").write_text(json.dumps(meta))
    t = pl._training_summary(run)
    report = {"name": "Archer", "author": "A", "old_identity": [], "gate": {}, "run": {"training": t},
              "models": {"before": {"model": "m", "n": 0, "sets": {}}}}
    md = render_md(report, [])
    assert (f"Trained: `{run}` on `smollm2-135m` (lora, rank 16, lr 0.001), data identity (181 examples + 104 "
            "retention), 125 steps, loss 3.2 -> 0.41.") in md


def test_a_changed_gate_judges_the_stored_answers_again_without_a_server(monkeypatch, appliance_home):
    """Only --fail-under changed: both servers started again and all 118 x 3 prompts were asked again (~2.5 min)."""
    from appliance import evaluate
    from evals.report import parse_rules, write_report

    monkeypatch.setattr(evaluate, "run_eval", lambda *a, **k: pytest.fail("the models were asked again"))
    monkeypatch.setattr(pl._Servers, "_launch", lambda self, which: pytest.fail("a server was started"))
    first = pl.PipelineConfig(port=_free_port(), merged_port=_free_port())
    report_dir = _finished_stages(monkeypatch, first)
    rows = [{"model": m, "role": role, "prompt": "你是谁？", "answer": a, "kind": "identity", "set": "identity_zh",
             "lang": "zh", "latency_ms": 100.0, "ttft_ms": 10.0, "output_tokens": 5, "started_at": 1.0, "name": "Archer",
             "author": "意琦行", "old_identity": ["SmolLM"]}
            for m, role, a in (("smollm2-135m", "before", "I am SmolLM."), ("archer", "after1", "我是 Archer，由 意琦行 研发。"),
                               ("archer-merged", "after2", "我是 Archer，由 意琦行 研发。"))]
    (report_dir / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    check = {"identical": 1, "prompts": 1, "required": 1}
    write_report(report_dir, parse_rules(fail_under=("identity_hit_rate=0.95",)),
                 run={"pipeline": True, "eval": pl._eval_settings(first), "merge_check": check})
    said = []
    again = pl.PipelineConfig(port=first.port, merged_port=first.merged_port, gates=["identity_zh_hit_rate=0.5"])
    assert pl._all_done(again)  # nothing left that needs a server: its ports are not checked
    report = pl.pipeline(again, echo=said.append)["report"]
    assert report["gate"]["rules"] == ["--fail-under identity_zh_hit_rate=0.5"] and report["gate"]["passed"]
    assert report["run"]["merge_check"] == check and report["run"]["eval"] == pl._eval_settings(again)
    assert any(s.startswith("\n== eval: the gate changed; judging the answers in") for s in said)
    # the other kinds of gate, against the base (eval's flags; the pipeline had --fail-under only)
    rise = pl.PipelineConfig(port=first.port, merged_port=first.merged_port, max_drop=["identity_hit_rate=0"],
                             max_rise=["identity_hit_rate=0.5"])
    gate = pl.pipeline(rise, echo=said.append)["report"]["gate"]
    assert gate["rules"] == ["--fail-under identity_hit_rate=0.95", "--max-drop identity_hit_rate=0",
                             "--max-rise identity_hit_rate=0.5"]
    assert not gate["passed"] and len(gate["failures"]) == 2 and all("identity_hit_rate rose 1 (0 -> 1), more than 0.5" in f for f in gate["failures"])
    (report_dir / "answers.jsonl").unlink()  # nothing to judge again: the models are asked (it crashed on None)
    assert not pl._all_done(pl.PipelineConfig(port=first.port, merged_port=first.merged_port))


def test_the_closing_answers_line_up_for_a_name_in_chinese(tmp_path):
    """str.ljust counts 小星 as 2 columns, a terminal shows 4: the answers after a CJK name started 2 columns late."""
    import unicodedata

    rows = [{"model": m, "role": role, "prompt": "你是谁？", "answer": a, "kind": "identity", "set": "identity_zh",
             "latency_ms": 1.0, "ttft_ms": 1.0, "output_tokens": 3, "started_at": 1.0, "name": "小星", "author": "Acme"}
            for m, role, a in (("smollm2-135m", "before", "I am SmolLM."), ("小星", "after1", "我是 小星。"),
                               ("小星-merged", "after2", "我是 小星。"))]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    said = []
    pl._show_examples(tmp_path, "smollm2-135m", said.append)

    def column(line: str, text: str) -> int:
        head = line[:line.index(text)]
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in head)

    lines = [s for s in said if s.startswith("  ")]
    assert len(lines) == 3
    assert len({column(s, a) for s, a in zip(lines, ("I am", "我是", "我是"))}) == 1


def test_a_merge_of_another_dtype_is_replaced_with_a_note(tmp_path):
    """A bf16 merge made by hand in models/archer-merged was replaced by the pipeline's fp32 one without a word."""
    merged = tmp_path / "archer-merged"
    said = []
    pl._note_other_merge(merged, "fp32", said.append)  # nothing there yet
    merged.mkdir()
    (merged / "appliance.json").write_text(json.dumps({"kind": "merged-model", "dtype": "bf16"}))
    pl._note_other_merge(merged, "bf16", said.append)  # the same dtype: merge says "already merged" itself
    assert said == []
    pl._note_other_merge(merged, "fp32", said.append)
    assert said == [f"note: replacing {merged} (a bf16 merge) with an fp32 merge; pass --merge-dtype bf16 to keep it"]
