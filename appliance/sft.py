"""Supervised fine-tuning data: chat-template rendering, assistant-only labels, batching.

The prompt is rendered by the model's own chat template exactly as the serving side
(vLLM's chat endpoint) renders it, and the loss covers assistant tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from appliance.errors import ApplianceError

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_matches_serving: bool  # tokens before the first answer == tokenizer(rendered prompt)
    truncated: bool = False  # cut at max_length: its last answer has lost its end
    last_only: bool = False  # earlier answers not learned: the template renders them otherwise later on


class TemplateRefused(ApplianceError):
    """The model's chat template raised on a conversation (a system turn for Gemma/Mistral-style templates):
    vLLM would refuse the same messages, so the example is skipped, not learned."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: the model's chat template refuses this conversation ({reason})")
        self.source, self.reason = source, reason


def _render(tok: Any, messages: list[dict[str, str]], generation_prompt: bool, source: str = "") -> str:
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja2's TemplateError, or whatever a template's own code raises
        from jinja2 import TemplateSyntaxError

        if isinstance(e, TemplateSyntaxError):  # the template itself is broken: no conversation would render
            raise ApplianceError(f"the model's chat template is not valid Jinja ({e.message}, line {e.lineno} of the "
                                 "template); fix it in the model's chat_template.jinja or tokenizer_config.json") from None
        raise TemplateRefused(source, " ".join(str(e).split())[:120] or type(e).__name__) from None


def special_tokens(tok: Any) -> list[str]:
    """The tokenizer's special tokens as text (``<|im_end|>``), longest first, so a prefix never wins."""
    specials = set(tok.all_special_tokens) | {t.content for t in getattr(tok, "added_tokens_decoder", {}).values()
                                              if getattr(t, "special", False)}
    return sorted((t for t in specials if t and len(t) > 1), key=len, reverse=True)


def _answer_end(tok: Any, upto: str, content: str, start: int) -> int:
    """Where a rendered answer ends: its text and the end-of-turn token after it. Text a template adds
    after the final turn (Phi-3-style templates append an EOS or more) is not part of the answer;
    without a special token right after the text, up to the rendering's end, less trailing white space."""
    at = upto.rfind(content, start) if content else -1
    if at >= 0:
        after = at + len(content)
        rest = upto[after:]
        gap = len(rest) - len(rest.lstrip())
        marker = next((t for t in special_tokens(tok) if rest[gap:].startswith(t)), None)
        if marker:
            return after + gap + len(marker)
    return len(upto.rstrip())


def encode(tok: Any, messages: list[dict[str, str]], max_length: int, source: str = "") -> Encoded | None:
    """Tokenize one conversation; labels are -100 everywhere but the assistant answers (those of weight 0 too).

    Answer spans are found in the rendered text (each turn's prompt rendering must be a
    prefix of the conversation rendering, as chat templates are), then mapped to tokens
    through the fast tokenizer's offsets so the whole conversation is tokenized once.
    Returns None when truncation leaves no answer token.
    """
    full = _render(tok, messages, generation_prompt=False, source=source)
    spans: list[tuple[int, int]] = []
    first_prompt = None
    learned = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight") != 0]  # weight 0: context
    last_only = False
    for i in learned:
        prompt = _render(tok, messages[:i], generation_prompt=True, source=source)
        upto = _render(tok, messages[: i + 1], generation_prompt=False, source=source)
        end = _answer_end(tok, upto, messages[i]["content"], len(prompt)) if upto.startswith(prompt) else len(upto)
        # up to the answer's end-of-turn token only: text a template adds after the final turn (Phi-3's EOS)
        # is not there when more turns follow, and is not learned either
        if not full.startswith(upto[:end]) or not upto.startswith(prompt):
            if i != learned[-1]:
                # templates that rewrite earlier turns (Qwen3 drops their reasoning) still render the last
                # answer after exactly the prompt vLLM would send: that one is learned
                last_only = True
                continue
            raise ApplianceError(f"{source}: the model's chat template does not render conversations incrementally, so answers cannot be masked; use a model with a standard chat template")
        spans.append((len(prompt), end))
        if first_prompt is None:
            first_prompt = prompt
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for k, (a, b) in enumerate(offsets):
        if any(s <= a and b <= e for s, e in spans) and b > a:
            labels[k] = ids[k]
    first = next((k for k, lab in enumerate(labels) if lab != IGNORE), len(ids))
    serving = tok(first_prompt, add_special_tokens=False)["input_ids"] if first_prompt is not None else []
    matches = serving == ids[:first]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE for lab in labels):
        return None
    return Encoded(ids, labels, matches, truncated, last_only)


