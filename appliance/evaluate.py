"""``appliance eval``: replay prompt sets to served models and report what changed.

Every prompt goes to every model through the official ``openai`` client (streaming, so the first
token is timed; temperature 0; bounded concurrency). Models run one after another so their
throughput figures do not disturb each other. Nothing here imports training code.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from appliance import paths, rundir
from appliance.errors import ApplianceError
from appliance.datafiles import ODD_PLACEHOLDER, ODD_PLACEHOLDER_NOTE, _short, bad_char, few
from appliance.ask import ask as _ask, one_line as _one_line, served_models
from appliance.urls import URL_FIX, base_url
from evals.prompts import Prompt, load_prompts
from evals.report import REPORT_FILES, Rule, answers_file, load_answers, write_report

DEFAULT_URL = "http://127.0.0.1:8000/v1"
DEFAULT_NAME, DEFAULT_AUTHOR = "Archer", "意琦行"


@dataclass
class EvalConfig:
    """Options of one eval run (the flags of ``appliance eval``)."""

    before: str = ""  # empty: the server's only base model (and, with no --after, every adapter it serves)
    after: list[str] = field(default_factory=list)
    url: str = DEFAULT_URL
    prompts: list[str] = field(default_factory=list)  # files or built-in set names; empty = all built-in sets
    name: str | None = None  # None: the identity the --after models were trained for, else DEFAULT_NAME
    author: str | None = None
    output: str | None = None  # default: reports/<name>
    concurrency: int = 64  # as the pipeline: throughput on a CPU server; --concurrency 1 times requests alone
    max_tokens: int = 128
    api_key: str | None = None  # default: $APPLIANCE_API_KEY, else $OPENAI_API_KEY, else "EMPTY" (vLLM without --api-key)
    old_identity: list[str] = field(default_factory=list)  # default: the before model's registry markers
    timeout_s: float = 300.0
    rules: list[Rule] = field(default_factory=list)


def output_dir(cfg: EvalConfig) -> Path:
    """Where the report goes: ``--output`` (see :func:`appliance.paths.output_folder`), else reports/<name>, or
    reports/<before> for a lone --before (whose figures would replace the fine-tune's report under its name)."""
    if cfg.output is None:
        return paths.reports_dir() / paths.folder_name(cfg.name if cfg.after else cfg.before)
    return paths.output_folder(cfg.output)


def roles(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(role, model) pairs: ``before``, then ``after`` (or after1, after2, ... when there are several)."""
    afters = [("after" if len(cfg.after) == 1 else f"after{i}", m) for i, m in enumerate(cfg.after, 1)]
    return [("before", cfg.before)] + afters


def given_markers(cfg: EvalConfig) -> list[str]:
    """The ``--old-identity`` markers (comma-separated, repeatable); none given: [] (the registry's are used)."""
    markers = [m.strip() for item in cfg.old_identity for m in item.split(",") if m.strip()]
    if cfg.old_identity and not markers:
        # ",,," would leave the leak rate unmeasured while looking like a choice of markers
        raise ApplianceError(f"--old-identity {','.join(cfg.old_identity)!r}: no marker in it; give the names the "
                             "old model used for itself, comma-separated (e.g. --old-identity SmolLM,HuggingFace), "
                             "or leave it out for the model registry's markers")
    return markers


def _api_key(cfg: EvalConfig) -> str | None:
    """--api-key, else $APPLIANCE_API_KEY (as `up` reads it), else $OPENAI_API_KEY; None: none at all."""
    return cfg.api_key or os.environ.get("APPLIANCE_API_KEY") or os.environ.get("OPENAI_API_KEY")


def _served_roots(cfg: EvalConfig) -> dict[str, str]:
    """``{served name: the folder vLLM loaded it from}`` by a plain GET /models; {} when that fails
    (the eval itself then reports why the server cannot be used)."""
    import httpx

    key = _api_key(cfg)
    try:
        resp = httpx.get(base_url(cfg.url) + "/models", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10)
        return {m["id"]: m.get("root") or m["id"] for m in resp.json()["data"]}
    except Exception:  # noqa: BLE001 - any failure here is reported by the eval's own first request
        return {}


def served_defaults(cfg: EvalConfig, progress: Callable[[str], None]) -> EvalConfig:
    """Without --before: the server's base model, and without --after too, every adapter it serves (what
    `appliance up --adapter saves/archer` started). A server of several base models needs --before."""
    if cfg.before:
        return cfg
    from appliance.adapters import list_served

    key = _api_key(cfg)
    entries = list_served(cfg.url, key)
    bases = [m["id"] for m in entries if not m.get("parent")]
    if len(bases) != 1:
        raise ApplianceError(f"--before: the server at {cfg.url} serves {len(bases)} base models"
                             + (f" ({', '.join(bases)})" if bases else "") + "; pass --before NAME (the base to compare with)")
    after = cfg.after or [m["id"] for m in entries if m.get("parent") == bases[0]]
    progress(f"note: --before {bases[0]}" + (f" --after {' --after '.join(after)}" if after and not cfg.after else "")
             + f": what the server at {cfg.url} serves" + ("" if after else " (no adapter: the base alone is measured)"))
    return replace(cfg, before=bases[0], after=list(after))


def _identities(found: dict[str, tuple[str, str]]) -> str:
    return ", ".join(f"{m}: {n} / {a}" for m, (n, a) in found.items())


def _recorded(cfg: EvalConfig, roots: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{--after model: (name, author)} of those whose folder records the identity it was trained for."""
    found: dict[str, tuple[str, str]] = {}
    from appliance import rundir

    for model in cfg.after:
        try:
            ident = rundir.read_meta(roots.get(model) or model).get("identity") or {}
        except ApplianceError:  # not a folder of ours (a hub model, a remote server's path): nothing recorded
            continue
        if not isinstance(ident, dict):
            continue
        if isinstance(ident.get("name"), str) and isinstance(ident.get("author"), str) and ident["name"] and ident["author"]:
            found[model] = (ident["name"], ident["author"])
    return found


def resolve_identity(cfg: EvalConfig, progress: Callable[[str], None]) -> EvalConfig:
    """Fill a missing ``--name``/``--author`` from what the --after models were trained for, else the
    defaults; a given one that differs from the recorded identity is pointed out (its hit rate will be ~0)."""
    if not cfg.after:  # a lone --before is scored for the defaults without comment (its hit rate is the baseline)
        return replace(cfg, name=cfg.name or DEFAULT_NAME, author=cfg.author or DEFAULT_AUTHOR)
    roots = _served_roots(cfg)
    recorded = _recorded(cfg, roots)
    if len(set(recorded.values())) > 1:
        if cfg.name is None or cfg.author is None:
            raise ApplianceError(f"--name/--author: the --after models were trained for different identities "
                                 f"({_identities(recorded)}); pass --name and --author to score them all for one, or "
                                 "evaluate them separately")
        # given: each model is scored for it, whatever it records
        progress(f"note: the --after models were trained for different identities ({_identities(recorded)}); "
                 f"scoring all for {cfg.name} / {cfg.author} as --name/--author say")
        return cfg
    # the (name, author) the --after models were trained for, from the appliance.json of the run or merged-model
    # folder each was served from; None when none records one
    found = next(iter(recorded.values()), None)
    name, author = found or (DEFAULT_NAME, DEFAULT_AUTHOR)
    name, author = cfg.name if cfg.name is not None else name, cfg.author if cfg.author is not None else author
    if found and (name, author) != found:
        progress(f"note: the --after model was trained for {found[0]} / {found[1]} (its appliance.json); scoring "
                 f"for {name} / {author} as --name/--author say")
    elif found and (cfg.name is None or cfg.author is None):
        progress(f"identity: scoring for {name} / {author}, as the --after model was trained (its appliance.json); "
                 "--name/--author choose another")
    elif roots and not found and (cfg.name is None or cfg.author is None):
        # (no roots: the server did not answer, and the eval's first request says why)
        progress(f"identity: scoring for {name} / {author}, the defaults: no --after model records one; "
                 "--name/--author choose another")
    return replace(cfg, name=name, author=author)


def _markers(cfg: EvalConfig, served: dict[str, str]) -> list[str]:
    from appliance.models import markers_for

    if cfg.old_identity:
        return given_markers(cfg)
    # the served name first, then the directory vLLM loaded it from (its appliance.json)
    return markers_for(cfg.before) or markers_for(served.get(cfg.before) or "")


def _check_text_flags(cfg: EvalConfig) -> None:
    """Flags that end up in answers.jsonl must be valid text (an argument that is not UTF-8 holds a lone
    surrogate): found only when the report is written, they would cost every request of the eval."""
    flags = [("--before", cfg.before), *(("--after", a) for a in cfg.after), ("--name", cfg.name),
             ("--author", cfg.author), *(("--old-identity", m) for m in cfg.old_identity)]
    for flag, value in flags:
        if value is not None and (bad := bad_char(value, typed=True)) is not None:
            raise ApplianceError(f"{flag} {value!a}: holds {bad}; pass it as UTF-8 text")


def once_each(prompts: list[Prompt], progress: Callable[[str], None]) -> list[Prompt]:
    """The prompts with repeats (the same question, system prompt and earlier turns) sent once: a repeat
    would count its answer twice in every rate. A repeat scored another way (another kind, language,
    reference or expected answer) is refused: keeping either would silently drop the other's scoring; one
    with neither a reference nor expected answers gives way to the other, which scores what it does and more."""
    seen: dict[str, Prompt] = {}
    repeats = []
    for p in prompts:
        key = json.dumps([p.prompt, p.system, p.history], ensure_ascii=False)
        first = seen.get(key)
        if first is None:
            seen[key] = p
            continue
        # a repeat with neither a reference nor expected answers scores nothing the other does not: the other is kept
        bare = [q for q in (first, p) if not q.reference and not q.expect]
        differs = [k for k in ("kind", "lang", "reference", "expect") if getattr(first, k) != getattr(p, k)
                   and (k in ("kind", "lang") or not bare)]
        if differs:
            raise ApplianceError(f"{p.where}: repeats the prompt of {first.where} ({_short(p.prompt)}) with another "
                                 f"{' / '.join(differs)}; keep one of the two (leave out the set or the record that "
                                 "should not count)")
        if bare == [first]:
            seen[key] = p  # in the first one's place
        repeats.append(p.where or p.source or p.prompt)
    if repeats:
        progress(f"note: {len(repeats)} repeated prompt(s) sent once (the first is kept, or the one with a reference or "
                 f"expected answers): {few(repeats)}")
    _note_unread(list(seen.values()), progress)
    return list(seen.values())


# Latin letters of other languages (é, ü, ñ, ß, ø ...), ¿ and ¡: text the identity rule, which reads Chinese
# and English, cannot judge
_OTHER_LATIN = re.compile(r"[¿¡À-ÖØ-öø-ÿĀ-ž]")


def _note_unread(prompts: list[Prompt], progress: Callable[[str], None]) -> None:
    """Say what the loader had to take as written: an unlabelled prompt in a language the identity rule
    does not read (it counts as general, so a new-name answer to "あなたは誰ですか？" would be a leak), and a
    ``{{placeholder}}`` other than {{name}} / {{author}} (a typo such as {{nme}} is sent literally)."""
    foreign = [p for p in prompts if not p.kind_given and p.kind == "general"
               and (p.lang not in ("zh", "en") or _OTHER_LATIN.search(p.prompt))]
    if foreign:
        progress(f"note: {len(foreign)} prompt(s) without \"kind\" in neither Chinese nor English, so counted as general "
                 f"(a new-name answer there is a leak): {few([p.where for p in foreign])}; give identity "
                 "questions \"kind\": \"identity\"")
    # "¿Quién eres?" with a {{name}} reference is an identity prompt, and without "lang" it was filed under
    # identity_en without a word: its Spanish answer a miss of identity_en_hit_rate
    guessed = [p for p in prompts if not p.lang_given and p.kind == "identity" and p.lang == "en"
               and _OTHER_LATIN.search(p.prompt)]
    if guessed:
        progress(f"note: {len(guessed)} identity prompt(s) without \"lang\" in a language other than English counted as "
                 f"English (identity_en): {few([p.where for p in guessed])}; give them \"lang\" (\"es\", \"fr\", ...)")
    odd = [(p.where, m.group(0)) for p in prompts
           for text in (p.prompt, p.reference or "", p.system or "", *p.expect, *(h["content"] for h in p.history))
           for m in ODD_PLACEHOLDER.finditer(text)]
    if odd:
        progress(f"note: {few([f'{w}: {ph}' for w, ph in odd])} sent as written: {ODD_PLACEHOLDER_NOTE}")


def _note_repeated_models(cfg: EvalConfig, progress: Callable[[str], None]) -> None:
    """The same model twice compares it with itself (every delta 0 at temperature 0): allowed, to measure
    a server's repeatability or speed, but said, as it is more often a slip."""
    models = [cfg.before, *cfg.after]
    twice = next((m for i, m in enumerate(models) if m in models[:i]), None)
    if twice is not None:
        flags = " ".join(f"{f} {m}" for f, m in [("--before", cfg.before), *(("--after", a) for a in cfg.after)] if m == twice)
        progress(f"note: {flags}: the same model more than once, so it is compared with itself")


def refuse_uncomparable(rules: list[Rule], roles_present: list[str], answers: str | None = None) -> None:
    """``--max-drop``/``--max-rise`` compare an after model with ``before``: without either there is nothing to
    compare, and the gate could only fail (exit 1, a report saying FAILED) on what is a wrong flag (exit 2).
    ``answers``: the --from-answers value, when ``roles_present`` are the roles its rows hold."""
    rule = next((r for r in rules if r.op in ("max_drop", "max_rise")), None)
    if rule is None:
        return
    missing = "--after" if roles_present == ["before"] else "--before" if "before" not in roles_present else None
    if missing is None:
        return
    there = "there is no --after" if answers is None else (
        f"--from-answers {answers} holds no {'after' if missing == '--after' else 'before'} model's answers")
    fix = "add --after MODEL" if answers is None else "rebuild from answers of an eval with --before and --after,"
    raise ApplianceError(f"{rule}: compares an --after model with --before, and {there}; {fix} or use "
                         "--fail-under/--fail-over")


def refuse_unmeasurable(rules: list[Rule], prompts: list[Prompt] | list[dict], what: str = "these prompts",
                        markers: list[str] | None = None) -> None:
    """A gate on a set these prompts do not make (a typo: ``genral.accuracy``) or a metric they cannot
    measure would fail only after every request, looking like a regression: refused before the first.
    ``prompts`` may also be the rows of an answers.jsonl (``what="these answers"``): the same check offline.
    ``markers``: the old identity's markers once known ([]: none, so no leak rate), else any."""
    from evals.report import compute, metric_value

    if not rules or not prompts:
        return
    fields = ("prompt", "reference", "kind", "set", "lang", "expect")
    if isinstance(prompts[0], dict):  # answers of several models: one model's prompts are every model's
        first = prompts[0].get("model")
        asked = [{k: r.get(k) for k in fields} for r in prompts if r.get("model") == first]
    else:
        asked = [{k: getattr(p, k) for k in fields} for p in prompts]
    # the metrics of empty answers: which exist depends on the prompts alone (markers stand in for the server's)
    rows = [{**a, "model": "m", "role": "after", "answer": "", "latency_ms": 1.0, "ttft_ms": 1.0, "output_tokens": 1,
             "started_at": 0.0, "error": None, "finish_reason": "stop", "name": "n", "author": "a",
             "old_identity": ["x"] if markers is None else markers} for a in asked]
    model = compute(rows)["models"]["after"]
    for rule in rules:
        if metric_value(model, rule.key) is not None:
            continue
        if markers == [] and "leak_rate" in rule.key and "name_leak" not in rule.key:
            raise ApplianceError(f"{rule}: the old identity's markers are unknown (--before is no registry model and "
                                 "its folder records none), so its leak rate cannot be measured; pass --old-identity "
                                 "with the names it used for itself (e.g. --old-identity SmolLM,HuggingFace)")
        name = rule.key.rsplit(".", 1)[0]  # a set may be named "v1.0"
        if "." in rule.key and name not in model["sets"]:
            raise ApplianceError(f"{rule}: {what} make no set '{name}' (they make {', '.join(sorted(model['sets']))}); "
                                 "check the spelling")
        raise ApplianceError(f"{rule}: {what} cannot measure it (accuracy needs prompts with 'expect', BLEU/ROUGE "
                             "with 'reference', hit rates identity prompts); gate on another metric or add such prompts")


PROGRESS_EVERY_S = 15.0
GONE_AFTER = 8  # requests in a row that could not connect: the eval stops instead of failing every one


async def _report_progress(progress: Callable[[str], None], who: str, done: list[int], total: int) -> None:
    """A line every PROGRESS_EVERY_S while a model's prompts are answered (a long eval said nothing for minutes)."""
    t0 = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        elapsed = time.monotonic() - t0
        eta = f", about {elapsed * (total - done[0]) / done[0]:.0f} s to go" if done[0] else ""
        progress(f"{who}: {done[0]}/{total} answered in {elapsed:.0f} s{eta}")


async def _run(cfg: EvalConfig, prompts: list[Prompt], progress: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    from openai import AsyncOpenAI

    url = base_url(cfg.url)
    api_key = _api_key(cfg) or "EMPTY"
    try:
        # retried by ask(), which counts the retries and keeps --timeout for the whole request
        client = AsyncOpenAI(base_url=url, api_key=api_key, timeout=cfg.timeout_s, max_retries=0)
    except Exception as e:  # its URL parser is stricter than urlsplit, and its errors vary by version
        raise ApplianceError(f"--url {cfg.url}: {_one_line(e)}; {URL_FIX}") from None
    async with client:
        served, lengths = await served_models(client, url, DEFAULT_URL)
        for role, model in roles(cfg):
            if model not in served:
                raise ApplianceError(f"--{role.rstrip('0123456789')} {model}: not served at {url} (it serves: "
                                     f"{', '.join(served) or 'nothing'}); load the adapter or pass a served model name")
            if cfg.max_tokens >= lengths.get(model, cfg.max_tokens + 1):
                # every request would be refused (400), each one a failed request of the report
                raise ApplianceError(f"--max-tokens {cfg.max_tokens}: {model} at {url} has a context of {lengths[model]} "
                                     "tokens, prompt and answer together; pass a smaller --max-tokens")
        markers = _markers(cfg, served)
        refuse_unmeasurable(cfg.rules, prompts, markers=markers)  # known only now: a leak gate without them
        rows: list[dict] = []
        unreachable = [0]
        for role, model in roles(cfg):
            progress(f"{role}: {model}: {len(prompts)} prompts, concurrency {cfg.concurrency}")
            sem = asyncio.Semaphore(cfg.concurrency)
            done = [0]

            async def counted(p: Prompt) -> dict:
                res = await _ask(client, sem, model, p.messages(), cfg.max_tokens, cfg.timeout_s)  # noqa: B023
                done[0] += 1
                # each request was already retried: a run of them that cannot connect means the server is gone
                unreachable[0] = unreachable[0] + 1 if (res["error"] or "").startswith("APIConnectionError") else 0
                if unreachable[0] >= GONE_AFTER:
                    raise ApplianceError(f"--url {url}: the server stopped answering ({GONE_AFTER} requests in a row "
                                         f"could not connect; was it stopped?); nothing was written")
                return res

            ticker = asyncio.create_task(_report_progress(progress, f"{role}: {model}", done, len(prompts)))
            try:
                results = await asyncio.gather(*(counted(p) for p in prompts))
            finally:
                ticker.cancel()
            for p, res in zip(prompts, results):
                rows.append({"model": model, "role": role, "prompt": p.prompt, "answer": res["answer"],
                             "reference": p.reference, "kind": p.kind, "set": p.set, "lang": p.lang, "expect": p.expect,
                             "latency_ms": res["latency_ms"], "ttft_ms": res["ttft_ms"],
                             "output_tokens": res["output_tokens"], "started_at": res["started_at"], "error": res["error"],
                             "finish_reason": res["finish_reason"], "source": p.source, "name": cfg.name, "author": cfg.author, "old_identity": markers,
                             **{k: res[k] for k in ("tokens_counted", "reasoning", "retries") if k in res},
                             # what else was sent: an earlier turn that names the new identity explains a base's "hit"
                             **({"system": p.system} if p.system else {}), **({"history": p.history} if p.history else {})})
    return rows, markers


def failure_summary(rows: list[dict]) -> str | None:
    """One line on the failed requests, by kind (the gate then fails on them; answers.jsonl keeps each error)."""
    from collections import Counter

    def kind(error: str) -> str:
        return error.split(":", 1)[0].split(" (", 1)[0]

    kinds = Counter(kind(r["error"]) for r in rows if r.get("error"))
    if not kinds:
        return None
    n = sum(kinds.values())
    hint = ("; raise --timeout (seconds per request)" if "APITimeoutError" in kinds else
            "; each row's error is in answers.jsonl")
    # the cause, not only its class: "BadRequestError x2" alone hid a template's "System role not supported"
    top = kinds.most_common(1)[0][0]
    first = next(r["error"] for r in rows if r.get("error") and kind(r["error"]) == top)
    said = re.search(r"""'message': (['"])(.*?)\1""", first)
    detail = said.group(2) if said else first[len(top):].lstrip(": ").strip()
    detail = f"; the first {top}: {detail[:150]}" if detail and top != "APITimeoutError" else ""
    return f"{n} of {len(rows)} requests failed: " + ", ".join(f"{k} x{c}" for k, c in kinds.most_common()) + detail + hint


def answer_notes(rows: list[dict]) -> list[str]:
    """What the figures of answered requests rest on, where it is not what it seems: empty answers, token counts
    that are chunk counts (no usage sent), latencies of retried requests."""
    ok = [r for r in rows if not r.get("error")]
    notes = []
    empty = sum(not r["answer"].strip() for r in ok)
    if empty:
        blank = sum(bool(r["answer"]) and not r["answer"].strip() for r in ok)  # line breaks the model did produce
        notes.append(f"{empty} of {len(ok)} answers are empty" + (f" ({blank} of them white space only)" if blank else "")
                     + " (scored as misses); check the model's chat template and the server's log")
    counted = sum(r.get("tokens_counted") == "chunks" for r in ok)
    if counted:
        notes.append(f"the server sent no token usage for {counted} answers: their output_tokens (and tokens/s, "
                     "TPOT) count stream chunks, one token each on most servers, more behind a batching proxy")
    retried = [r for r in rows if r.get("retries")]
    if retried:
        notes.append(f"{len(retried)} requests were retried (429 or 5xx, or no connection; 'retries' in "
                     "answers.jsonl): their latency and TTFT are those of their last attempt")
    return notes


def _prepare_output(out: Path) -> list[Path]:
    """Make sure the report can be written to ``out`` before any request is sent; the folders it created.

    An eval can take many minutes: finding out afterwards that ``--output`` is unwritable loses them.
    """
    paths.refuse_file_on_path(out, "--output")
    _refuse_foreign_files(out)
    for name in REPORT_FILES:
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise ApplianceError(f"--output {out}: {out / name} is a folder, so the report cannot replace it; "
                                 "remove or rename it, or choose another --output")
    created = [d for d in (out, *out.parents) if not d.exists()]  # for the error path: make_dirs may fail midway
    try:
        created = paths.make_dirs(out)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        paths.remove_empty_dirs(created)
        raise ApplianceError(f"--output {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    return created


def run_eval(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Replay every prompt to every model, write answers.jsonl and report.{json,md,html}; return the report.

    The report's ``gate`` says whether ``cfg.rules`` passed; the caller decides the exit code.
    """
    if cfg.concurrency < 1:
        raise ApplianceError(f"--concurrency {cfg.concurrency}: must be at least 1")
    if cfg.max_tokens < 1:
        raise ApplianceError(f"--max-tokens {cfg.max_tokens}: must be at least 1")
    if not cfg.timeout_s > 0:
        raise ApplianceError(f"--timeout {cfg.timeout_s:g}: must be more than 0 seconds")
    progress = progress or (lambda msg: None)
    if (cfg.name is not None and not cfg.name.strip()) or (cfg.author is not None and not cfg.author.strip()):
        raise ApplianceError("--name and --author must not be empty: the identity hit rate looks for both")
    # every input is checked here, before the first request: a mistake found later costs the whole eval
    _check_text_flags(cfg)
    cfg = served_defaults(cfg, progress)
    _note_repeated_models(cfg, progress)
    given_markers(cfg)
    url = base_url(cfg.url)
    refuse_uncomparable(cfg.rules, ["before", *cfg.after] if cfg.after else ["before"])
    if cfg.name is None or cfg.author is None:  # the identity comes from the server: a bad file fails before it is asked
        with contextlib.redirect_stderr(io.StringIO()):  # its notes come once, with the load below
            load_prompts(cfg.prompts, DEFAULT_NAME, DEFAULT_AUTHOR)
    cfg = resolve_identity(cfg, progress)
    out = output_dir(cfg)
    prompts = once_each(load_prompts(cfg.prompts, cfg.name, cfg.author), progress)
    refuse_unmeasurable(cfg.rules, prompts)
    created = _prepare_output(out)
    try:
        rows, _ = asyncio.run(_run(cfg, prompts, progress))
    except BaseException:
        paths.remove_empty_dirs(created)
        raise
    for note in filter(None, [failure_summary(rows), *answer_notes(rows)]):
        progress(f"note: {note}")
    run = {"url": url, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "config": {k: v for k, v in asdict(cfg).items() if k not in ("api_key", "rules")}}
    answers = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return write_report(out, cfg.rules, run=run, answers_text=answers)


def report_from_answers(answers: str | Path, output: str | None = None, rules: list[Rule] = (),
                        progress: Callable[[str], None] | None = None) -> dict:
    """Rebuild the report (and apply the gate) offline from an existing answers.jsonl (or a report folder).

    With ``output`` elsewhere, the answers are copied there too: a report folder always holds the
    answers.jsonl its reports were computed from. Relative paths resolve as :func:`appliance.paths.output_folder` says.
    """
    if not str(answers).strip():
        raise ApplianceError("--from-answers is empty; pass the answers.jsonl written by `appliance eval`")
    given = Path(answers).expanduser()
    src = answers_file(paths.resolve_user_path(answers))
    if not given.is_absolute() and not os.path.lexists(src):
        raise ApplianceError(f"--from-answers {answers}: answers file not found{paths.looked_in(answers)}; check the path")
    out = paths.output_folder(output) if output is not None else src.parent
    paths.refuse_file_on_path(out, "--output")
    # every row checked before the folder is looked at or anything is written; a gate these answers
    # cannot measure is refused (exit 2) as it is before a live eval, not failed (exit 1)
    rows = load_answers(src)
    refuse_uncomparable(list(rules), list(dict.fromkeys(r["role"] for r in rows)), str(answers))
    refuse_unmeasurable(list(rules), rows, "these answers")
    own = out / "answers.jsonl"
    if output is None and own.is_file() and not _same_answers(own, src):
        # only an explicit --output replaces a run's answers: they cost a server and minutes to take again
        raise ApplianceError(f"--from-answers {answers}: {own} next to it holds other answers, which its report "
                             f"would replace; pass --output DIR for the report of {src.name}")
    _refuse_foreign_files(out, keep=src)
    for note in filter(None, [failure_summary(rows), *answer_notes(rows)]):  # as the live eval said them
        (progress or (lambda m: None))(f"note: {note}")
    return write_report(out, rules, run={"rebuilt_from": str(src)}, answers_path=src)


def _refuse_foreign_files(out: Path, keep: Path | None = None) -> None:
    """Files named like the report's in ``out`` are replaced only when they are ours (an earlier report or
    its answers), never a user's own notes of those names; ``keep``: the answers being read."""
    kind = rundir.folder_kind(out)
    if kind in rundir.RUN_KINDS:  # a training run or a model: its --overwrite would delete the report later (and it is not a report)
        raise ApplianceError(f"--output {out}: holds a {kind} (its appliance.json says so); write the report to a "
                             "folder of its own, such as reports/NAME")
    foreign = [n for n in REPORT_FILES if (out / n).is_file() and not _ours(out / n)
               and (keep is None or not _same_answers(out / n, keep))]
    if foreign:
        raise ApplianceError(f"--output {out}: holds {', '.join(foreign)}, not written by `appliance eval`, which the "
                             "report would replace; choose another --output or move them")


def _ours(f: Path) -> bool:
    """Whether a report file was written by `appliance eval` (an unreadable one is not)."""
    try:
        if f.name == "answers.jsonl":
            load_answers(f)
            return True
        text = f.read_text(encoding="utf-8")
    except (ApplianceError, OSError, ValueError):
        return False
    if f.name == "report.json":
        try:
            return "models" in json.loads(text)
        except (ValueError, TypeError):
            return False
    return text.startswith("# Eval: ") if f.name == "report.md" else "<h1>Eval: " in text


def _same_answers(a: Path, b: Path) -> bool:
    """Whether two answers files are one file, or hold the same bytes (an unreadable one is not the same)."""
    try:
        return a.samefile(b) or a.read_bytes() == b.read_bytes()
    except OSError:
        return False


SUMMARY = [("identity_hit_rate", 100), ("identity_zh_hit_rate", 100), ("identity_en_hit_rate", 100),
           ("identity_leak_rate", 100), ("general_accuracy", 100), ("name_leak_count", 1),
           ("truncated", 1),  # answers cut at --max-tokens: scored as cut
           ("identity.bleu4", 1),
           ("identity.rouge1", 1), ("identity.rouge2", 1), ("identity.rougeL", 1), ("open.bleu4", 1), ("open.rougeL", 1),
           # references beside `expect` (a domain eval's questions): the built-in general set has none, so no row
           ("general.bleu4", 1), ("general.rougeL", 1),
           ("requests_per_s", 1), ("output_tokens_per_s", 1), ("ttft_p50_ms", 1), ("ttft_p95_ms", 1), ("tpot_ms", 1)]


def summary_table(report: dict) -> str:
    """A plain-text table of the headline metrics, one column per model (rates in %; SET.KEY rows per set)."""
    from evals.report import is_rate, metric_value

    models = report["models"]
    lines = []
    if len(models) > 2:  # after1, after2 ...: which model each column is, as report.md says
        lines.append("models: " + ", ".join(f"{role} = {m['model']}" for role, m in models.items()))
    lines.append(f"{'metric':<22}" + "".join(f"{r:>12}" for r in models))
    # general_accuracy counts every checkable non-identity prompt: held-out domain questions beside the built-in
    # general ones showed one figure that rose while general knowledge fell; each set's own is shown too
    sets = sorted({s for m in models.values() for s, sm in m.get("sets", {}).items() if sm.get("accuracy") is not None})
    per_set = [(f"{s}.accuracy", 100) for s in sets] if len(sets) > 1 else []
    # a set of one's own (a domain eval's "zephyr") with references: its BLEU/ROUGE as identity's and open's are shown
    own = sorted({s for m in models.values() for s, sm in m.get("sets", {}).items()
                  if sm.get("references") and s not in ("identity", "identity_zh", "identity_en", "open", "general")})
    per_set += [(f"{s}.{k}", 1) for s in own for k in ("bleu4", "rougeL")]
    # and every metric the gate judged, so a failure's figure is on screen
    gated = [r.split(" ", 1)[1].rsplit("=", 1)[0] for r in (report.get("gate") or {}).get("rules", []) if " " in r]
    rows = SUMMARY[:5] + per_set + SUMMARY[5:]
    rows += [(k, 100 if is_rate(k) else 1) for k in dict.fromkeys(gated) if k not in {key for key, _ in rows}]
    for key, scale in rows:
        values = [metric_value(m, key) for m in models.values()]
        if all(v is None for v in values):
            continue
        cells = ["-" if v is None else f"{v * scale:.1f}" if isinstance(v, float) or scale != 1 else str(v) for v in values]
        label = key + (" %" if scale == 100 else "")
        lines.append(f"{label:<22}" + (" " if len(label) >= 22 else "") + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)
