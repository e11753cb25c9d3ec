"""``TrainConfig``: one dataclass for the train stage; YAML file first, flags win."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from appliance.errors import ApplianceError


@dataclass
class TrainConfig:
    """Everything that shapes a training run. Defaults are the measured CPU recipe (docs/recipe.md)."""

    model: str = "smollm2-135m"
    datasets: list[str] = field(default_factory=lambda: ["identity"])
    dataset_dir: str | None = None
    name: str = "Archer"
    author: str = "意琦行"
    output: str = "saves/archer"
    method: str = "lora"  # lora | qlora
    epochs: float = 1.75
    lr: float = 1e-3
    scheduler: str = "cosine"
    warmup_steps: int = 2
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"
    # LoRA only in the top layers (the backward pass stops below them): a share of the decoder
    # layers if < 1 (0.75: the top 22 of SmolLM2's 30), a count if >= 1, every layer if 0
    lora_layers: float = 0.75
    batch_size: int = 4  # twice the optimizer steps of batch 8 for the same tokens, less padding
    grad_accum: int = 1
    batch_tokens: int = 0  # > 0: micro-batches of up to this many padded tokens instead of batch_size samples (GPU)
    max_length: int = 512
    seed: int = 42
    max_steps: int = -1
    save_steps: int = 20
    gradient_checkpointing: bool = False
    retention: bool = True
    retention_samples: int = 104
    retention_max_new_tokens: int = 64
    retention_prompts: str | None = None
    # > 0: beside each retention answer the new identity's opening ("我是", "Hello! I am") is
    # trained down with this weight. Off by default: it keeps the name out of unrelated answers
    # but costs identity hits on greetings and capability questions, and 40% more training (docs/recipe.md)
    unlikelihood: float = 0.0
    overwrite: bool = False
    resume: bool = False

    _pipeline = False  # set by `appliance pipeline` (a class attribute, not an option)

    def __post_init__(self) -> None:
        if isinstance(self.lora_layers, float) and self.lora_layers.is_integer():
            self.lora_layers = int(self.lora_layers)  # a count given as --lora-layers 22 is recorded as 22, not 22.0

    @classmethod
    def from_sources(cls, config_file: str | None = None, **flags: Any) -> "TrainConfig":
        """Defaults, then the YAML file, then every flag that was actually given (not None)."""
        values: dict[str, Any] = {}
        from_file = _read_yaml(config_file) if config_file else {}
        values.update(from_file)
        values.update({k: v for k, v in flags.items() if v is not None})
        known = {f.name for f in fields(cls)}
        where = f"--config {config_file}: " if config_file else ""
        unknown = sorted(set(values) - known)
        if unknown:
            raise ApplianceError(f"{where}unknown option(s) {', '.join(unknown)}{_did_you_mean(unknown, known)}; valid keys "
                                 f"are {', '.join(sorted(known))}")
        defaults = cls()
        texts = {f.name for f in fields(cls) if "str" in str(f.type) and "list" not in str(f.type)}
        cfg = cls(**{k: _coerce(k, v, getattr(defaults, k), where, text=k in texts) for k, v in values.items()})
        if "output" not in values:
            # saves/<name>, as `pipeline` and `eval` (reports/<name>) name their folders: --name Nova trained
            # into saves/archer, and `up --adapter saves/nova` then found nothing
            cfg.output = default_output(cfg.name)
        # options the file set and no flag overrode: their errors name the file, not a flag never typed
        cfg._from_file = (config_file, set(from_file) - {k for k, v in flags.items() if v is not None})
        return cfg

    def validate(self) -> None:
        """Out-of-range values fail with the flag's name and the accepted range."""
        checks = [
            (self.method in ("lora", "qlora"), "--method", "must be lora or qlora"),
            (1 <= self.rank <= 512, "--rank", "must be 1-512 (vLLM serves LoRA ranks up to 512)"),
            (self.lora_layers >= 0 and (self.lora_layers < 1 or float(self.lora_layers).is_integer()), "--lora-layers",
             "must be 0 (every layer), a share of the layers below 1 (e.g. 0.75) or a whole number of top layers"),
            (self.alpha >= 1, "--alpha", "must be >= 1"),
            (0 < self.lr < 1, "--lr", "must be > 0 and < 1 (e.g. 2e-4)"),
            (0 < self.epochs < 1e6, "--epochs", "must be a number > 0 (e.g. 3)"),  # also refuses inf and nan
            (self.batch_size >= 1, "--batch-size", "must be >= 1"),
            (self.grad_accum >= 1, "--grad-accum", "must be >= 1"),
            (self.batch_tokens == 0 or self.batch_tokens >= 64, "--batch-tokens", "must be 0 (batch by --batch-size) or >= 64"),
            (self.max_length >= 16, "--max-length", "must be >= 16"),
            (0 <= self.dropout < 1, "--dropout", "must be in [0, 1)"),
            (self.max_steps == -1 or self.max_steps >= 1, "--max-steps", "must be -1 (use --epochs) or >= 1"),
            (self.save_steps >= 1, "save_steps", "must be >= 1"),  # a --config key: no flag
            (0 <= self.seed < 2**32, "--seed", "must be 0 to 4294967295"),
            (0 <= self.unlikelihood < 1e6, "--unlikelihood", "must be a number >= 0 (0 turns it off)"),
            (self.warmup_steps >= 0, "warmup_steps", "must be >= 0"),
            (self.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}"),
            (bool(self.target_modules.strip(",").strip()), "--target-modules", "must name modules (e.g. q_proj,v_proj) or be all-linear"),
            (self.retention_samples >= 0, "--retention-samples", "must be >= 0"),
            (self.retention_max_new_tokens >= 1, "retention_max_new_tokens", "must be >= 1 (the base's answers' length)"),
            (not self.unlikelihood or (self.retention and self.retention_samples > 0), "--unlikelihood",
             "needs retention on (each negative pairs with a retention prompt): drop --no-retention or --unlikelihood"),
            (bool(self.datasets), "--dataset", "give at least one dataset name or file"),
            # "" would reach the loaders, whose errors name the flag even when the --config file set it
            (bool(self.model.strip()), "--model", "is empty; give a registry name (see `appliance models list`), a local HF model directory or a hub id"),
            (bool(self.output.strip()), "--output", "is empty; give the run's folder, e.g. saves/archer"),
            (bool(self.name.strip()), "--name", "must not be empty"),
            (bool(self.author.strip()), "--author", "must not be empty"),
        ]
        file, keys = getattr(self, "_from_file", (None, set()))
        for ok, flag, why in checks:
            if not ok:
                key = flag.lstrip("-").split("/")[0].replace("-", "_")
                key = "datasets" if key == "dataset" else key
                got = self._value_of(flag)
                got = repr(got) if isinstance(got, str) and not got.strip() else got  # (got '') rather than (got )
                if key in keys:
                    raise ApplianceError(f"--config {file}: {key} {why} (got {got})")
                raise ApplianceError(f"{flag} {why} (got {got})")

    def adapted_layers(self, n_layers: int) -> list[int] | None:
        """The decoder layers that get LoRA (None: all), from ``lora_layers`` and the model's depth."""
        if not self.lora_layers:
            return None
        if self.lora_layers < 1:
            k = max(1, int(self.lora_layers * n_layers + 1e-9))  # rounded down (0.29 x 100 is 28.99...), at least one
        else:
            k = int(self.lora_layers)
            if k > n_layers:
                raise ApplianceError(f"{self.named('lora_layers')} {k}: the model has {n_layers} decoder layers; use at most {n_layers}, "
                                     "a share below 1 (e.g. 0.75) or 0 for all")
        return None if k >= n_layers else list(range(n_layers - k, n_layers))

    def named(self, key: str) -> str:
        """How an error names option ``key``: ``--config FILE: key`` when that file set it, else its flag."""
        file, keys = getattr(self, "_from_file", (None, set()))
        return f"--config {file}: {key}" if key in keys else "--" + key.replace("_", "-")

    def _value_of(self, flag: str) -> Any:
        key = flag.lstrip("-").split("/")[0].replace("-", "_")
        return getattr(self, "datasets" if key == "dataset" else key, "?")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_output(name: str) -> str:
    """``saves/<name>`` (lower case, spaces as dashes); a name that cannot be a folder's is refused, naming --output."""
    slug = name.strip().lower().replace(" ", "-")
    if not slug:
        return TrainConfig.output  # an empty --name: validate() names it
    if "/" in slug or "\\" in slug or slug.startswith(".") or len(slug.encode()) > 200:
        raise ApplianceError(f"--name {name}: cannot name the default --output folder (saves/<name>: no / or \\, no "
                             "leading dot, at most ~60 Chinese or ~200 Latin characters); give --output")
    return f"saves/{slug}"


