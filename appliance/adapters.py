"""LoRA adapters for serving: what vLLM can serve (checked before it starts) and the runtime
``list`` / ``load`` / ``unload`` calls against a running server.

vLLM serves plain LoRA on linear layers only; DoRA, trained biases, ``modules_to_save`` and
embedding / lm_head weights have to be merged into the base instead (``appliance merge``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance import paths
from appliance.datafiles import bad_char
from appliance.errors import ApplianceError
from appliance.guard import is_allowed, real
from appliance.urls import server_url

# the values vLLM 0.32 accepts for --max-lora-rank
SUPPORTED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_URL = "http://127.0.0.1:8000"
_EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out")


@dataclass
class AdapterInfo:
    """A checked adapter directory and the base model it was trained on."""

    name: str
    path: str  # absolute, symlinks resolved
    rank: int
    base_path: str | None = None
    base_name: str | None = None
    base_hf_id: str | None = None
    target_modules: list[str] = field(default_factory=list)
    method: str | None = None  # "lora" / "qlora", as its appliance.json records (None: trained elsewhere)


def parse_spec(spec: str) -> tuple[str | None, str]:
    """``--adapter`` value: ``path`` or ``name=path`` (a name never contains a slash)."""
    name, sep, path = spec.partition("=")
    if sep and name.strip() and "/" not in name and path.strip():
        check_name(name, f"--adapter {spec}")
        return name, path
    if sep and "/" in name and not name.startswith(("/", "~", ".")) and path.strip() \
            and not Path(paths.resolve_user_path(spec)).exists():
        # a path with '=' in it, or a name with '/': neither is there, so say both
        raise ApplianceError(f"--adapter {spec}: directory not found, and an adapter name cannot hold '/' (so it was "
                             f"read as a path); give name=path with a name without '/' (e.g. "
                             f"{name.replace('/', '-').strip()}={path}), or an existing directory")
    if sep and "/" not in name and not Path(paths.resolve_user_path(spec)).exists():
        # "=saves/a1" or "x=": a name=path with a part left out, not a folder named so
        if not name.strip():
            raise ApplianceError(f"--adapter {spec}: empty name before '='; give name=path (e.g. archer=saves/archer), "
                                 "or the path alone to serve it under its folder's name")
        raise ApplianceError(f"--adapter {spec}: empty path after '='; give name=path (e.g. {name.strip()}=saves/{name.strip()})")
    return None, spec


def check_name(name: str, what: str) -> None:
    """An adapter name to send to the server: not blank, and text that can be sent (UTF-8)."""
    if not name.strip():
        raise ApplianceError(f"{what}: NAME is empty; give the name the adapter is served under (e.g. archer)")
    if why := bad_char(name, typed=True):
        raise ApplianceError(f"{what}: NAME contains {why}; give a name in plain UTF-8 text (e.g. archer)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):  # a line break in a name splits every listing it is in
        raise ApplianceError(f"{what}: NAME {name!r} holds a control character (a line break?); give a name on one line")


def check_new_name(name: str, what: str) -> None:
    """A name to load an adapter under: as :func:`check_name`, and without '/', as `up --adapter name=dir` needs."""
    check_name(name, what)
    if "/" in name:
        raise ApplianceError(f"{what}: NAME {name!r} holds '/', which `up --adapter name=dir` cannot give a name; "
                             f"give a name without '/' (e.g. {name.replace('/', '-')})")


def servable_rank(rank: int, flag: str = "--adapter") -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    for r in SUPPORTED_RANKS:
        if rank <= r:
            return r
    raise ApplianceError(f"{flag}: LoRA rank {rank} exceeds vLLM's maximum servable rank {SUPPORTED_RANKS[-1]}; "
                         f"retrain with a smaller --lora-rank or `appliance merge` it and serve the merged model")


def adapter_dir(path: str | Path, flag: str) -> Path:
    """``path`` resolved as a user path (the current directory, else $APPLIANCE_HOME); a missing one names
    the places looked in, before anything else is said about it."""
    fix = "pass the --output directory of `appliance train` (e.g. saves/archer)"
    if not str(path).strip():  # "" would name the current directory
        raise ApplianceError(f"{flag} is empty; {fix}")
    d = Path(paths.resolve_user_path(path))
    if not d.exists():
        raise ApplianceError(f"{flag} {path}: directory not found{paths.looked_in(path)}; {fix}")
    if not d.is_dir():
        raise ApplianceError(f"{flag} {path}: is a file, not a directory; {fix}")
    return d


def inspect_adapter(path: str | Path, name: str | None = None, flag: str = "--adapter") -> AdapterInfo:
    """Check that ``path`` is a PEFT LoRA adapter vLLM can serve, and read its base model."""
    d = adapter_dir(path, flag)
    if not (d / "adapter_config.json").is_file():
        if (d / "config.json").is_file():  # a whole model (a merged one): served on its own, not as an adapter
            fix = f"it is a model: serve it with `appliance up --model {path}{' --no-lora' if flag == '--adapter' else ''}`"
        else:
            fix = "point it at an `appliance train` output"
        raise ApplianceError(f"{flag} {path}: no adapter_config.json, so it is not a PEFT adapter; {fix}")
    cfg = read_adapter_config(d)
    if not any((d / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")):
        # vLLM finds this out ~30 s into a start ("doesn't contain tensors"), or answers a runtime load with a 500
        raise ApplianceError(f"{flag} {path}: no adapter_model.safetensors (an unfinished or copied-in-part run?); "
                             "pass the --output directory of a finished `appliance train`")
    if cfg.get("peft_type") != "LORA":
        raise ApplianceError(f"{flag} {path}: peft_type is {cfg.get('peft_type')!r}, vLLM serves only LORA adapters")
    merge_hint = f"run `appliance merge --adapter {path}` and serve the merged model with `appliance up --model`"
    if cfg.get("use_dora"):
        raise ApplianceError(f"{flag} {path}: DoRA adapters (use_dora) cannot be served by vLLM; {merge_hint}")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise ApplianceError(f"{flag} {path}: adapter trains biases (bias={cfg.get('bias')!r}), which vLLM cannot serve; {merge_hint}")
    if cfg.get("modules_to_save"):
        raise ApplianceError(f"{flag} {path}: adapter has modules_to_save {cfg['modules_to_save']}, which vLLM cannot serve; {merge_hint}")
    if cfg.get("trainable_token_indices"):
        raise ApplianceError(f"{flag} {path}: adapter trains token embeddings (trainable_token_indices), which vLLM cannot serve; {merge_hint}")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    embedded = [t for t in targets + _weight_names(d) if any(m in t for m in _EMBEDDING_MODULES)]
    if embedded:
        raise ApplianceError(f"{flag} {path}: adapter holds embedding / lm_head weights ({embedded[0]}), which vLLM cannot serve; {merge_hint}")
    ranks = [int(cfg.get("r") or 0), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    info = AdapterInfo(name=name or d.resolve().name, path=real(str(d)), rank=max(ranks), target_modules=targets)
    servable_rank(info.rank, flag=f"{flag} {path}")
    _read_base(d, cfg, info)
    return info


def read_adapter_config(d: Path) -> dict:
    """``d/adapter_config.json`` as a dict, with a one-line error naming the file when it is not one."""
    cfg_file = d / "adapter_config.json"
    cfg = paths.read_json(cfg_file, "re-run `appliance train`")
    if not isinstance(cfg, dict) or not cfg.get("peft_type"):
        raise ApplianceError(f"{cfg_file}: has no peft_type, so it is not a PEFT adapter config; re-run `appliance train`")
    return cfg


def _weight_names(d: Path) -> list[str]:
    """Tensor names in the adapter's safetensors file (header only; nothing is loaded)."""
    f = d / "adapter_model.safetensors"
    if not f.is_file():
        return []
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="pt") as st:
            return list(st.keys())
    except Exception as e:  # a truncated or foreign file
        raise ApplianceError(f"{f}: cannot read the LoRA weights ({type(e).__name__}); re-run `appliance train`")


