"""LLaMA-Factory's ``dataset_info.json``: the registry of named datasets, its entries' checks, the
record formats (alpaca, sharegpt) an entry declares, and the training kinds (KTO, preference) refused
in entries and records alike. Loading the records is :mod:`appliance.data`'s job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance import paths
from appliance.datafiles import _a, _fail, _probe, _read_json_file, _short, _show, _user_path

REGISTRY_FILE = "dataset_info.json"

# LLaMA-Factory's defaults (data/README.md there).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
OPENAI_TAGS = {**SHAREGPT_TAGS, "role_tag": "role", "content_tag": "content", "user_tag": "user",
               "assistant_tag": "assistant", "observation_tag": "tool"}


@dataclass
class Format:
    formatting: str  # "alpaca" | "sharegpt"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    auto: bool = False  # detected from a file's first record rather than declared in a registry
    kind: tuple[str, str | None] = ("", None)  # auto only: what _kind() said of the first record
    origin: str = ""  # declared: "entry 'x' of dir/dataset_info.json"; auto: the file, for _direct_hint()


_REGISTRY_EXAMPLE = '{"identity": {"file_name": "identity.json"}}'


def read_registry(path: Path) -> dict[str, dict]:
    reg = _read_json_file(path, f"a {REGISTRY_FILE} must be a JSON object mapping dataset names to entries, "
                                f"like {_REGISTRY_EXAMPLE} ({{}} for none)")
    if not isinstance(reg, dict):
        _fail(f"{_show(path)}: must be a JSON object mapping dataset names to entries like {_REGISTRY_EXAMPLE}")
    for name, entry in reg.items():
        if not isinstance(entry, dict):
            _fail(f"{_show(path)}: entry '{name}' is {_short(entry)}, not an object; write it as "
                  '{"file_name": "...", "formatting": "alpaca"}')
    return reg


def dataset_registry(dataset_dir: str | None = None) -> dict[str, dict]:
    """Built-in data/dataset_info.json merged with <dataset_dir>/dataset_info.json (user entries win).

    Each entry gains ``_dir``: the folder its ``file_name`` is relative to.
    """
    builtin = paths.resource_dir("data")
    out = {name: {**entry, "_dir": str(builtin)} for name, entry in read_registry(builtin / REGISTRY_FILE).items()}
    if dataset_dir:
        d, flag = _user_path(dataset_dir), f"--dataset-dir {dataset_dir}"
        kind = _probe(d, flag)
        if kind == "file":
            _fail(f"{flag}: is a file, not a folder; --dataset-dir takes the folder that holds {REGISTRY_FILE} "
                  f"(pass a data file itself as the dataset)")
        if kind != "dir":
            _fail(f"{flag}: no such folder; pass the folder that holds your {REGISTRY_FILE}")
        info = d / REGISTRY_FILE
        if _probe(info, _show(info)) != "file":
            _fail(f"--dataset-dir {dataset_dir}: has no {REGISTRY_FILE}; add one (LLaMA-Factory format) "
                  "or pass your .json/.jsonl files directly")
        out.update({name: {**entry, "_dir": str(d)} for name, entry in read_registry(info).items()})
    return out


# Mappings the converters cannot do without; any other column or tag may be null, meaning "not used".
_REQUIRED = {"alpaca": {"prompt", "response"}, "sharegpt": {"messages"},
             "tags": {"role_tag", "content_tag", "user_tag", "assistant_tag"}}


def entry_source(name: str, entry: dict) -> tuple[Path, Format]:
    info = _show(Path(entry["_dir"]) / REGISTRY_FILE)
    where = f"{info}: entry '{name}'"
    if entry.get("ranking") is not None and not isinstance(entry["ranking"], bool):
        # "false" (a string) is true to Python: say what it should be rather than guess
        _fail(f"{where}: ranking is {_short(entry['ranking'])}; it must be true or false (without quotes)")
    if entry.get("ranking"):
        _fail(f"{where}: ranking (preference) datasets are not supported; use an SFT dataset")
    file_name = entry.get("file_name")
    if file_name is not None and not isinstance(file_name, str):
        _fail(f"{where}: 'file_name' is {_short(file_name)}; it must be a string naming a .json/.jsonl/.csv/.parquet file "
              "or a folder")
    if not file_name:
        hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("om_hub_url") or entry.get("script_url")
        why = f"it points to '{hub}', which is never downloaded; " if hub else ""
        _fail(f"{where}: has no 'file_name'; {why}put the data in a local .json/.jsonl/.csv/.parquet file and set 'file_name'")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        _fail(f"{where}: 'formatting' is {_short(formatting)}; use \"alpaca\" or \"sharegpt\"")
    for key in ("columns", "tags"):
        # null is "not given"; any other non-object (0, false, "", []) too was taken for {} before, and 0 crashed
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            example = '{"prompt": "instruction"}' if key == "columns" else '{"role_tag": "role"}'
            _fail(f"{where}: '{key}' is {_short(entry[key])}; it must be an object like {example}")
    _refuse_unsupported(where, entry, formatting)
    checked = [("columns", _REQUIRED[formatting])] + ([("tags", _REQUIRED["tags"])] if formatting == "sharegpt" else [])
    for key, required in checked:
        for k, v in (entry.get(key) or {}).items():
            if (isinstance(v, str) and v) or (v is None and k not in required):
                continue
            what = "a column name" if key == "columns" else "a tag"
            _fail(f"{where}: {key}.{k} must be {what} (a string), not {_short(v)}")
    origin = f"entry '{name}' of {info}"
    defaults = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    columns = _entry_columns(where, entry.get("columns"), defaults, _REQUIRED[formatting])
    if formatting == "alpaca":
        fmt = Format("alpaca", columns, origin=origin)
    else:
        fmt = Format("sharegpt", columns, {**SHAREGPT_TAGS, **(entry.get("tags") or {})}, origin=origin)
    path = Path(entry["_dir"]) / file_name
    if _probe(path, f"{where}: {_show(path)}") == "missing":
        _fail(f"{where}: file {_show(path)} not found; fix 'file_name' or put the file there")
    return path, fmt


def _entry_columns(where: str, listed: dict | None, defaults: dict[str, str], required: set[str]) -> dict:
    """The columns an entry reads. As in LLaMA-Factory, once ``columns`` is given a column it does not list is
    not read (None), rather than its default: {"prompt": "input", ...} must not also read "input" as the query."""
    if listed is None:
        return dict(defaults)
    if set(listed) == {"prompt"}:  # LLaMA-Factory's pretraining entries (c4_demo, wiki_demo): text, no answers
        _fail(f'{where}: columns name only "prompt", plain text for pre-training; this trains supervised answers '
              'only: use a dataset with a "response" column (alpaca) or conversations (sharegpt)')
    for key in sorted(required - set(listed)):
        _fail(f'{where}: columns.{key} is not set; once "columns" is given, only the columns it lists are read '
              f'(as in LLaMA-Factory): add "{key}": "{defaults[key]}" (or the name of the column that holds it)')
    return {key: listed.get(key) for key in defaults} | listed


# What a LLaMA-Factory entry may hold, and what of it is read here (the rest is refused, not ignored)
_ENTRY_KEYS = {"file_name", "formatting", "ranking", "columns", "tags", "num_samples", "split", "subset", "folder",
               "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "_dir"}
_COLUMN_KEYS = {"alpaca": set(ALPACA_COLUMNS), "sharegpt": {"messages", "system"}}
_UNSUPPORTED_COLUMNS = {
    "kto_tag": "KTO datasets are not supported: the answers labelled false would be learned as good ones; keep the "
               "records labelled true and remove columns.kto_tag",
    "chosen": "preference (chosen/rejected) datasets are not supported; use an SFT dataset",
    "rejected": "preference (chosen/rejected) datasets are not supported; use an SFT dataset",
    "tools": "tool descriptions are not supported (tool calls are not trained); remove columns.tools",
    **{m: "multimodal datasets are not supported (the model and training are text only); remove "
          f"columns.{m} and the <image>/<video>/<audio> markers" for m in ("images", "videos", "audios")}}


def _refuse_unsupported(where: str, entry: dict, formatting: str) -> None:
    """An entry key or column this loader would otherwise ignore, changing what is trained without a word."""
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        _fail(f"{where}: unknown key {_short(unknown[0])}; an entry takes "
              f"{', '.join(sorted(_ENTRY_KEYS - {'_dir'}))} (check the spelling)")
    for col, value in (entry.get("columns") or {}).items():
        if col in _UNSUPPORTED_COLUMNS and value is not None:  # null: not used (LLaMA-Factory writes tools: null)
            _fail(f"{where}: {_UNSUPPORTED_COLUMNS[col]}")
        if col not in _COLUMN_KEYS[formatting] and col not in _UNSUPPORTED_COLUMNS:
            _fail(f"{where}: columns.{col} is not a column of {formatting} data; use "
                  f"{', '.join(sorted(_COLUMN_KEYS[formatting]))}")
    for tag in entry.get("tags") or {}:
        if tag not in SHAREGPT_TAGS:
            _fail(f"{where}: tags.{tag} is not a tag; use {', '.join(sorted(SHAREGPT_TAGS))}")
    if entry.get("split") not in (None, "train"):
        _fail(f"{where}: split {_short(entry['split'])}: a local file has only the train split; remove 'split'")
    for key in ("subset", "folder", "cloud_file_name"):
        if entry.get(key) is not None:
            _fail(f"{where}: '{key}' applies to hub or cloud datasets, which are never downloaded here; "
                  "remove it and point 'file_name' at a local file")
    n = entry.get("num_samples")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        _fail(f"{where}: num_samples is {_short(n)}; it must be a whole number of records, at least 1")


def refuse_preference_data(where: str, rec: dict, fmt: Format | None) -> None:
    """KTO labels and preference pairs: read as supervised data, answers labelled bad would be learned as good."""
    read = {v for v in fmt.columns.values() if isinstance(v, str)} if fmt else set()
    for key in ("kto_tag", "label"):
        value = rec.get(key)
        if key not in read and (isinstance(value, bool) or (key == "kto_tag" and value is not None)):
            _fail(f"{where}: field '{key}' is {_a(value)}, a KTO label: KTO/preference labels are not supported "
                  f"(the answers labelled false would be learned as good ones); keep the records labelled true "
                  f"and remove '{key}'")
    pairs = [keys for keys in (("chosen", "rejected"), ("preferred_output", "non_preferred_output"), ("rejected_response",))
             if all(rec.get(k) is not None and k not in read for k in keys)]
    if pairs:
        _fail(f"{where}: preference (chosen/rejected) data is not supported; this trains supervised answers only "
              f"(the record has {' and '.join(repr(k) for k in pairs[0])}); to learn the preferred answers, "
              "write each as the assistant's reply of a conversation and leave out the rejected ones")


def sample_records(examples: list, n: int | None) -> list:
    """LLaMA-Factory's ``num_samples``: ``n`` records drawn at random (a fixed seed, so a run is
    repeatable); more than the file holds repeats records, all of them at least once."""
    import random

    if n is None or n == len(examples):
        return examples
    rng = random.Random(0)
    order = rng.sample(range(len(examples)), len(examples))
    picked = order[:n] + [rng.randrange(len(examples)) for _ in range(n - len(examples))]
    return [examples[i] for i in picked]
