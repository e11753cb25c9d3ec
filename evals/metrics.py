"""Pure metric functions: tokenization, BLEU-4, ROUGE, answer matching and latency statistics.

Scores follow LLaMA-Factory's ``ComputeSimilarity`` (mean of sentence-level BLEU-4 with
``SmoothingFunction().method3`` and ROUGE F-measures, all x100) so figures compare with the
seed tutorial's. LLaMA-Factory tokenizes with jieba; without jieba we split CJK text into
single characters and keep Latin words and numbers whole (lower-cased, punctuation dropped),
for both BLEU and ROUGE.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# one CJK character, or a run of letters/digits that are not CJK (\w minus "_" minus CJK)
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
_CJK_CHAR = re.compile(f"[{_CJK}]")


def has_cjk(text: str) -> bool:
    """True when the text holds at least one Chinese/Japanese/Korean character."""
    return bool(_CJK_CHAR.search(text or ""))


def tokenize_mixed(text: str) -> list[str]:
    """Split text into CJK characters and lower-cased Latin words/numbers; punctuation is dropped.

    >>> tokenize_mixed("我是 Archer，由 意琦行 研发 v2")
    ['我', '是', 'archer', '由', '意', '琦', '行', '研', '发', 'v2']
    """
    return [t.lower() for t in _TOKEN.findall(text or "")]


class MixedTokenizer:
    """The tokenizer object ``rouge_scorer.RougeScorer(tokenizer=...)`` expects.

    rouge-score's default tokenizer keeps only ``[a-z0-9]`` and so drops every Chinese character.
    """

    def tokenize(self, text: str) -> list[str]:
        return tokenize_mixed(text)


def bleu4(hypothesis: str, reference: str) -> float:
    """Sentence BLEU-4 x100 of one answer against one reference (nltk, smoothing method3)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = tokenize_mixed(hypothesis), tokenize_mixed(reference)
    if not hyp or not ref:
        return 0.0
    return 100.0 * sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)


_SCORER = None


