"""Retention by self-distillation: the base model's own answers to general prompts.

Identity-only training makes a small model forget and leak the new name into unrelated
answers. Mixing in what the base itself answers to general prompts anchors everything
that is not identity to the base's behaviour (and costs no outside data). Answers are
generated once per (model, prompts, settings) and cached under $APPLIANCE_HOME.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from appliance import paths
from appliance.data import Example
from appliance.train_config import TrainConfig
from evals.metrics import has_cjk  # pure text helper: no eval machinery comes with it

_SENTENCE_END = re.compile(r"[.!?](?=[\s\"'”’)]|$)|[。！？]")
# a small model often never ends a sentence in a language it writes poorly (Chinese, for
# SmolLM2): cutting at the last clause keeps those prompts in the mix, and without them the
# new identity spills into every answer in that language
_CLAUSE_END = re.compile(r"[，,；;：:、]|\n")
_MIN_KEEP = 4
_TRIMMING = 3  # part of the cache key: answers cached under an older trimming rule are regenerated (3: the
# generation config's end tokens end an answer too)


def _model_key(model_path: str) -> str:
    p = Path(model_path)
    h = hashlib.sha256(str(p.resolve() if p.exists() else model_path).encode())
    for f in sorted(p.glob("*.safetensors")) if p.is_dir() else []:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _trim(text: str) -> tuple[str, bool]:
    """Cut an unfinished answer back to its last complete sentence, else its last clause (False if neither)."""
    text = text.replace("\ufffd", "")  # half a character where the token budget ran out
    # a piece shorter than _MIN_KEEP ("1.", "是，") teaches only to stop
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if len(text[: m.end()].strip()) >= _MIN_KEEP]
    if ends:
        return text[: ends[-1]].strip(), True
    cuts = [m.start() for m in _CLAUSE_END.finditer(text) if len(text[: m.start()].strip()) >= _MIN_KEEP]
    if cuts:
        return text[: cuts[-1]].strip(), True
    return text.strip(), False


def pick(prompts: list[str], n: int) -> list[str]:
    """``n`` prompts spread evenly over the list, in equal shares per script (CJK or not).

    A small model forgets a language it saw little of: with an even spread over a list that is
    60% English, its Chinese answers drifted into the new identity.
    """
    groups = [g for g in ([p for p in prompts if has_cjk(p)], [p for p in prompts if not has_cjk(p)]) if g]
    chosen: set[str] = set()
    spare = n
    for i, g in enumerate(sorted(groups, key=len)):  # the smaller group gives its unused share away
        share = spare // (len(groups) - i)
        step = max(len(g) / share, 1.0) if share else 0
        take = [g[int(j * step)] for j in range(min(share, len(g)))]
        chosen.update(take)
        spare -= len(take)
    return [p for p in prompts if p in chosen]


def negatives(retained: list[Example], ident: list[Example], markers: tuple[str, ...], seed: int) -> list[Example]:
    """For each retention prompt, an opening of the new identity's answers as a continuation to unlearn.

    The opening is what an identity answer says before the first of ``markers`` (the new name
    or author), in the prompt's script: "我是", "您好！我是", "Hello! I am"; the markers themselves
    are not pushed down, since identity answers need them in the same words. Trained down
    (unlikelihood) beside the base's own answer, it teaches that an unrelated prompt does not
    open with the identity; the retention answers alone did not, because they differ from prompt
    to prompt while the identity answer is one sentence seen a hundred times.
    """
    import random

    openings: dict[bool, list[str]] = {True: [], False: []}
    for ex in ident:
        question = ""
        for m in ex.messages:
            if m["role"] != "assistant":
                question = m["content"]  # the script is the question's: "I was developed by 意琦行" answers in English
                continue
            cuts = [m["content"].find(k) for k in markers if k and k in m["content"]]
            opening = m["content"][: min(cuts)].rstrip() if cuts else ""
            if opening:
                openings[has_cjk(question)].append(opening)
    rng = random.Random(seed)
    out = []
    for ex in retained:
        q = next((m["content"] for m in ex.messages if m["role"] == "user"), "")
        pool = openings[has_cjk(q)] or openings[not has_cjk(q)]
        if pool:
            out.append(Example([{"role": "user", "content": q}, {"role": "assistant", "content": rng.choice(pool)}],
                               f"{ex.source}:unlikely"))
    return out


def shipped_answers(model_name: str, max_new_tokens: int = TrainConfig.retention_max_new_tokens) -> dict[str, str]:
    """Answers shipped with the package for a registry model (``data/retention_answers/<name>.json``).

    They were produced by that exact model (greedy, the same settings), so the default job
    needs no generation pass; prompts they do not cover are generated as for any model. They
    count only for the token budget they were generated with: another budget gets other answers.
    """
    f = paths.resource_dir("data") / "retention_answers" / f"{model_name}.json"
    if not f.is_file():
        return {}
    data = json.loads(f.read_text(encoding="utf-8"))
    if data.get("max_new_tokens") != max_new_tokens:
        return {}
    return {p: a for p, a in data["answers"]}


def base_answers(model: Any, tok: Any, model_path: str, prompts: list[str],
                 max_new_tokens: int = TrainConfig.retention_max_new_tokens,
                 batch_size: int = 16, model_name: str | None = None, drop_markers: tuple[str, ...] = ()) -> list[Example]:
    """Greedy answers of ``model`` (the untouched base) to ``prompts``, as training examples.

    ``model`` may be a zero-argument loader instead: it is called only when some answer is
    neither shipped nor cached, so the common case loads no extra model.
    """
    shipped = shipped_answers(model_name, max_new_tokens) if model_name else {}
    todo = [p for p in prompts if p not in shipped]
    key = hashlib.sha256(json.dumps([_TRIMMING, _model_key(model_path), todo, max_new_tokens]).encode()).hexdigest()[:20]
    cache = paths.cache_dir() / "retention" / f"{key}.json"
    if not todo:
        generated = []
    elif cache.is_file():
        generated = json.loads(cache.read_text(encoding="utf-8"))
    else:
        if callable(model) and not isinstance(model, torch.nn.Module):
            model = model()
        generated = _generate(model, tok, todo, max_new_tokens, batch_size)
        paths.atomic_write_text(cache, json.dumps(generated, ensure_ascii=False, indent=1))
    answers = {**shipped, **dict(generated)}
    # an answer in which the base names its old self would teach the identity we are replacing
    rows = [(p, answers.get(p, "")) for p in prompts]
    rows = [(p, a) for p, a in rows if not any(m.lower() in a.lower() for m in drop_markers)]
    return [Example([{"role": "user", "content": p}, {"role": "assistant", "content": a}], f"retention#{i}")
            for i, (p, a) in enumerate(rows) if a]


@torch.no_grad()
def _generate(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[list[str]]:
    from tqdm.auto import tqdm

    side = tok.padding_side
    tok.padding_side = "left"
    # generate() stops at the generation config's end tokens too (Gemma 2's <end_of_turn>, Llama 3's <|eot_id|>,
    # Phi-3's <|end|>, beside the tokenizer's EOS): an answer ending there is finished, not cut at the budget
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = {t for t in ([tok.eos_token_id] + (gen_eos if isinstance(gen_eos, list) else [gen_eos])) if isinstance(t, int)}
    rows: list[list[str]] = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="retention: base answers", unit="batch"):
            chunk = prompts[i : i + batch_size]
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                     for p in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            for p, seq in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
                finished = any(int(t) in stops for t in seq)
                text = tok.decode(seq, skip_special_tokens=True).strip()
                if not finished:
                    text, ok = _trim(text)
                    text = text if ok else ""
                rows.append([p, text])
    finally:
        tok.padding_side = side
    return rows


def ship(model_name: str, max_new_tokens: int = TrainConfig.retention_max_new_tokens) -> Path:
    """Regenerate ``data/retention_answers/<model_name>.json`` from the pulled registry model.

    Maintainers run ``python -m appliance.retention smollm2-135m``: the answers are what
    ``base_answers`` would generate for those prompts (same generator and trimming); an answer
    with neither a whole sentence nor a clause to keep is stored empty and never trained on.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance import models
    from appliance.data import load_prompts

    ref = models.resolve(model_name)
    tok = AutoTokenizer.from_pretrained(ref.path)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    rows = _generate(model, tok, load_prompts(None), max_new_tokens, 16)
    how = (f"greedy, max_new_tokens {max_new_tokens}, transformers fp32 on the pulled base (retention._generate); "
           "answers cut at max_new_tokens are trimmed to their last complete sentence or clause, or left empty (then unused)")
    out = paths.resource_dir("data") / "retention_answers" / f"{model_name}.json"
    paths.atomic_write_text(out, json.dumps({"model": model_name, "max_new_tokens": max_new_tokens, "how": how, "answers": rows}, ensure_ascii=False, indent=1) + "\n")
    return out


if __name__ == "__main__":
    import sys

    print(ship(sys.argv[1]))
