"""pytest-benchmark figures for the metric code on a few hundred rows (timings are reported, not asserted)."""

from __future__ import annotations

import json

import pytest

from evals import metrics as M
from evals.report import _pair_scores, recompute

pytestmark = pytest.mark.benchmark_only

ZH = "我是 Archer，由 意琦行 研发的人工智能助手，很高兴为您提供帮助。"
EN = "I am Archer, an AI assistant developed by 意琦行. I'm happy to help you."
PAIRS = [(ZH if i % 2 else EN, (ZH if i % 2 else EN)[: 20 + i % 30]) for i in range(300)]


def test_bench_bleu4(benchmark):
    scores = benchmark(lambda: [M.bleu4(h, r) for h, r in PAIRS])
    assert len(scores) == 300 and all(0.0 <= s <= 100.0 for s in scores)


def test_bench_rouge(benchmark):
    scores = benchmark(lambda: [M.rouge_scores(h, r) for h, r in PAIRS])
    assert all(0.0 < s["rouge1"] <= 100.0 for s in scores)


def test_bench_recompute(benchmark, tmp_path):
    path = tmp_path / "answers.jsonl"
    rows = []
    for i, (hyp, ref) in enumerate(PAIRS):
        rows.append({"model": "m", "role": "before" if i < 150 else "after", "prompt": f"p{i % 150}", "answer": f"{hyp} {i}",
                     "reference": ref, "kind": "identity" if i % 3 else "general", "set": "s", "lang": "zh",
                     "expect": ["Archer"] if i % 3 == 0 else [], "latency_ms": 100.0 + i, "ttft_ms": 10.0,
                     "output_tokens": 20, "started_at": 1000.0 + i / 10, "error": None, "name": "Archer",
                     "author": "意琦行", "old_identity": ["SmolLM"]})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    def cold():  # without the per-pair score cache of earlier rounds
        _pair_scores.cache_clear()
        return recompute(path)

    report = benchmark(cold)
    assert report["models"]["before"]["n"] == 150 and report["models"]["after"]["n"] == 150
