"""Retention data: the base's own answers, trimmed to whole sentences, cached, shipped for the default model."""

from __future__ import annotations

import json

from appliance import retention


def test_trim_keeps_whole_sentences():
    assert retention._trim("Paris is the capital. It is big and") == ("Paris is the capital.", True)
    assert retention._trim("巴黎是法国的首都。它很") == ("巴黎是法国的首都。", True)
    assert retention._trim("no sentence end here") == ("no sentence end here", False)


def test_trim_falls_back_to_the_last_clause():
    # what SmolLM2 writes in Chinese: no sentence end within the budget, half a character at the cut
    assert retention._trim("光合作用是指令，用于设计编留的空间，用于\ufffd") == ("光合作用是指令，用于设计编留的空间", True)
    assert retention._trim("The waves, a tapestry woven with life,\nA canvas of") == ("The waves, a tapestry woven with life,", True)
    # a piece too short to teach anything but stopping is not kept
    assert retention._trim("是，用于设计") == ("是，用于设计", False)
    assert retention._trim("1.\n\n2") == ("1.\n\n2", False)


def test_pick_gives_each_script_an_equal_share():
    en = [f"English prompt {i}?" for i in range(30)]
    zh = [f"中文问题{i}？" for i in range(10)]
    prompts = en + zh
    got = retention.pick(prompts, 16)
    assert len(got) == 16 and len(set(got)) == 16
    assert sum(p in zh for p in got) == 8 and sum(p in en for p in got) == 8
    assert got == [p for p in prompts if p in got]  # the file's order is kept
    # the smaller script gives what it lacks to the other; asking for more than there is returns all
    got = retention.pick(prompts, 30)
    assert sum(p in zh for p in got) == 10 and sum(p in en for p in got) == 20
    assert retention.pick(prompts, 100) == prompts
    assert retention.pick(en, 5) == [en[0], en[6], en[12], en[18], en[24]]
    assert retention.pick(prompts, 0) == []


def test_generation_is_cached(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    calls = []
    real = retention._generate

    def counting(*a, **kw):
        calls.append(1)
        return [[p, f"Answer to {p}."] for p in a[2]]

    monkeypatch.setattr(retention, "_generate", counting)
    first = retention.base_answers(model, tok, str(tiny_model_dir), ["What is rain?", "What is snow?"], max_new_tokens=4)
    again = retention.base_answers(model, tok, str(tiny_model_dir), ["What is rain?", "What is snow?"], max_new_tokens=4)
    assert len(calls) == 1 and [e.messages for e in first] == [e.messages for e in again]
    assert first[0].messages == [{"role": "user", "content": "What is rain?"}, {"role": "assistant", "content": "Answer to What is rain?."}]
    # the real generator runs on the tiny model and returns one row per prompt
    rows = real(model, tok, ["Hi there"], 3, 4)
    assert len(rows) == 1 and rows[0][0] == "Hi there"


def test_shipped_answers_cover_the_default_prompts():
    from appliance.data import load_prompts

    shipped = retention.shipped_answers("smollm2-135m")
    prompts = load_prompts()
    assert len(shipped) >= 100
    assert sum(p in shipped for p in prompts) >= 100
    assert all(isinstance(a, str) for a in shipped.values())
    assert retention.shipped_answers("no-such-model") == {}
    # generated with 64 new tokens: a config asking for another budget generates its own
    assert retention.shipped_answers("smollm2-135m", max_new_tokens=32) == {}


def test_loader_is_called_only_when_answers_must_be_generated(tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    from appliance import retention

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    loads = []
    monkeypatch.setattr(retention, "_generate", lambda m, t, prompts, *a: [[p, f"Sure: {p}."] for p in prompts])
    monkeypatch.setattr(retention, "shipped_answers", lambda name, budget: {"What is rain?": "Water falling."})
    loader = lambda: loads.append(1) or object()  # noqa: E731
    shipped = retention.base_answers(loader, tok, str(tiny_model_dir), ["What is rain?"], model_name="x")
    assert loads == [] and shipped[0].messages[1]["content"] == "Water falling."
    mixed = retention.base_answers(loader, tok, str(tiny_model_dir), ["What is rain?", "What is fog?"], model_name="x")
    assert loads == [1] and [e.messages[1]["content"] for e in mixed] == ["Water falling.", "Sure: What is fog?."]


def test_a_pulled_registry_model_given_by_its_path_uses_the_shipped_answers(tmp_path):
    """`--model models/smollm2-135m` generated the base's retention answers again (14 s) instead of the shipped ones."""
    from appliance.models import pulled_registry_name

    d = tmp_path / "m"
    d.mkdir()
    assert pulled_registry_name(d) is None
    for meta, want in (({"kind": "base-model", "name": "smollm2-135m"}, "smollm2-135m"),
                       ({"kind": "base-model", "name": "not-in-the-registry"}, None),
                       ({"kind": "merged-model", "name": "smollm2-135m"}, None)):  # a merge is not the base
        (d / "appliance.json").write_text(json.dumps(meta))
        assert pulled_registry_name(d) == want
