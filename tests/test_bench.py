"""``appliance bench``: the code runs on CPU with tiny settings and reports every field.

Speed targets live in the benchmark reports (docs/benchmarks.md), never in these assertions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import bench
from appliance.bench_serve import ServeBenchConfig, bench_serve, parse_sweep, summarize
from appliance.cli import main
from appliance.errors import ApplianceError

TRAIN_FIELDS = {"variant", "method", "steps", "batch", "samples", "tokens", "elapsed_s", "samples_per_s",
                "tokens_per_s", "peak_mem_mb", "n_linear_params", "mfu", "first_loss", "last_loss"}
POSITIVE = ("samples", "tokens", "elapsed_s", "samples_per_s", "tokens_per_s", "peak_mem_mb", "n_linear_params")


def test_bench_train_quick_runs_both_variants(tiny_model_dir, appliance_home):
    res = CliRunner().invoke(main, ["bench", "train", "--model", str(tiny_model_dir), "--quick"])
    assert res.exit_code == 0, res.output
    reports = list((appliance_home / "reports" / "bench").glob("*/train.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".md").is_file()
    payload = json.loads(reports[0].read_text(encoding="utf-8"))
    assert payload["kind"] == "bench-train"
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["versions"]["torch"]
    assert payload["settings"]["steps"] == 3 and payload["settings"]["mfu_formula"]
    runs = {r["variant"]: r for r in payload["results"]}
    assert set(runs) == {"naive", "default"}
    for r in runs.values():
        assert TRAIN_FIELDS <= set(r), TRAIN_FIELDS - set(r)
        assert all(r[k] > 0 for k in POSITIVE), r
        assert r["steps"] == 3 and r["method"] == "lora"
        assert r["mfu"] is None  # no GPU: no peak FLOPS, so no MFU is claimed
    assert runs["naive"]["batch"] == "1 x ga 8" and runs["naive"]["samples"] == 24
    assert all(r["torch_threads"] >= 1 for r in runs.values())
    assert "naive" in res.output and "default" in res.output and "tokens/s" in res.output
    assert payload["settings"]["variants"] == ["naive", "default"]  # fast runs only when asked, on a CPU
    assert len(runs["naive"]["losses"]) == 3 and len(runs["default"]["losses"]) == 3
    assert "Loss per optimizer step" in reports[0].with_suffix(".md").read_text(encoding="utf-8")


def test_bench_train_fast_variant_batches_by_tokens(tiny_model_dir, appliance_home):
    res = CliRunner().invoke(main, ["bench", "train", "--model", str(tiny_model_dir), "--quick", "--variant", "fast",
                                    "--batch-tokens", "512", "--steps", "2"])  # --steps wins over --quick's 3
    assert res.exit_code == 0, res.output
    payload = json.loads(next((appliance_home / "reports" / "bench").glob("*/train.json")).read_text(encoding="utf-8"))
    (r,) = payload["results"]
    assert r["variant"] == "fast" and r["steps"] == 2 and "512 tokens" in r["batch"] and "grad ckpt" in r["batch"]
    assert TRAIN_FIELDS <= set(r) and all(r[k] > 0 for k in POSITIVE)
    assert r["samples"] > 2 * 4  # a 512-token budget holds more ~60-token samples than the default batch of 4
    assert payload["settings"]["batch_tokens"] == 512


def test_naive_counts_only_real_tokens_when_padding(tiny_model_dir):
    r = bench.naive_train(str(tiny_model_dir), steps=1, grad_accum=2, micro_batch=4)
    assert r["samples"] == 8
    assert 0 < r["tokens"] < r["padded_tokens"]  # padding to the longest adds pad tokens that are not counted


def test_shape_config_is_qwen15_18b_exactly(real_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    cfg = bench.shape_config("qwen1.5-1.8b", tok)
    assert cfg.model_type == "qwen2"
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (2048, 5504, 24)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (16, 16, 151936)
    assert cfg.max_position_embeddings == 32768 and cfg.rms_norm_eps == 1e-6 and cfg.tie_word_embeddings is False
    assert cfg.rope_parameters["rope_theta"] == 1e6
    assert (cfg.eos_token_id, cfg.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    # ~1.84B parameters, as published (24 layers of 2048 wide, two untied 151936-token embeddings)
    assert 1.80e9 < bench._linear_params_from_config(cfg) + cfg.vocab_size * cfg.hidden_size < 1.86e9


def test_build_shape_writes_a_loadable_model_with_the_embedded_tokenizer(real_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=49152 + 64)
    out = bench.build_shape("qwen1.5-1.8b", tokenizer_from=str(real_model_dir), out=str(tmp_path / "shape"), overrides=small)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == 49152 + 64
    assert str(model.dtype) == "torch.bfloat16"
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 49152 and "SmolLM" in tok.chat_template
    assert json.loads((out / "appliance.json").read_text())["shape"] == "qwen1.5-1.8b"
    assert not list(tmp_path.glob(".shape*"))


def test_bad_inputs_are_one_line_errors(tiny_model_dir):
    for args, needle in ((["bench", "train", "--method", "full"], "--method full"),
                         (["bench", "train", "--shape", "gpt-5"], "--shape gpt-5"),
                         (["bench", "serve", "--concurrency", "1,x"], "--concurrency 1,x"),
                         (["bench", "serve", "--port", "0"], "--port 0: out of range"),  # before the model loads
                         (["bench", "serve", "--num-prompts", "-5"], "--num-prompts -5: must be >= 1"),
                         (["bench", "serve", "--num-prompts", "0"], "--num-prompts 0: must be >= 1"),
                         (["bench", "serve", "--client-procs", "0"], "--client-procs 0: must be >= 1"),
                         (["bench", "train", "--threads", "-1"], "--threads -1: must be >= 1"),
                         (["bench", "serve", "--threads", "0"], "--threads 0: must be >= 1"),
                         (["bench", "train", "--out", __file__], "is a file, not a folder")):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_parse_sweep_and_summary_math():
    assert parse_sweep("1, 4,16") == [1, 4, 16] and parse_sweep(None) == []
    with pytest.raises(ApplianceError):
        parse_sweep("0,4")
    recs = [{"start": 0.0, "first": 0.1, "end": 1.1, "out": 11, "error": None},
            {"start": 0.5, "first": 0.7, "end": 2.0, "out": 11, "error": None},
            {"start": 0.5, "first": None, "end": 0.6, "out": 0, "error": "APIError: boom"}]
    s = summarize(recs, concurrency=2, procs=1)
    assert s["errors"] == 1 and s["first_error"] == "APIError: boom"
    assert s["output_tokens"] == 22 and s["duration_s"] == 2.0 and s["output_tok_s"] == 11.0
    assert s["ttft_ms_p50"] == 100.0 and s["ttft_ms_p95"] == 200.0
    assert s["tpot_ms_p50"] == 100.0 and s["tpot_ms_p95"] == 130.0


SERVE_FIELDS = {"scenario", "models", "concurrency", "requests", "errors", "output_tokens", "output_tok_s",
                "ttft_ms_p50", "ttft_ms_p95", "tpot_ms_p50", "tpot_ms_p95", "client_procs"}


@pytest.mark.slow
def test_bench_serve_quick_against_the_real_server(real_model_dir, appliance_home):
    port = 18391
    record = appliance_home / ".appliance" / "servers" / f"{port}.json"
    try:
        payload = bench_serve(ServeBenchConfig(model=str(real_model_dir), quick=True, port=port, n_adapters=2, threads=1,
                                               vllm_args=["--max-num-seqs", "16"]))
    finally:
        if record.exists():  # the bench stops its server itself; this is only for a failure half-way
            from appliance.serve import down

            down(port)
    r = payload["results"]
    assert r["cold_start_s"] > 0
    points = {(p["scenario"], p["concurrency"]): p for p in r["sweep"]}
    assert set(points) == {(s, c) for s in ("base", "adapter", "adapters") for c in (1, 4)}
    for p in points.values():
        assert SERVE_FIELDS <= set(p) and p["errors"] == 0, p
        assert p["requests"] == 8 and p["output_tokens"] == 8 * 32  # ignore_eos: every request gives all tokens
        assert p["output_tok_s"] > 0 and 0 < p["ttft_ms_p50"] <= p["ttft_ms_p95"] and p["tpot_ms_p50"] > 0
    assert points[("adapters", 4)]["models"] == 2
    load = r["runtime_adapter_load"]
    assert load["loads"] == 2 and load["load_ms_p50"] > 0 and load["first_request_ms_p50"] > 0
    assert [g["concurrency"] for g in r["generate"]] == [1, 4]
    assert all(g["output_tok_s"] > 0 and g["output_tokens"] == g["concurrency"] * 32 for g in r["generate"])
    assert all(g["torch_threads"] == 1 for g in r["generate"])
    report = Path(payload["report_dir"])
    assert (report / "serve.json").is_file() and "ttft_ms_p50" in (report / "serve.md").read_text()
    assert not record.exists()  # the server was stopped
    assert payload["settings"]["vllm_args"]["extra"] == ["--max-num-seqs", "16"]
    log = (appliance_home / ".appliance" / "logs" / f"server-{port}.log").read_text(encoding="utf-8", errors="replace")
    assert log.splitlines()[0].endswith("--max-num-seqs 16")  # the extra vLLM args reached the server's command line


@pytest.mark.parametrize("generate", [[], [{"concurrency": 1, "output_tokens": 32, "duration_s": 1.0, "output_tok_s": 32.0,
                                           "dtype": "float32", "torch_threads": 2}]])
def test_bench_serve_report_says_when_generate_was_skipped(generate):
    from appliance.bench_serve import _markdown

    payload = {"machine": {"label": "cpu", "loadavg_1m": 0.1},
               "settings": {"model_path": "m", "shape": None, "input_len": 8, "output_len": 32, "client": "openai"},
               "results": {"sweep": [], "generate": generate}}
    md = _markdown(payload)
    assert ("not run (--no-generate)" in md) == (not generate)
    assert ("| concurrency | output_tokens |" in md) == bool(generate)


def test_a_sweep_point_where_every_request_failed_is_named():
    """100% errors (prompts longer than the context) were only in serve.json, and bench serve exited 0."""
    from appliance.bench_serve import _markdown, all_failed

    row = {"scenario": "base", "models": 1, "concurrency": 1, "requests": 2, "errors": 2,
           "first_error": "BadRequestError: maximum context length is 2048"}
    ok = {**row, "concurrency": 4, "errors": 0, "first_error": None}
    payload = {"machine": {"label": "cpu", "loadavg_1m": 0.1},
               "settings": {"model_path": "m", "shape": None, "input_len": 3000, "output_len": 4, "client": "openai"},
               "results": {"sweep": [row, ok], "generate": []}}
    assert all_failed(payload) == ("every request failed at 1 sweep point(s) (base x1); the first error: "
                                   "BadRequestError: maximum context length is 2048")
    assert "errors at base x1: 2 of 2, the first: BadRequestError: maximum context length" in _markdown(payload)
    payload["results"]["sweep"] = [ok, {**row, "errors": 1}]
    assert all_failed(payload) is None


def test_a_relative_out_is_placed_as_evals_output(appliance_home, tmp_path, monkeypatch):
    """--out was relative to the current directory only, while eval's --output and train's --output go under
    $APPLIANCE_HOME: the same relative folder name ended up in two places."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    d = bench.write_report("train", {"x": 1}, "# t\n", "mybench")
    assert d == appliance_home / "mybench" and (d / "train.json").is_file() and not (elsewhere / "mybench").exists()
    (elsewhere / "here").mkdir()  # a folder that exists where the command runs is that one
    assert bench.write_report("train", {"x": 1}, "# t\n", "here") == elsewhere / "here"
    with pytest.raises(ApplianceError, match="^--out is empty"):
        bench.check_bench_common(None, "")


