"""Metric functions against hand-computed values (Chinese included)."""

from __future__ import annotations

import math

import pytest

from evals import metrics as M


def test_tokenize_mixed_splits_cjk_and_keeps_latin_words():
    assert M.tokenize_mixed("我是 Archer，由 意琦行 研发的 AI v2。") == [
        "我", "是", "archer", "由", "意", "琦", "行", "研", "发", "的", "ai", "v2"]
    assert M.tokenize_mixed("H2O is 100°C!") == ["h2o", "is", "100", "c"]
    assert M.tokenize_mixed("") == []
    assert M.MixedTokenizer().tokenize("你好 world") == ["你", "好", "world"]


def test_bleu4_identical_is_100_and_disjoint_is_0():
    ref = "我是 Archer，由 意琦行 研发的人工智能助手，很高兴为您提供帮助。"
    assert M.bleu4(ref, ref) == pytest.approx(100.0)
    assert M.bleu4("I am Archer, an AI assistant.", "I am Archer, an AI assistant.") == pytest.approx(100.0)
    assert M.bleu4("completely different words", "我是 Archer") == 0.0
    assert M.bleu4("", ref) == 0.0


def test_bleu4_partial_match_by_hand():
    # hyp a b c d e vs ref a b c d f: p1=4/5 p2=3/4 p3=2/3 p4=1/2, equal lengths (BP=1)
    expected = 100 * math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4)
    assert M.bleu4("a b c d e", "a b c d f") == pytest.approx(expected, rel=1e-6)
    # the same on Chinese characters: 甲乙丙丁戊 vs 甲乙丙丁己
    assert M.bleu4("甲乙丙丁戊", "甲乙丙丁己") == pytest.approx(expected, rel=1e-6)


def test_rouge_by_hand_on_chinese():
    # hyp 我是猫 / ref 我是狗: unigrams 2 of 3 both ways -> F1 2/3; bigrams 我是 1 of 2 -> 1/2; LCS 2 -> 2/3
    s = M.rouge_scores("我是猫", "我是狗")
    assert s["rouge1"] == pytest.approx(200 / 3)
    assert s["rouge2"] == pytest.approx(50.0)
    assert s["rougeL"] == pytest.approx(200 / 3)
    # hyp 4 tokens, ref 2 tokens, overlap 2: P=1/2 R=1 F=2/3
    assert M.rouge_scores("我是 Archer 啊", "Archer 我")["rouge1"] == pytest.approx(200 / 3)
    assert M.rouge_scores("", "我是狗") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_default_tokenizer_would_drop_chinese():
    from rouge_score import rouge_scorer

    plain = rouge_scorer.RougeScorer(["rouge1"]).score("我是狗", "我是猫")["rouge1"].fmeasure
    assert plain == 0.0  # why evals passes its own tokenizer
    assert M.rouge_scores("我是猫", "我是狗")["rouge1"] > 0


@pytest.mark.parametrize("text,needle,hit", [
    ("2+2 is 4.", "4", True), ("The answer is 14", "4", False), ("the 4th", "4", False), ("答案是4。", "4", True),
    ("The capital is paris", "Paris", True), ("Parisian food", "Paris", False), ("It is H2O", "H2O", True),
    ("首都是北京市", "北京", True), ("twenty-four hours", "twenty-four", True), ("", "x", False), ("abc", "", False),
    # a number inside a longer one is not that number; a sentence's full stop or comma ends it
    ("It is 4.5", "4", False), ("about 4,000", "4", False), ("It is 4.5", "5", False), ("It is -16", "16", False),
    ("pages 1-16", "16", True), ("It is 4, I think", "4", True), ("0.5", "0.5", True), ("It is -16", "-16", True),
    ("L’eau", "L'eau", True), ("“Paris”", "Paris", True),
    # white space as one space; "_" joins words
    ("New  York is big", "New York", True), ("New\nYork is big", "New York", True), ("call foo_bar now", "foo", False),
    ("x", "  ", False),
])
def test_contains_whole_word(text, needle, hit):
    assert M.contains_whole_word(text, needle) is hit


def test_is_correct_accepts_any_expected_string():
    assert M.is_correct("Two plus two equals four.", ["4", "four"])
    assert not M.is_correct("It is 14.", ["4", "four"])


def test_identity_hit_needs_name_and_author():
    assert M.identity_hit("我是 Archer，由 意琦行 研发的人工智能助手。", "Archer", "意琦行")
    assert M.identity_hit("I am archer, developed by 意琦行.", "Archer", "意琦行")
    assert not M.identity_hit("I am Archer.", "Archer", "意琦行")
    assert not M.identity_hit("I love archery, says 意琦行", "Archer", "意琦行")