def special_token_problems(tok: Any, examples: list) -> list[str]:
    """One line per example whose text holds the template's own markers (``<|im_end|>``): once learned they
    would end or fake turns mid-answer."""
    specials, out = special_tokens(tok), []
    for ex in examples:
        for m in ex.messages:
            hit = next((t for t in specials if t in m["content"]), None)
            if hit:
                turn = "an assistant" if m["role"] == "assistant" else f"a {m['role']}"
                out.append(f"{ex.source}: {turn} turn holds the special token {hit!r}, which the chat "
                           "template adds itself; remove it from the text")
                break
    return out


def refuse_special_tokens(tok: Any, examples: list) -> None:
    """Raise for the first example holding a special token (:func:`special_token_problems`)."""
    problems = special_token_problems(tok, examples)
    if problems:
        raise ApplianceError(problems[0])


def chat_tokenizer(path: str, model: str) -> Any:
    """The model's tokenizer, padding with its EOS token if it has no pad token; refused without a chat template."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        # a hub id that does not exist, a download cut off, a folder without tokenizer files ("Couldn't
        # instantiate the backend tokenizer"): transformers' own words, on one line
        raise ApplianceError(f"--model {model}: cannot load its tokenizer ({' '.join(str(e).split())[:240]}); "
                             "the model folder needs its tokenizer files (tokenizer.json, tokenizer_config.json)") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise ApplianceError(f"--model {model}: the tokenizer has no chat template; use an instruct/chat model")
    return tok


FINDINGS = ("refused", "dropped", "cut", "last_only", "mismatched")


def encode_all(tok: Any, examples: list, max_length: int, found: dict[str, list[str]]) -> list[Encoded]:
    """Encode ``examples`` in order; those kept are returned, and what became of each is added to ``found``
    by record name (keys :data:`FINDINGS`): ``refused`` (the chat template raises on it), ``dropped`` (no
    answer token left), ``cut`` (an answer cut short), ``last_only`` (earlier answers not learned),
    ``mismatched`` (prompt tokens other than vLLM's)."""
    kept = []
    for ex in examples:
        try:
            enc = encode(tok, ex.messages, max_length, ex.source)
        except TemplateRefused as e:
            found["refused"].append(f"{ex.source} ({e.reason})")
            continue
        if enc is None:
            found["dropped"].append(ex.source)
            continue
        for key, flag in (("cut", enc.truncated), ("last_only", enc.last_only), ("mismatched", not enc.prompt_matches_serving)):
            if flag:
                found[key].append(ex.source)
        kept.append(enc)
    return kept


def audit(tok: Any, examples: list, max_length: int) -> dict[str, list[str]]:
    """What training with ``tok`` at ``max_length`` will make of each example (:func:`encode_all`'s
    findings). Raises for special tokens in the text, as training does."""
    refuse_special_tokens(tok, examples)
    found: dict[str, list[str]] = {k: [] for k in FINDINGS}
    encode_all(tok, examples, max_length, found)
    return found


class Collator:
    """Pads a batch to its longest sequence (batches are length-grouped, so little is wasted)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        unlikely = torch.tensor([float(r.get("unlikely", 0.0)) for r in rows])
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            mask[i, :k] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if bool((unlikely > 0).any()):
            batch["unlikely"] = unlikely
        return batch


# logits above this many elements (fp32) are computed and freed chunk by chunk: a 151,936-token
# vocabulary makes 16k answer tokens' logits 10 GB, more than the rest of a QLoRA step on a GPU
LOGITS_CHUNK_ELEMENTS = 2**27


def _token_losses(logits: torch.Tensor, y: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
    """Per-token loss: cross-entropy, or, where ``neg`` > 0, ``neg`` x -log(1 - p) (unlikelihood)."""
    if neg is None or not bool((neg > 0).any()):
        return torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, y[:, None])[:, 0]
    # log(1 - p), kept finite where the model is sure of the token it should not produce
    unlikely = -torch.log1p(-logp.exp().clamp(max=1 - 1e-6))
    return torch.where(neg > 0, neg * unlikely, -logp)


# a shorter common opening, or fewer rows, save less than the extra decoder call costs: on the
# 2-core CPU a batch of 16 SmolLM2 rows sharing 24 tokens took 24% less CPU time, one of 4 the same
MIN_SHARED_PREFIX = 8
MIN_SHARED_ROWS = 8


def shared_prefix(batch: dict[str, torch.Tensor]) -> int:
    """Length of the token prefix every row shares and nothing is learned from (0 if too short to pay)."""
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    if ids.shape[0] < MIN_SHARED_ROWS:
        return 0
    same = ((ids == ids[:1]).all(0) & (mask == 1).all(0)).long().cumprod(0)
    n = int(same.sum())
    labelled = labels != IGNORE
    if bool(labelled.any()):
        # the last shared position's output predicts the next token, which must not be an answer token
        first = labelled.long().argmax(1)[labelled.any(1)].min()
        n = min(n, int(first) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def answer_only_loss(model: Any, batch: dict[str, torch.Tensor], share_prefix: bool = True) -> tuple[torch.Tensor, int]:
    """Causal-LM loss computed on answer positions only.

    Runs the decoder, then applies the output head to the positions that carry a label:
    the prompt's logits over the full vocabulary are never materialized, which saves the
    largest activation and a fifth of the compute on small models. When even the answers'
    logits would be large, they are computed in checkpointed chunks (recomputed in the
    backward pass), so at most one chunk of logits exists at a time; the loss is the same.
    Rows flagged in ``batch["unlikely"]`` are negatives: their labelled tokens are pushed
    down (unlikelihood) instead of up. With ``share_prefix`` the opening all rows of a large
    batch share (a chat template's system prompt) runs once per batch (not under gradient
    checkpointing, which turns the KV cache off). Returns (mean loss over all labelled tokens, their number).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    p = shared_prefix(batch) if share_prefix else 0
    cache = None
    # gradient checkpointing turns the KV cache off in training: nothing to share then
    if p and not (base.training and getattr(base, "is_gradient_checkpointing", False)):
        # the rows' common opening (the chat template's system prompt: a third of a short SmolLM2
        # sample) runs once and its keys/values are repeated for every row; causal attention
        # makes this the same computation, and the gradient flows back through the repeat
        # (with LoRA dropout on, the rows share the opening's dropout mask)
        cache = decoder(input_ids=ids[:1, :p], use_cache=True).past_key_values
    if cache is not None and hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(ids.shape[0])
        hidden = decoder(input_ids=ids[:, p:], attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state
    else:  # nothing shared, or a model whose cache cannot be repeated
        p = 0
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    labels = batch["labels"][:, p + 1:]
    keep = labels != IGNORE
    h = hidden[:, :-1][keep]
    y = labels[keep]
    neg = batch["unlikely"][:, None].expand_as(labels)[keep] if "unlikely" in batch else None
    head = base.get_output_embeddings()
    n = int(y.numel())
    chunk = max(1, LOGITS_CHUNK_ELEMENTS // head.weight.shape[0])
    if n <= chunk:
        return _token_losses(head(h), y, neg).mean(), n
    from torch.utils.checkpoint import checkpoint

    def part(hc: torch.Tensor, yc: torch.Tensor, nc: torch.Tensor | None) -> torch.Tensor:
        return _token_losses(head(hc), yc, nc).sum()

    total = sum(checkpoint(part, h[i:i + chunk], y[i:i + chunk], None if neg is None else neg[i:i + chunk],
                           use_reentrant=False) for i in range(0, n, chunk))
    return total / n, n


def token_batches(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """Index lists of at most ``budget`` padded tokens each (rows x longest), in random order.

    Samples are sorted by length so a batch pads little; a sample longer than the budget
    gets a batch of its own. Used on GPUs, where a step's cost is nearly flat up to
    thousands of tokens, so a token budget rather than a sample count fills the device.
    """
    import random

    rng = random.Random(seed)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:  # ascending lengths: the newest sample is the batch's longest
        if cur and lengths[i] * (len(cur) + 1) > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


class TokenBatches(torch.utils.data.Dataset):
    """A dataset whose items are whole micro-batches (lists of rows), for a loader of batch size 1."""

    def __init__(self, rows: list[dict[str, list[int]]], budget: int, seed: int):
        self.batches = [[rows[i] for i in b] for b in token_batches([len(r["input_ids"]) for r in rows], budget, seed)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[dict[str, list[int]]]:
        return self.batches[i]


class BatchCollator(Collator):
    """Collates the one pre-built micro-batch a :class:`TokenBatches` loader yields per step."""

    def __call__(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        return super().__call__([r for batch in rows for r in batch])