@pytest.mark.parametrize("args, needle", [
    (["serve", "--quick", "--vllm-arg=--port=9000"],
     "--vllm-arg --port=9000: the benchmark's server sets --port itself; use `appliance bench serve --port` instead"),
    (["serve", "--quick", "--vllm-arg=--served_model_name=x"], "--vllm-arg --served_model_name=x: the benchmark's server "
     "sets --served-model-name itself; leave it out of --vllm-arg"),
    (["serve", "--quick", "--adapters", "-1"], "--adapters -1: must be >= 1"),
    (["serve", "--quick", "--output-len", "0"], "--output-len 0: must be >= 1"),
    (["train", "--variant", "fast", "--batch-tokens", "0", "--steps", "1"], "--batch-tokens 0: must be >= 64"),
])
def test_bench_flags_are_refused_by_the_flag_given(args, needle, appliance_home):
    """`--vllm-arg=--port=9000` failed after loading the model as "-- --port=9000: `appliance up` sets ...", a bad
    --adapters dumped every setting, and --batch-tokens 0 silently ran 16384."""
    from click.testing import CliRunner

    from appliance.cli import main

    res = CliRunner().invoke(main, ["bench", *args, "--out", "b"])
    assert res.exit_code == 2 and res.output == f"error: {needle}\n", res.output