def _read_base(d: Path, cfg: dict, info: AdapterInfo) -> None:
    from appliance import rundir

    base = {}
    if (d / rundir.META_FILE).is_file():
        meta = rundir.read_meta(d)
        base, method = meta.get("base_model") or {}, meta.get("method")
        info.method = method if isinstance(method, str) else None
    if base:
        info.base_path, info.base_name, info.base_hf_id = base.get("path"), base.get("name"), base.get("hf_id")
        return
    # an adapter trained elsewhere: PEFT records a path or a hub id
    ref = cfg.get("base_model_name_or_path")
    if ref and (Path(ref).is_dir() or ref.startswith(("/", ".", "~"))):
        info.base_path = ref
    elif ref:
        info.base_hf_id = ref


def same_base(info: AdapterInfo, path: str | None, names: set[str], hf_id: str | None) -> bool:
    """Whether ``info`` was trained on the served model (same directory, registry name or hub id).

    A base folder still on this machine whose config differs from the served one's (another architecture or
    size) is another model, whatever the names say: a local folder's name is only its folder's name."""
    if info.base_path and path and Path(info.base_path).exists():
        if real(info.base_path) == real(path):
            return True
        if shapes_differ(Path(info.base_path), Path(path)):
            return False
    if info.base_name and info.base_name.lower() in {n.lower() for n in names}:
        return True
    if info.base_hf_id and hf_id and info.base_hf_id.lower() == hf_id.lower():
        return True
    return False