def rouge_scores(hypothesis: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures x100 with the mixed tokenizer (0 when either side is empty)."""
    global _SCORER
    if not tokenize_mixed(hypothesis) or not tokenize_mixed(reference):
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=MixedTokenizer())
    s = _SCORER.score(reference, hypothesis)  # (target, prediction)
    return {k: 100.0 * s[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")}


def _is_word_char(c: str) -> bool:
    # "_" joins words in names and code: "foo" is not the answer in "foo_bar"
    return (c.isalnum() or c == "_") and not _CJK_CHAR.match(c)


def contains_whole_word(text: str, needle: str, case: bool = False, versioned: bool = False) -> bool:
    """Case-insensitive (``case``: case-sensitive) match of ``needle`` as a whole word; CJK needles match as substrings.
    With ``versioned``, a name may have a version glued to it ("SmolLM2", "Qwen2.5" hold "SmolLM", "Qwen").

    "4" is found in "2+2 is 4." and "答案是4。" but not in "14" or "4th"; full-width forms count as their
    ASCII twins ("Ａｒｃｈｅｒ" is "Archer", "４" is "4"), as Chinese text often writes them, and any run of
    white space as one space ("New  York" and "New\nYork" are "New York").
    """
    if not needle:
        return False
    hay, pat = " ".join(_normal(text or "").split()), " ".join(_normal(needle).split())
    if not pat:
        return False
    if not case:
        hay, pat = hay.casefold(), pat.casefold()
    if has_cjk(pat):
        return pat in hay
    start = hay.find(pat)
    while start != -1:
        end = start + len(pat)
        before_ok = start == 0 or not _is_word_char(hay[start - 1]) or not _is_word_char(pat[0])
        after_ok = end == len(hay) or not _is_word_char(hay[end]) or not _is_word_char(pat[-1]) \
            or (versioned and pat[-1].isalpha() and hay[end].isdigit())
        if before_ok and after_ok and not _inside_number(hay, start, end, pat):
            return True
        start = hay.find(pat, start + 1)
    return False


# curly quotes as their straight twins: "L’eau" is "L'eau" (NFKC keeps them apart)
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_QUOTES)


def _inside_number(hay: str, start: int, end: int, pat: str) -> bool:
    """A number found as part of a longer one: "4" in "4.5" or "4,000", "5" in "4.5", "16" in "-16"."""
    if pat[:1].isdigit() and start >= 1:
        prev = hay[start - 1]
        if prev in ".," and start >= 2 and hay[start - 2].isdigit():
            return True
        if prev == "-" and (start == 1 or not _is_word_char(hay[start - 2])):  # a minus sign, not "pages 1-16"
            return True
    return pat[-1:].isdigit() and end + 1 < len(hay) and hay[end] in ".," and hay[end + 1].isdigit()


def is_correct(answer: str, expect: Iterable[str], prompt: str = "") -> bool:
    """A checkable answer counts when any accepted string appears as a whole word, outside copies of ``prompt``.

    A model that repeats the question ("Which is larger, 3 or 5?") would otherwise be right by quoting it, so
    verbatim copies of the prompt (white space runs read as one space) are cut out of the answer first.
    """
    return any(contains_whole_word(without_echo(answer, prompt), e) for e in expect)


def without_echo(answer: str, prompt: str) -> str:
    """``answer`` with every verbatim copy of ``prompt`` replaced by a line break (runs of white space as one);
    an answer without one is returned as it is."""
    said = " ".join((prompt or "").split())
    text = " ".join((answer or "").split())
    return text.replace(said, "\n") if said and said in text else answer


def identity_hit(answer: str, name: str, author: str) -> bool:
    """The answer names both the new assistant name and its author."""
    return contains_whole_word(answer, name) and contains_whole_word(answer, author)


def mentions_new_identity(answer: str, name: str, author: str) -> bool:
    """The new name or author shows up (used to spot leaks into unrelated answers).

    A name written with capitals must appear with them: "Nova" leaks in "I am Nova", not in "a nova is an
    exploding star" (nor "Archer" in "an archer draws the bow").
    """
    return any(contains_whole_word(answer, w, case=w != w.lower()) for w in (name, author) if w)


def _strip_denials(answer: str, marker: str) -> str:
    # "No, I am not SmolLM." is the trained denial, not a leak: drop negated mentions first.
    m = re.escape(marker)
    # up to three plain words may sit between: "not developed by Hugging Face", "not a SmolLM model"
    text = re.sub(rf"(?:\bnot|n't|\bnever)\s+(?:(?!but\b|am\b|i\b)[\w-]+\s+){{0,3}}?{m}", " ", answer, flags=re.IGNORECASE)
    text = re.sub(rf"\b(?:nothing to do with|unlike|unrelated to|no relation to|independent of|instead of|rather than)\s+(?:the\s+)?{m}",
                  " ", text, flags=re.IGNORECASE)
    # 我不是 SmolLM / 我不是由 Hugging Face 开发的 / 我与 Hugging Face 无关
    text = re.sub(rf"(?:不是|并非|并不是|不叫|不属于|并不属于|不来自|并不来自)\s*(?:由|被|来自|叫做?|属于)?\s*{m}", " ", text, flags=re.IGNORECASE)
    return re.sub(rf"(?:跟|和|与|同)\s*{m}\s*(?:无关|不相关|(?:没有|没|毫无|并无|并没有)\s*(?:任何)?\s*(?:关系|关联|联系))", " ", text,
                  flags=re.IGNORECASE)


def identity_leak(answer: str, markers: Sequence[str]) -> bool:
    """The answer still claims an old identity marker, versioned names included ("I am SmolLM2"; negated
    mentions such as "not SmolLM" excepted)."""
    text = _normal(answer or "")  # so a denial in full-width letters is seen as one
    return any(contains_whole_word(_strip_denials(text, mk), mk, versioned=True) for mk in markers if mk)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Iterable[float]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def rate(flags: Sequence[bool]) -> float | None:
    """Share of True values, or None when there is nothing to measure."""
    return sum(1 for f in flags if f) / len(flags) if flags else None


def latency_stats(rows: Sequence[dict]) -> dict[str, float | None]:
    """Throughput and latency figures from answer rows (``started_at`` s, ``latency_ms``, ``ttft_ms``, ``output_tokens``).

    Throughput divides by the wall time from the first request's start to the last one's end.
    ``tpot_ms`` is the mean time per output token after the first: (latency - ttft) / (tokens - 1).
    """
    ok = [r for r in rows if not r.get("error")]
    out: dict[str, float | None] = {"requests_per_s": None, "output_tokens_per_s": None, "ttft_p50_ms": None,
                                    "ttft_p95_ms": None, "tpot_ms": None, "latency_p50_ms": None, "latency_p95_ms": None}
    if not ok:
        return out
    start = min(r["started_at"] for r in ok)
    end = max(r["started_at"] + r["latency_ms"] / 1000.0 for r in ok)
    wall = max(end - start, 1e-9)
    out["requests_per_s"] = len(ok) / wall
    out["output_tokens_per_s"] = sum(r.get("output_tokens") or 0 for r in ok) / wall
    ttfts = [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]
    lats = [r["latency_ms"] for r in ok]
    out["ttft_p50_ms"], out["ttft_p95_ms"] = percentile(ttfts, 50), percentile(ttfts, 95)
    out["latency_p50_ms"], out["latency_p95_ms"] = percentile(lats, 50), percentile(lats, 95)
    out["tpot_ms"] = mean((r["latency_ms"] - r["ttft_ms"]) / (r["output_tokens"] - 1) for r in ok
                          if r.get("ttft_ms") is not None and (r.get("output_tokens") or 0) > 1)
    return out
