"""``appliance data check``: validate a dataset, and with ``--model`` see it as training will."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.errors import ApplianceError

SHOWN_PROBLEMS = 20  # bad records listed one per line; the rest are counted


class BadRecords(ApplianceError):
    """Records ``train`` would refuse, every one of them (``train`` stops at the first)."""

    def __init__(self, dataset: str, problems: list[str]):
        self.problems = sorted(problems, key=_position)  # lines that do not parse were found first
        more = len(problems) - SHOWN_PROBLEMS
        # one bad record is the one-line error itself, as `train` gives it
        super().__init__(self.problems[0] if len(problems) == 1 else
                         f"{dataset}: {len(problems)} bad records"
                         + (f" (the first {SHOWN_PROBLEMS} listed above)" if more > 0 else " (listed above)")
                         + "; fix them and run `appliance data check` again")

    def lines(self) -> list[str]:
        """The problems to print before the error, one per line (none when the error is the only one)."""
        if len(self.problems) == 1:
            return []
        more = len(self.problems) - SHOWN_PROBLEMS
        return self.problems[:SHOWN_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])


def _position(problem: str) -> tuple[str, int]:
    """(file, line, record or row number) of a problem as the loader words it ("f.jsonl: line 3 ...", "f.csv: row 2
    ...") or as an example's source names it ("f.jsonl:3: ...", "f.json#2: ...")."""
    import re

    # a CSV's or Parquet file's "row N" too: else its problems sort as text, row 10 before row 2
    m = re.match(r"(.*?)(?:: (?:line |record #|row )|:|#)(\d+)\b", problem)
    return (m.group(1), int(m.group(2))) if m else (problem, -1)


def check_dataset(dataset: str, dataset_dir: str | None = None, name: str = "Archer", author: str = "意琦行",
                  model: str | None = None, max_length: int | None = None) -> list[str]:
    """Lines to print for one dataset: its conversation count, and with ``model`` what its tokenizer and chat
    template make of each record at ``max_length``. Raises for what ``train`` would refuse; bad records all
    at once (:class:`BadRecords`), where ``train`` names only the first."""
    from appliance.data import load_examples
    from appliance.train_config import TrainConfig

    problems: list[str] = []
    examples = load_examples([dataset], dataset_dir=dataset_dir, name=name, author=author, problems=problems)
    if model is None:
        if problems:
            raise BadRecords(dataset, problems)
        return [_count(dataset, len(examples))] + _repeats(examples)
    max_length = TrainConfig().max_length if max_length is None else max_length
    if max_length < 16:  # train's own floor: a check train would refuse to follow is no check
        raise ApplianceError(f"--max-length {max_length}: must be >= 16, as for train")
    from appliance import models
    from appliance.datafiles import few
    from appliance.sft import audit, chat_tokenizer, special_token_problems

    ref = models.resolve(model)
    models.ensure_fetchable(ref, model)  # offline, a hub id not cached: one line now, not ~1 min of retries
    tok = chat_tokenizer(ref.path, model)
    problems += special_token_problems(tok, examples)  # with the rest, not one more run of the check later
    if problems:
        raise BadRecords(dataset, problems)
    n = len(examples)
    lines = [_count(dataset, n)] + _repeats(examples)
    noted = len(lines)
    found = audit(tok, examples, max_length)
    if len(found["refused"]) == n:
        raise ApplianceError(f"--model {model}: its chat template refuses every example of {dataset} "
                             f"({few(found['refused'])}); `train` would refuse it")
    if len(found["dropped"]) + len(found["refused"]) == n:
        raise ApplianceError(f"--max-length {max_length}: every example of {dataset} is cut before its first answer "
                             f"({few(found['dropped'])}); `train` would refuse it: raise --max-length")
    told = {"refused": "skipped by train: the chat template refuses them (vLLM would too)",
            "dropped": f"dropped by train (its first answer starts after --max-length {max_length})",
            "cut": f"trained with an answer cut at --max-length {max_length}",
            "last_only": ("learned from their last answer only (the template does not render the conversation so far as the start of "
                          "the whole: it rewrites earlier turns, as Qwen3's drops their reasoning)"),
            "mismatched": "prompt tokens differ from what vLLM will see (a token spans the end of the prompt and "
                          "the start of the answer)"}
    for key, what in told.items():
        if found[key]:
            lines.append(f"  {len(found[key])} {what}: {few(found[key])}")
    if len(lines) == noted:
        lines.append(f"  with {ref.name} at --max-length {max_length}: every example fits and renders as vLLM will")
    return lines


def _repeats(examples: list) -> list[str]:
    """A note on conversations that repeat an earlier one word for word (after {{name}}/{{author}} are filled):
    not an error (repeating is a way to weight an example up), but a copy made by mistake trains it twice."""
    import json

    first: dict[str, str] = {}
    repeats = []
    for ex in examples:
        key = json.dumps(ex.messages, ensure_ascii=False, sort_keys=True)
        if key in first:
            repeats.append(f"{ex.source} (= {first[key]})")
        else:
            first[key] = ex.source
    if not repeats:
        return []
    from appliance.datafiles import few

    return [f"  {len(repeats)} repeat{'s' if len(repeats) == 1 else ''} an earlier conversation word for word (trained "
            f"once per copy; remove the copies unless you mean to weight them up): {few(repeats)}"]


def _count(dataset: str, n: int) -> str:
    return f"{dataset}: {n} conversation{'' if n == 1 else 's'}, ok"


def check_datasets(datasets: list[str], echo: Callable[[str], None], echo_err: Callable[[str], None],
                   **options: Any) -> None:
    """``appliance data check``: every dataset is checked, so one bad file does not hide the next one's
    problems; raises the one failure, or, after naming each, one line counting them."""
    if options.get("max_length") is not None and options.get("model") is None:
        # lengths are counted in the model's tokens: without one, the flag would change nothing
        raise ApplianceError(f"--max-length {options['max_length']}: needs --model (lengths are counted in that "
                             "model's tokens); add --model MODEL, or leave --max-length out")
    failed: list[tuple[str, ApplianceError]] = []
    for ds in datasets:
        try:
            lines = check_dataset(ds, **options)
        except ApplianceError as e:
            for line in e.lines() if isinstance(e, BadRecords) else []:
                echo_err(line)
            failed.append((ds, e))
            continue
        for line in lines:
            echo(line)
    if len(failed) == 1:
        raise failed[0][1]
    if failed:
        for _, e in failed:
            echo_err(f"error: {e}")
        raise ApplianceError(f"{len(failed)} of {len(datasets)} datasets failed the check (above): "
                             f"{', '.join(ds for ds, _ in failed)}")
