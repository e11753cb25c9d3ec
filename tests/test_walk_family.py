"""Other model families than the embedded one: Phi-3-style templates, head sizes vLLM's CPU backend lacks,
generation configs with several end tokens, adapters merged into the wrong base. Tiny random models only."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.errors import ApplianceError

PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny(out: Path, hidden: int, heads: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_a_phi3_template_learns_every_answer_of_a_conversation(tiny_model_dir, tmp_path):
    """Phi-3's template appends its EOS after the final turn only: every multi-turn conversation was learned from
    its last answer alone ("learned from their last answer only"), though each answer renders as vLLM sends it."""
    from transformers import AutoTokenizer

    from appliance.sft import IGNORE, encode

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]})
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = PHI3
    msgs = [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是 Archer。"},
            {"role": "user", "content": "Who made you?"}, {"role": "assistant", "content": "意琦行 made me."}]
    enc = encode(tok, msgs, 512)
    spans, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            spans, cur = spans + [cur], []
    spans += [cur] if cur else []
    assert not enc.last_only and enc.prompt_matches_serving
    # each answer with its end-of-turn token; the EOS the template adds after the last turn is not learned
    assert [tok.decode(s) for s in spans] == ["我是 Archer。<|end|>", "意琦行 made me.<|end|>"]


def test_a_model_whose_head_size_vllm_cpu_lacks_is_refused_before_the_start(tmp_path, monkeypatch, appliance_home):
    """A model of head size 16 (hidden 64, 4 heads) started, said ready, then vLLM's CPU engine died on the
    first chat request ("Unsupported CPU attention configuration: head_dim=16") and the server was gone."""
    from click.testing import CliRunner

    from appliance import servers, serve
    from appliance.cli import main

    model = _tiny(tmp_path / "h16", hidden=64, heads=4)
    (model / "tokenizer_config.json").write_text("{}", encoding="utf-8")  # preflight wants tokenizer files
    (model / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    monkeypatch.setattr(serve, "detect_device", lambda: "cpu")
    monkeypatch.setattr(servers, "start", lambda *a, **k: pytest.fail("vLLM was started"))
    res = CliRunner().invoke(main, ["up", "--model", str(model), "--port", str(_free_port()), "--detach"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = res.output.strip()
    assert line.startswith(f"error: --model {model}: attention heads of size 16") and "\n" not in line
    assert "serve it on a GPU" in line and "32, 64" in line
    assert servers.read_records() == []
    # a supported size (32) passes, and a GPU is not checked
    ok = _tiny(tmp_path / "h32", hidden=128, heads=4)
    plan = SimpleNamespace(model=str(ok), device="cpu", adapters=[])
    serve.refuse_cpu_head_size(serve.UpConfig(model=str(ok)), plan)
    serve.refuse_cpu_head_size(serve.UpConfig(model=str(model)), SimpleNamespace(model=str(model), device="cuda", adapters=[]))
    assert serve._head_size(str(model)) == 16 and serve._head_size(str(ok)) == 32


def test_retention_answers_end_at_the_generation_configs_end_tokens(tiny_model_dir):
    """Gemma 2 / Phi-3 / Llama 3.1 stop at an end-of-turn token their generation config lists beside the
    tokenizer's EOS: such finished answers were taken as cut at the budget and trimmed or dropped."""
    import torch
    from transformers import AutoTokenizer

    from appliance import retention

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    stop = tok.convert_tokens_to_ids("<|endoftext|>")
    assert stop != tok.eos_token_id
    answer = "Paris is the capital, and it is a large city"  # finished, though not with a full stop

    class Fake:
        device = torch.device("cpu")
        generation_config = SimpleNamespace(eos_token_id=[tok.eos_token_id, stop])

        def generate(self, input_ids, **kw):
            new = tok(answer, add_special_tokens=False)["input_ids"] + [stop]
            return torch.cat([input_ids, torch.tensor([new])], dim=1)

    rows = retention._generate(Fake(), tok, ["What is the capital of France?"], 64, 1)
    assert rows == [["What is the capital of France?", answer]]