def flag_help(key: str, text: str = "", note: str = "") -> str:
    """A ``train`` flag's help ending in ``[default: X]``, X read from :class:`TrainConfig` so it cannot drift
    (the flags themselves default to None: a --config file may set the option)."""
    value = getattr(TrainConfig(), key)
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, list):
        shown = ",".join(value)
    else:
        shown = f"{value:g}" if isinstance(value, float) else value
    return f"{text} [default: {shown}{note}]".strip()


def _did_you_mean(unknown: list[str], known: set[str]) -> str:
    """`` (did you mean lr?)`` for a misspelt key (``LR``, ``epoch``): the full list of keys is long to scan."""
    import difflib

    close = [m[0] for k in unknown if (m := difflib.get_close_matches(k.lower(), sorted(known), n=1, cutoff=0.75))]
    return f" (did you mean {', '.join(dict.fromkeys(close))}?)" if close else ""


# transformers' schedulers that need no extra arguments
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class _Plain(str):
    """A plain (unquoted) YAML scalar that YAML 1.1 read as something else: its value, and the text as written."""

    value: Any


def _coerce(key: str, value: Any, default: Any, where: str, text: bool = False) -> Any:
    """``value`` as the type of the option's default (YAML reads ``1e-3`` as a string, ``no`` may be quoted).
    ``text``: a string option, which takes a plain scalar as written (``name: 007`` is "007", not 7)."""
    written = value
    if isinstance(value, _Plain):
        if text and not isinstance(value.value, bool):
            return str(value)
        # a number as written, in decimal (YAML 1.1 reads seed: 010 as octal 8; YAML 1.2 and people read 10)
        value = value.value if isinstance(value.value, bool) else _decimal(value, value.value)

    def bad(kind: str) -> ApplianceError:
        quote = f"; quote it (\"{written}\") if that is the {key}" if text and isinstance(value, bool) else ""
        return ApplianceError(f"{where}{key} must be {kind} (got {value!r}){quote}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # as "1" and "0" are
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true or false")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or isinstance(value, (list, dict)) or value is None:
            raise bad("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if isinstance(default, float):
            return number
        if not number.is_integer():
            raise bad("a whole number")
        return value if isinstance(value, int) else int(number)  # a big int exactly, not through a float
    if isinstance(default, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise bad("a list of names or paths")
        return [x.strip() for x in items if x.strip()]
    if key == "target_modules" and isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        return ",".join(value)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad("a string")
    return str(value)


def _decimal(text: str, otherwise: Any) -> Any:
    """``text`` read as a decimal number (an int when it is one: exact beyond 2**53), else ``otherwise``."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return otherwise


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    from appliance import paths

    p = paths.resolve_user_path(path)  # the current directory, then $APPLIANCE_HOME, as the paths inside it
    if p.is_dir():
        raise ApplianceError(f"--config {path}: is a folder; give the YAML file, e.g. --config run.yaml")
    if not p.is_file():
        raise ApplianceError(f"--config {path}: file not found{paths.looked_in(path)}; check the path")
    try:
        text = p.read_text(encoding="utf-8-sig")
        data = yaml.safe_load(text)
        data = {} if data is None else data  # an empty file (or only comments): no settings; [] or 0 is refused below
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_repeated_keys(path, root)
    except UnicodeDecodeError:
        raise ApplianceError(f"--config {path}: not UTF-8 text; save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ApplianceError(f"--config {path}:{line}: invalid YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise ApplianceError(f"--config {path}: must be a mapping of option: value")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ApplianceError(f"--config {path}: option names must be words, got {bad[0]!r}")
    return {k.replace("-", "_"): v for k, v in _as_written(data, root).items()}


def _as_written(data: dict[str, Any], node: Any) -> dict[str, Any]:
    """``data`` with each plain scalar that YAML 1.1 turned into a number, a boolean or a date wrapped as
    :class:`_Plain`, so that options can read it as written (``name: 007``, ``author: 2024-01-01``, ``seed: 010``)."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return data
    out = dict(data)
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if (name in out and isinstance(value, yaml.ScalarNode) and value.style is None
                and value.tag not in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:null")):
            plain = _Plain(value.value)
            plain.value = out[name]
            out[name] = plain
    return out


def _refuse_repeated_keys(path: str, node: Any) -> None:
    """An option given twice (``epochs: 2`` then ``epochs: 3``, or ``batch-size`` and ``batch_size``): YAML
    keeps the last without a word, and which one the user meant is not known."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        name, line = str(key.value).replace("-", "_"), key.start_mark.line + 1
        if name in seen:
            raise ApplianceError(f"--config {path}: line {line}: '{key.value}' sets {name} again (first on line "
                                 f"{seen[name]}); keep one of them")
        seen[name] = line