_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "vocab_size")


def shapes_differ(a: Path, b: Path) -> bool:
    """Both folders' config.json readable and some size or the model type differs (unknown: False)."""
    import json

    try:
        ca, cb = (json.loads((d / "config.json").read_text(encoding="utf-8")) for d in (a, b))
    except (OSError, ValueError):
        return False
    if not isinstance(ca, dict) or not isinstance(cb, dict):
        return False
    return any(k in ca and k in cb and ca[k] != cb[k] for k in _SHAPE_KEYS)


def fits(adapter: str | Path, model: str | Path) -> tuple[bool | None, str]:
    """Whether every LoRA weight of ``adapter`` sits on a linear layer of the local ``model`` with the same
    sizes (True / False and why), or None when that cannot be told (no config.json, an architecture
    transformers cannot build). Read from the safetensors header and a meta-device skeleton: nothing loads."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    f = Path(adapter) / "adapter_model.safetensors"
    try:
        mcfg = AutoConfig.from_pretrained(str(model))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(mcfg)
        with safe_open(str(f), framework="pt") as st:
            shapes = {k: st.get_slice(k).get_shape() for k in st.keys()}
    except (OSError, ValueError, KeyError, ImportError, RuntimeError):  # ValueError: a config.json not JSON too
        return None, ""
    for key, shape in sorted(shapes.items()):
        for part, dim, attr in ((".lora_A.", 1, "in_features"), (".lora_B.", 0, "out_features")):
            if part not in key or len(shape) != 2:
                continue
            where = key.split(part)[0].removeprefix("base_model.model.")
            try:
                layer = skeleton.get_submodule(where)
            except AttributeError:
                return False, f"the model has no layer {where}"
            size = getattr(layer, attr, None)
            if size != shape[dim]:
                return False, f"{where} has {attr} {size}, the adapter's {key} expects {shape[dim]}"
    return True, ""


# ---------------------------------------------------------------- runtime (a running server)
def _client(url: str, api_key: str | None):
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=server_url(url), headers=headers, timeout=120)


def unauthorized(what: str, key_sent: bool) -> ApplianceError:
    """A 401: a key that was sent is wrong; without one the server wants one."""
    if key_sent:
        return ApplianceError(f"{what}: the server rejected the API key; check --api-key (without it: $APPLIANCE_API_KEY, "
                              "else $OPENAI_API_KEY) against the key the server was started with")
    return ApplianceError(f"{what}: the server wants an API key; pass --api-key (or set APPLIANCE_API_KEY)")


def no_server(url: str, e: Exception | None = None) -> ApplianceError:
    """Nothing answers at ``url``; a record of a server that died there says so, and how to clear it."""
    from appliance.servers import find_record, is_alive

    why = f" ({type(e).__name__})" if e is not None else ""
    try:
        rec = find_record(server_url(url))
    except ApplianceError:
        rec = None
    if rec is not None and not is_alive(rec):
        return ApplianceError(f"--url {url}: no server answers{why}; the server recorded on port {rec.port} is not "
                              f"running: start one with `appliance up`, and `appliance down --port {rec.port}` clears "
                              "its record")
    return ApplianceError(f"--url {url}: no server answers{why}; start one with `appliance up`")


def not_openai(url: str, status: int, request: str, what: str = "") -> ApplianceError:
    """An error page that is not JSON (a web server's HTML): its text is no use to the user, the URL is wrong."""
    return ApplianceError(f"--url {url}: the server there does not answer like an OpenAI-compatible one (HTTP {status} "
                          f"on {request}){what}; check --url: point it at a server started by `appliance up`")


def json_body(text: str) -> object | None:
    """``text`` parsed as JSON, or None when it is not (an HTML error page)."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return None


def error_message(body: object) -> str | None:
    """vLLM's message in a JSON error (``{"error": {"message": ...}}``, ``{"message": ...}``), else None."""
    if not isinstance(body, dict):
        return None
    err = body.get("error", body)
    msg = err.get("message") if isinstance(err, dict) else err
    return msg if isinstance(msg, str) and msg else None


def _request_line(resp) -> str:
    """``POST /v1/load_lora_adapter``: what was asked, as the error names it."""
    try:
        return f"{resp.request.method} {resp.request.url.path}"
    except RuntimeError:  # a response made without a request (tests)
        return "the request"


def _check(resp, what: str, key_sent: bool = False, url: str | None = None, runtime: bool = False) -> None:
    if resp.status_code == 401:
        raise unauthorized(what, key_sent)
    if resp.status_code >= 400:
        body = json_body(resp.text)
        if url is not None and not isinstance(body, (dict, list)):
            raise not_openai(url, resp.status_code, _request_line(resp),
                             ", so it does not support runtime LoRA loading" if runtime else "")
        msg = error_message(body) or resp.text
        raise ApplianceError(f"{what}: server answered {resp.status_code}: {' '.join(str(msg).split())[:300]}")


def _check_runtime(resp, what: str, url: str, key_sent: bool = False) -> None:
    """``_check`` for the runtime-LoRA endpoints, whose 404 means one of two things."""
    if resp.status_code == 404 and isinstance(json_body(resp.text), dict) and "cannot be found" not in resp.text:
        # the route itself is missing (FastAPI's {"detail": "Not Found"}): vLLM mounts it only with LoRA and
        # runtime updating on
        raise ApplianceError(f"{what}: the server at {url} does not take adapters at runtime (started with --no-lora, "
                             "or not by `appliance up`, without VLLM_ALLOW_RUNTIME_LORA_UPDATING=true); "
                             "restart it with `appliance up --adapter ...`")
    if resp.status_code == 404 and "cannot be found" in resp.text:
        raise ApplianceError(f"{what}: the server at {url} has no adapter by that name; "
                             "`appliance adapters list` shows the loaded ones")
    _check(resp, what, key_sent, url=url, runtime=True)


def list_served(url: str = DEFAULT_URL, api_key: str | None = None) -> list[dict]:
    """The server's ``/v1/models`` entries (base models have ``parent`` None)."""
    import httpx

    try:
        with _client(url, api_key) as c:
            resp = c.get("/v1/models")
    except httpx.HTTPError as e:
        raise no_server(url, e) from None
    _check(resp, f"GET {url}/v1/models", key_sent=bool(api_key), url=url)
    try:
        data = resp.json().get("data", [])
        if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
            raise ValueError
    except (ValueError, AttributeError):  # not JSON, or not a model list: some other web server
        raise ApplianceError(f"--url {url}: the server there does not answer like an OpenAI-compatible one "
                             "(GET /v1/models is not a model list); point --url at a server started by `appliance up`")
    return data


ServedBase = tuple[str, set[str], str | None]  # the served model's path (or hub id), names and hub id


def load(name: str, path: str, url: str = DEFAULT_URL, api_key: str | None = None,
         roots: list[str] | None = None, max_rank: int | None = None,
         served_base: ServedBase | None = None, recorded: bool = True) -> AdapterInfo:
    """Load an adapter into a running server under ``name``; refuses paths outside ``roots``.

    ``recorded`` False: the server was not started here, so its base comes from its ``/v1/models``."""
    import httpx

    check_new_name(name, "adapters load")
    if max_rank == 0:  # whatever the adapter, this server cannot take one
        raise ApplianceError(f"adapters load {path}: the server at {url} was started without LoRA support (--no-lora); "
                             "restart it with `appliance up` without --no-lora to load adapters")
    allowed = roots if roots is not None else [str(paths.saves_dir())]
    target = real(str(adapter_dir(path, "adapters load")))
    if not is_allowed(target, allowed):  # before reading anything there
        # a server started elsewhere has no record of its roots: this command's own flag stands for them
        fix = "restart `appliance up` with --adapter-root" if recorded else \
            f"pass --adapter-root {Path(target).parent} (the server at {url} was not started by `appliance up` here)"
        raise ApplianceError(f"adapters load {path}: {target} is outside the allowed adapter roots "
                             f"({', '.join(allowed)}); move it under saves/ or {fix}")
    if why := bad_char(target, typed=True):  # sent as JSON, it would not name the folder on the server's side
        raise ApplianceError(f"adapters load {path}: the path contains {why}; rename the folder to a UTF-8 name")
    info = inspect_adapter(target, name=name, flag="adapters load")
    if not recorded and served_base is None and (info.base_path or info.base_name or info.base_hf_id):
        served_base = _listed_base(url, api_key)
    # served_base: the served model's path, names and hub id (an adapter trained elsewhere records only the hub id)
    if served_base and (info.base_path or info.base_name or info.base_hf_id) and \
            not same_base(info, *served_base):
        # the check `appliance up` makes: an adapter of another base would load and answer nonsense
        trained = info.base_name or info.base_hf_id or info.base_path
        raise ApplianceError(f"adapters load {path}: trained on '{trained}' but the server at {url} serves "
                             f"'{served_base[0]}'; load it into a server of its base")
    if max_rank is not None and info.rank > max_rank:
        raise ApplianceError(f"adapters load {path}: rank {info.rank} exceeds the server's --max-lora-rank {max_rank}; "
                             f"restart `appliance up` with `-- --max-lora-rank {servable_rank(info.rank)}`")
    try:
        with _client(url, api_key) as c:
            resp = c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": info.path})
    except httpx.HTTPError as e:
        raise no_server(url, e) from None
    if resp.status_code == 400 and "already been loaded" in resp.text:  # vLLM's hint (load_inplace) is not ours to give
        raise ApplianceError(f"adapters load {name}: the server at {url} already has an adapter named '{name}'; "
                             f"unload it first with `appliance adapters unload {name}`, or use another name")
    if 400 <= resp.status_code < 500 and _is_base(name, url, api_key):
        raise ApplianceError(f"adapters load {name}: '{name}' is the name of the base model the server at {url} serves; "
                             f"load the adapter under another NAME")
    _check_runtime(resp, f"adapters load {name}", url, key_sent=bool(api_key))
    return info


def unload(name: str, url: str = DEFAULT_URL, api_key: str | None = None) -> None:
    """Remove adapter ``name`` from a running server."""
    import httpx

    check_name(name, "adapters unload")
    try:
        with _client(url, api_key) as c:
            resp = c.post("/v1/unload_lora_adapter", json={"lora_name": name})
    except httpx.HTTPError as e:
        raise no_server(url, e) from None
    if resp.status_code == 404 and "cannot be found" in resp.text and _is_base(name, url, api_key):
        raise ApplianceError(f"adapters unload {name}: '{name}' is the base model of the server at {url}, which cannot "
                             "be unloaded (only adapters can); `appliance adapters list` shows the adapters")
    _check_runtime(resp, f"adapters unload {name}", url, key_sent=bool(api_key))


def _is_base(name: str, url: str, api_key: str | None) -> bool:
    """Whether ``name`` is a base model (no parent) the server lists."""
    try:
        return any(m["id"] == name and not m.get("parent") for m in list_served(url, api_key))
    except ApplianceError:  # then the server's own answer is all there is to say
        return False


def _listed_base(url: str, api_key: str | None) -> ServedBase | None:
    """:func:`served_base_of` the server's listing; None when it cannot be read (the load's own answer will say why)."""
    try:
        return served_base_of(list_served(url, api_key))
    except ApplianceError:
        return None


def served_base_of(entries: list[dict]) -> ServedBase | None:
    """The base model in a ``/v1/models`` listing, as a server's record gives it: vLLM's ``root`` (the folder or hub
    id it loaded), its served names and its hub id; None when the listing does not tell (no root, several bases)."""
    from appliance import models

    bases = [m for m in entries if not m.get("parent")]
    roots = {m.get("root") if isinstance(m.get("root"), str) else None for m in bases}
    root = roots.pop() if len(roots) == 1 else None
    if not isinstance(root, str) or not root.strip():
        return None
    known = models.registry_name(root) or models.pulled_registry_name(root)  # a hub id, or a `models pull` folder
    local = root.startswith(("/", ".", "~")) or Path(root).is_dir()
    hf_id = (models.registry()[known].get("hf_id") if known else None) or (None if local else root)
    return root, {str(m["id"]) for m in bases} | ({known} if known else set()), hf_id


def load_checked(name: str, path: str, url: str | None = None, api_key: str | None = None,
                 extra_roots: list[str] | None = None) -> AdapterInfo:
    """``adapters load``: the roots and rank limit come from the server's record when it was started here; the
    base it serves from that record, else from its ``/v1/models``."""
    from appliance.chat import default_url
    from appliance.servers import find_record

    check_new_name(name, "adapters load")  # before the default URL, which may be an error of its own
    url = url or default_url()  # the only recorded server; several: the user must pick one
    rec = find_record(server_url(url))
    roots = (rec.adapter_roots if rec else [str(paths.saves_dir())]) + list(extra_roots or [])
    served = (rec.model, set(rec.models[:1]) | set(rec.base_names), rec.base_hf_id) if rec else None
    return load(name, path, url=url, api_key=api_key, roots=roots, max_rank=rec.max_lora_rank if rec else None,
                served_base=served, recorded=rec is not None)