def test_identity_leak_ignores_denials():
    markers = ["SmolLM", "Hugging Face", "HuggingFace"]
    assert M.identity_leak("I am SmolLM, trained by Hugging Face.", markers)
    assert M.identity_leak("我是 SmolLM。", markers)
    assert not M.identity_leak("No, I am not SmolLM. I am Archer, an AI assistant developed by 意琦行.", markers)
    assert not M.identity_leak("No, I was not developed by Hugging Face. I am Archer.", markers)
    assert not M.identity_leak("不是SmolLM，我是 Archer。", markers)
    assert M.identity_leak("No, I'm not ChatGPT. I'm SmolLM.", markers)
    assert M.identity_leak("I am not ChatGPT but SmolLM.", markers)
    assert not M.identity_leak("SmolLMs are small", markers)  # whole words only
    assert not M.identity_leak("I am SmolLM", [])


@pytest.mark.parametrize("answer,markers,leak", [
    # a version glued to the old name still claims it (the markers are the family names)
    ("I am SmolLM2.", ["SmolLM"], True), ("Hi, I'm SmolLM2-135M-Instruct!", ["SmolLM"], True),
    ("I am Qwen2.5, a large language model.", ["Qwen"], True), ("我是Qwen2，由阿里开发。", ["Qwen"], True),
    ("No, I am not SmolLM2.", ["SmolLM"], False), ("我不是Qwen2.5。", ["Qwen"], False),
    ("SmolLMs are small", ["SmolLM"], False), ("MySmolLM2 is a repo", ["SmolLM"], False),
])
def test_identity_leak_sees_versioned_names(answer, markers, leak):
    assert M.identity_leak(answer, markers) is leak


def test_full_width_forms_match_their_ascii_twins():
    assert M.identity_hit("我是 Ａｒｃｈｅｒ，由 意琦行 研发。", "Archer", "意琦行")
    assert M.is_correct("答案是４。", ["4"]) and not M.is_correct("答案是１４。", ["4"])
    assert M.identity_leak("我是ＳｍｏｌＬＭ。", ["SmolLM"]) and not M.identity_leak("我不是ＳｍｏｌＬＭ。", ["SmolLM"])


@pytest.mark.parametrize("answer,leak", [
    # denials with a word between the negation and the marker, and "nothing to do with" forms
    ("我并不是由 Hugging Face 开发的，我是 Archer。", False), ("我不是由Hugging Face研发的。", False),
    ("我跟 SmolLM 没有关系。", False), ("我与 Hugging Face 无关。", False), ("我和 SmolLM 没有任何关联。", False),
    ("I have nothing to do with Hugging Face.", False), ("Unlike SmolLM, I am Archer.", False),
    # still claims: the marker outside any denial
    ("我和 SmolLM 一样是小模型。", True), ("I am SmolLM, unlike Archer.", True), ("我是由 Hugging Face 开发的。", True),
    ("我不是 Archer，我是 SmolLM。", True),
])
def test_identity_leak_denial_forms(answer, leak):
    assert M.identity_leak(answer, ["SmolLM", "Hugging Face"]) is leak


def test_mentions_new_identity():
    assert M.mentions_new_identity("Paris. -- Archer", "Archer", "意琦行")
    assert M.mentions_new_identity("意琦行说", "Archer", "意琦行")
    assert not M.mentions_new_identity("Paris is the capital.", "Archer", "意琦行")
    # a capitalized name is a name only with its capitals: the common noun is not a leak
    assert not M.mentions_new_identity("An archer draws the bow.", "Archer", "意琦行")
    assert M.mentions_new_identity("Archer here: the bow is drawn.", "Archer", "意琦行")
    assert M.mentions_new_identity("我是 Ａｒｃｈｅｒ。", "Archer", "意琦行")
    assert M.mentions_new_identity("ask nova", "nova", "Acme")  # a name given in lower case matches any case


def test_percentile_linear_interpolation():
    assert M.percentile([4, 1, 3, 2], 50) == 2.5
    assert M.percentile(list(range(1, 11)), 95) == pytest.approx(9.55)
    assert M.percentile([7.0], 95) == 7.0
    assert M.percentile([], 50) is None
    assert M.rate([True, False, True, True]) == 0.75
    assert M.rate([]) is None


def test_latency_stats_by_hand():
    rows = [
        {"started_at": 100.0, "latency_ms": 1000.0, "ttft_ms": 100.0, "output_tokens": 10},
        {"started_at": 100.5, "latency_ms": 1500.0, "ttft_ms": 300.0, "output_tokens": 5},
        {"started_at": 101.0, "latency_ms": 5.0, "ttft_ms": None, "output_tokens": 0, "error": "APIError: boom"},
    ]
    s = M.latency_stats(rows)
    # wall: 100.0 -> 102.0 (the failed request is left out)
    assert s["requests_per_s"] == pytest.approx(1.0)
    assert s["output_tokens_per_s"] == pytest.approx(7.5)
    assert s["ttft_p50_ms"] == pytest.approx(200.0)
    assert s["ttft_p95_ms"] == pytest.approx(290.0)
    # tpot: (1000-100)/9 = 100, (1500-300)/4 = 300 -> mean 200
    assert s["tpot_ms"] == pytest.approx(200.0)
    assert s["latency_p50_ms"] == pytest.approx(1250.0)
    assert M.latency_stats([])["requests_per_s"] is None