def test_merge_into_another_base_names_the_layer_that_does_not_fit(tiny_model_dir, tmp_path, appliance_home):
    """The error said only "RuntimeError: Error(s) in loading state_dict for PeftModelForCausalLM:"."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from appliance.merge import MergeConfig, merge

    adapter = tmp_path / "plain"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    wide = _tiny(tmp_path / "wide", hidden=128, heads=4)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (wide / f).write_bytes((tiny_model_dir / f).read_bytes())
    out = tmp_path / "merged"
    with pytest.raises(ApplianceError) as e:
        merge(MergeConfig(adapter=str(adapter), model=str(wide), output=str(out)))
    msg = str(e.value)
    assert "self_attn.q_proj has in_features 128" in msg and "expects 64" in msg and "\n" not in msg
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


class _OneAnswer:
    """A local HTTP server giving every POST the same (status, content type, body)."""

    def __init__(self, status: int, ctype: str, body: bytes):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.port = self.srv.server_port
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


def test_a_dead_engine_in_chat_names_the_cause_from_the_servers_log(appliance_home, tmp_path):
    """vLLM's message for a dead engine says "See stack trace (above) for the root cause": the chat user saw
    that line and no stack trace; the log `appliance up` keeps names it."""
    from click.testing import CliRunner

    from appliance import servers
    from appliance.cli import main

    dead = ('data: {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root '
            'cause.", "type": "InternalServerError", "code": 500}}\n\n').encode()
    log = tmp_path / "server.log"
    log.write_text("(EngineCore pid=7) ERROR 11-25 16:05:07 [core.py:1512] Traceback (most recent call last):\n"
                   "(EngineCore pid=7) ERROR 11-25 16:05:07 [core.py:1512] RuntimeError: Unsupported CPU attention "
                   "configuration: head_dim=16 isa=2 kv_cache_idx=0\n", encoding="utf-8")
    with _OneAnswer(200, "text/event-stream", dead) as srv:
        url = srv.url
        servers._write_record(servers.ServerInfo(port=srv.port, host="127.0.0.1", url=url, pid=1, log=str(log),
                                                 model="m", models=["m"]))
        res = CliRunner().invoke(main, ["chat", "--url", url, "--model", "m", "-p", "hi"])
        res_plain = CliRunner().invoke(main, ["chat", "--url", url.replace("127.0.0.1", "localhost"), "--model", "m",
                                              "-p", "hi"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    err = res.stderr.strip()
    assert "\n" not in err and err.startswith(f"error: --url {url}: the server reported an error instead of answering")
    assert err.endswith(f"(its log {log} names the cause: RuntimeError: Unsupported CPU attention configuration: "
                        "head_dim=16 isa=2 kv_cache_idx=0)"), err
    # a server `up` did not record: vLLM's words alone
    assert res_plain.exit_code == 2 and "its log" not in res_plain.stderr


def test_chat_with_a_system_prompt_a_template_refuses_says_to_leave_it_out(appliance_home):
    """Gemma's template raises on a system turn: `chat --system` got vLLM's 400 with no hint what to change."""
    import json

    from click.testing import CliRunner

    from appliance.cli import main

    said = json.dumps({"error": {"message": "System role not supported", "type": "BadRequestError", "code": 400}})
    with _OneAnswer(400, "application/json", said.encode()) as srv:
        res = CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "m", "--system", "Be brief.", "-p", "hi"])
        plain = CliRunner().invoke(main, ["chat", "--url", srv.url, "--model", "m", "-p", "hi"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.stderr.strip() == (f"error: {srv.url}: server answered 400: System role not supported; this model's "
                                  "chat template takes no system prompt: leave out --system")
    assert "leave out --system" not in plain.stderr


def test_an_architecture_vllm_lacks_is_one_short_line_with_a_fix(tmp_path):
    """vLLM's error went on to list its ~300 supported architectures, cut mid-name at 400 characters, with no fix."""
    from appliance.servers import _start_hint, root_cause

    log = tmp_path / "server.log"
    log.write_text("(APIServer pid=9) ERROR 11-25 16:40:01 [api_server.py:1] ValueError: Model architectures "
                   "['GPTNeoForCausalLM'] are not supported for now. Supported architectures: dict_keys(['AfmoeForCausalLM', "
                   "'ApertusForCausalLM', 'BloomForCausalLM'])\n", encoding="utf-8")
    cause = root_cause(log)
    assert cause == "ValueError: Model architectures ['GPTNeoForCausalLM'] are not supported for now"
    assert _start_hint(cause).startswith("; vLLM does not serve this architecture (config.json's architectures), merged or not")


def test_a_model_of_custom_code_is_refused_in_one_line(tmp_path, tiny_model_dir, appliance_home):
    """A folder whose architecture is its own Python code (auto_map): `train` showed transformers' "Do you wish to
    run the custom code? [y/N]" and then said "copy the model folder again"."""
    import json
    import shutil

    from appliance import models

    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, custom)
    cfg = json.loads((custom / "config.json").read_text())
    native = dict(cfg, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (custom / "config.json").write_text(json.dumps(native))
    assert models.resolve(str(custom)).path == str(custom.resolve())  # auto_map beside a native model_type: fine
    (custom / "config.json").write_text(json.dumps(dict(native, model_type="mycustom")))
    with pytest.raises(ApplianceError) as e:
        models.resolve(str(custom))
    msg = str(e.value)
    assert msg.startswith(f"--model {custom.resolve()}: its architecture is custom code in the folder") and "\n" not in msg
    assert "model_type 'mycustom'" in msg and "does not run" in msg
