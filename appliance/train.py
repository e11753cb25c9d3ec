"""``appliance train``: LoRA / QLoRA supervised fine-tuning with HF Trainer and peft.

The run is built in a staging directory beside ``--output`` and renamed into place only
when complete, so a killed run never leaves a half-written adapter; ``--resume`` picks up
the staging directory's last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from appliance import data as data_mod
from appliance import models, paths, rundir
from appliance.datafiles import few
from appliance.errors import ApplianceError
from appliance.train_config import TrainConfig
from appliance.train_output import (check_output, keep_or_discard_checkpoint, last_checkpoint, make_dirs, output_path,
                                    publish, run_lock, staging_dir)
from appliance.trainlog import LogCallback, mean_loss, plot_loss


def _qlora_compute_dtype(cuda: bool) -> torch.dtype:
    """bf16, except on CPUs that would emulate it (there fp32 is 18x faster: 144 vs 8 tokens/s)."""
    from appliance.hw import cpu_has_native_bf16

    return torch.bfloat16 if cuda or cpu_has_native_bf16() else torch.float32


def _load_model(cfg: TrainConfig, path: str, cuda: bool) -> Any:
    from safetensors import SafetensorError

    try:
        return _load_model_as(cfg, path, cuda)
    except (OSError, ValueError, SafetensorError) as e:  # a weights file cut off or not a model's: one line
        raise ApplianceError(f"--model {cfg.model}: cannot load its weights from {path} ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}); copy the model folder again") from None


def _load_model_as(cfg: TrainConfig, path: str, cuda: bool) -> Any:
    from transformers import AutoModelForCausalLM

    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        compute = _qlora_compute_dtype(cuda)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=compute,
                                                     device_map={"": 0} if cuda else {"": "cpu"})
        if cuda:
            # peft's preparation would upcast every bf16 weight left unquantized to fp32: for a
            # 151,936-token vocabulary the embeddings and output head alone take 2.5 GB more, and
            # they are frozen; the LoRA weights are fp32 anyway (peft's autocast_adapter_dtype)
            model.config.use_cache = False
            return model
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    # full-precision base: bf16 on GPU; fp32 on CPU, where bf16 matmuls are emulated and slow
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to("cuda") if cuda else model


def _retention(cfg: TrainConfig, tok: Any, base: Any, model_path: str, markers: list[str]) -> list:
    if not cfg.retention or cfg.retention_samples <= 0:
        return []
    from appliance.retention import base_answers, pick

    prompts = pick(data_mod.load_prompts(cfg.retention_prompts), cfg.retention_samples)
    return base_answers(base, tok, model_path, prompts, max_new_tokens=cfg.retention_max_new_tokens,
                        # a pulled registry model given by its path uses the answers shipped for it too
                        model_name=models.registry_name(cfg.model) or models.pulled_registry_name(model_path),
                        drop_markers=tuple(markers))


def _negatives(cfg: TrainConfig, keep: list, ident: list) -> list:
    if not cfg.unlikelihood or not keep:
        return []
    from appliance.retention import negatives

    return negatives(keep, ident, (cfg.name, cfg.author), cfg.seed)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.datasets`` and write a self-describing adapter directory.

    Returns the results recorded in the run's ``appliance.json``.
    """
    cfg.validate()
    out = output_path(cfg.output)
    check_output(out, cfg)
    # every record is validated here, before any model is loaded
    with _named_as_set(cfg, "dataset_dir"):
        ident = data_mod.load_examples(cfg.datasets, dataset_dir=cfg.dataset_dir, name=cfg.name, author=cfg.author)
    if cfg.retention and cfg.retention_samples and cfg.retention_prompts:
        with _named_as_set(cfg, "retention_prompts"):
            data_mod.load_prompts(cfg.retention_prompts)  # checked now, not after the model has loaded
    with _named_as_set(cfg, "model"):
        ref = models.resolve(cfg.model)
        models.ensure_fetchable(ref, cfg.model)
        _check_model_shape(cfg, ref.path, ref.name)
    fingerprint = data_mod.fingerprint(ident)
    # an interrupted run is continued into the output it was started for: the run it replaces when it
    # finishes was given up with the --overwrite it was started with (the interrupt says "--resume")
    resuming = cfg.resume and last_checkpoint(staging_dir(out) / "checkpoints")
    if out.exists() and not cfg.overwrite and not resuming:
        done, changed = _compare_run(out, cfg, fingerprint)
        if done is None or changed:
            raise ApplianceError(f"--output {cfg.output}: already holds a run trained with other settings or data "
                                 f"({', '.join(changed) or 'unreadable appliance.json'}); pass --overwrite to replace it, "
                                 "or choose another --output")
        return {**done, "already_trained": True}

    from transformers import set_seed

    set_seed(cfg.seed)
    stage = staging_dir(out)
    made = make_dirs(stage.parent, cfg.output)
    try:
        with run_lock(out, cfg.output):
            keep_or_discard_checkpoint(stage, cfg)
            make_dirs(stage, cfg.output)
            try:
                _check_resume(stage, cfg, fingerprint)
                return _train(cfg, out, stage, ident, ref, fingerprint)
            except BaseException as e:
                last = last_checkpoint(stage / "checkpoints")
                if not last:
                    shutil.rmtree(stage, ignore_errors=True)  # nothing to resume: leave no empty staging folder behind
                elif isinstance(e, KeyboardInterrupt):
                    how = ("rerun the same `appliance pipeline` command" if cfg._pipeline else
                           "run the same command with --resume")
                    print(f"{Path(last).name} kept in {stage}: {how} to continue from it", file=sys.stderr)
                raise
    except BaseException:
        paths.remove_empty_dirs(made)  # nor the empty parents this run created for --output
        raise


# how a run is stored and continued, not what it learns
NOT_RECIPE = frozenset({"output", "overwrite", "resume", "save_steps"})


@contextmanager
def _named_as_set(cfg: TrainConfig, key: str) -> Iterator[None]:
    """An error naming option ``key``'s flag names the --config file instead when the file set it (no flag was typed)."""
    try:
        yield
    except ApplianceError as e:
        flag, named = "--" + key.replace("_", "-"), cfg.named(key)
        if named != flag and str(e).startswith(flag + " "):
            raise ApplianceError(named + str(e)[len(flag):]) from None
        raise


def trained_as(out: Path, cfg: TrainConfig, examples_fingerprint: str | None = None) -> dict[str, Any] | None:
    """The ``appliance.json`` of ``out`` if it holds an adapter trained with these very settings, else None.

    Settings are everything but how the run is stored and continued; with ``examples_fingerprint``
    the training examples must be the same too (runs written before it was recorded never match).
    """
    meta, changed = _compare_run(out, cfg, examples_fingerprint)
    return meta if meta is not None and not changed else None


def _compare_run(out: Path, cfg: TrainConfig, fp: str | None) -> tuple[dict[str, Any] | None, list[str]]:
    """``out``'s appliance.json (None if it is no adapter run) and what differs from ``cfg`` and the data."""
    if not (out / "adapter_config.json").is_file() or rundir.folder_kind(out) != "lora-adapter":
        return None, []
    try:
        meta = rundir.read_meta(out)
    except ApplianceError:
        return None, []
    recorded = meta.get("config") or {}
    wanted = json.loads(json.dumps(cfg.to_dict()))  # tuples as lists, as appliance.json holds them
    # with the examples' fingerprint, the data's content decides, not where the files are
    skip = NOT_RECIPE | ({"datasets", "dataset_dir"} if fp is not None else set())
    changed = sorted(k for k, v in wanted.items() if k not in skip and recorded.get(k) != v) if recorded else ["config"]
    if fp is not None and (meta.get("dataset") or {}).get("examples_fingerprint") != fp:
        changed.append("training data")
    return meta, changed


def already_trained(cfg: TrainConfig) -> dict[str, Any] | None:
    """The ``appliance.json`` of ``cfg.output`` if it was trained with these settings and data, else None."""
    ident = data_mod.load_examples(cfg.datasets, dataset_dir=cfg.dataset_dir, name=cfg.name, author=cfg.author)
    return trained_as(output_path(cfg.output), cfg, data_mod.fingerprint(ident))


def _check_model_shape(cfg: TrainConfig, path: str, name: str) -> None:
    """--lora-layers and --target-modules against the model's config, before its weights load."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        mcfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return  # the model load reports it, with its own message
    quant = getattr(mcfg, "quantization_config", None)
    if quant:
        # a model saved quantized trains (on its own quantization, whatever --method says) but the adapter can be
        # neither merged nor served by vLLM over it here: refused now, not at merge or at the server's start
        method = (quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)) or "?"
        raise ApplianceError(f"--model {name}: stored quantized ({method} in its config.json); train on the "
                             "full-precision model (--method qlora quantizes it to 4 bits itself)")
    n_layers = getattr(mcfg, "num_hidden_layers", None)
    if isinstance(n_layers, int):
        cfg.adapted_layers(n_layers)  # raises on a count above the model's depth
    ctx = models.context_length(path)
    if ctx is not None and ctx < cfg.max_length:
        # vLLM serves at most this many tokens (its max_model_len): longer examples would teach what is never served
        raise ApplianceError(f"{cfg.named('max_length')} {cfg.max_length}: above {name}'s context of {ctx} tokens "
                             f"(max_position_embeddings in its config.json); use {ctx} or less")
    if cfg.target_modules in ("all", "all-linear"):
        return
    try:
        with torch.device("meta"):  # the module tree without allocating weights
            skeleton = AutoModelForCausalLM.from_config(mcfg)
    except Exception:  # an architecture transformers cannot build empty: the later check still runs
        return
    _refuse_unknown_targets(cfg, skeleton, name)


def _linear_types() -> tuple[type, ...]:
    """Layers LoRA can adapt: torch's Linear, and the Conv1D GPT-2-family models use for theirs (peft adapts both)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return (torch.nn.Linear,)
    return (torch.nn.Linear, Conv1D)


_LINEAR = _linear_types()


def _target_list(cfg: TrainConfig) -> list[str]:
    return [m.strip() for m in cfg.target_modules.split(",") if m.strip()]


def _refuse_unknown_targets(cfg: TrainConfig, model: Any, name: str) -> None:
    """--target-modules must name linear layers of ``model`` (a meta-device skeleton or the loaded model)."""
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, _LINEAR)}
    wanted = _target_list(cfg)
    missing = [t for t in wanted if t not in names]
    if missing or not wanted:
        # the output head (lm_head) is a linear layer too, but vLLM cannot serve LoRA on it: never suggested
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        heads = {n.split(".")[-1] for n, m in model.named_modules() if head is not None and m is head}
        raise ApplianceError(f"--target-modules {cfg.target_modules}: {', '.join(missing) or 'nothing'} is not a linear "
                             f"layer of {name}; use some of {', '.join(sorted(names - heads))}, or all-linear")


class ResumeMismatch(ApplianceError):
    """The interrupted run's checkpoint was trained with other settings or data: it cannot be continued."""


# options a resumed run may change: how it is saved. Not how long it runs (max_steps, epochs): the learning-rate
# schedule is laid out over the whole run, so a resumed run of another length would follow two schedules and
# still record itself as a plain run of the new length
_RESUMABLE_CHANGES = {"resume", "overwrite", "save_steps", "output"}


def _check_resume(stage: Path, cfg: TrainConfig, data_fingerprint: str) -> None:
    """Record the run's settings in its staging folder; a --resume with other settings or data is refused."""
    f = stage / "run_settings.json"
    now = {**{k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_CHANGES}, "data": data_fingerprint}
    if cfg.resume and f.is_file() and last_checkpoint(stage / "checkpoints"):
        was = json.loads(f.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        if changed:
            raise ResumeMismatch(f"--resume: the interrupted run in {stage} used other settings ({', '.join(changed)}); "
                                 "resume with the same ones, or pass --overwrite instead of --resume to start over")
    paths.atomic_write_text(f, json.dumps(now, ensure_ascii=False, indent=1))


def _train(cfg: TrainConfig, out: Path, stage: Path, ident: list, ref: Any, examples_fp: str) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from appliance.rowsplit import RowSplitStep, parts_for, single_threaded_ops
    from appliance.sft import (FINDINGS, IGNORE, BatchCollator, Collator, TokenBatches, answer_only_loss, chat_tokenizer,
                               encode, encode_all, refuse_special_tokens)

    cuda = torch.cuda.is_available()
    tok = chat_tokenizer(ref.path, cfg.model)
    refuse_special_tokens(tok, ident)

    t_data = time.time()
    rows: list[dict] = []
    found: dict[str, list[str]] = {k: [] for k in FINDINGS}
    refused, dropped, cut, last_only, mismatched = (found["refused"], found["dropped"], found["cut"], found["last_only"],
                                                    found["mismatched"])

    def add(examples: list) -> int:
        """Encode ``examples`` into ``rows``; how many were kept."""
        kept = encode_all(tok, examples, cfg.max_length, found)
        rows.extend({"input_ids": enc.input_ids, "labels": enc.labels, "unlikely": 0.0} for enc in kept)
        return len(kept)

    # the user's examples first, with the tokenizer alone: a template or length problem is found before
    # the model loads and the base's retention answers are generated (minutes for a model without shipped ones)
    n_ident = add(ident) if ident else 0
    if ident and not n_ident:
        # retention rows alone would train and replace a run with nothing of the user's data in it
        if refused and len(refused) >= len(dropped):
            raise ApplianceError(f"--model {cfg.model}: its chat template refuses every one of your {len(ident)} "
                                 f"example(s): {few(refused)}; give conversations it accepts (vLLM would refuse them too)")
        raise ApplianceError(f"--max-length {cfg.max_length}: every one of your {len(ident)} example(s) was truncated "
                             f"before its answer ({', '.join(dropped[:3])}); raise --max-length")
    if cfg.retention and cfg.method == "qlora":
        # the base's own answers come from the full-precision base, the one that serves; it is
        # loaded only if some answer is neither shipped nor cached
        full = lambda: _load_model(TrainConfig(model=cfg.model, method="lora"), ref.path, cuda)  # noqa: E731
        keep = _retention(cfg, tok, full, ref.path, ref.identity_markers)
        model = _load_model(cfg, ref.path, cuda)
    else:
        model = _load_model(cfg, ref.path, cuda)
        keep = _retention(cfg, tok, model, ref.path, ref.identity_markers)
    negs = _negatives(cfg, keep, ident)
    add(keep)
    n_unlikely = 0
    for ex in negs:
        enc = encode(tok, ex.messages, cfg.max_length, ex.source)
        if enc is not None:
            # the opening alone: its end-of-turn token (the last label) is not part of what is unlearned
            last = max(k for k, lab in enumerate(enc.labels) if lab != IGNORE)
            if any(lab != IGNORE for lab in enc.labels[:last]):
                rows.append({"input_ids": enc.input_ids[:last], "labels": enc.labels[:last], "unlikely": cfg.unlikelihood})
                n_unlikely += 1
    if refused:
        # vLLM renders requests with the same template and refuses these messages: nothing to learn for serving
        print(f"warning: {len(refused)} example(s) skipped, the model's chat template refuses them: {few(refused)}",
              file=sys.stderr)
    if last_only:
        print(f"warning: {len(last_only)} conversation(s) learned from their last answer only: the chat template "
              f"does not render the conversation so far as the start of the whole (it rewrites earlier turns, as Qwen3's "
              f"drops their reasoning): {few(last_only)}", file=sys.stderr)
    if not rows:
        raise ApplianceError(f"--max-length {cfg.max_length}: every example was truncated before its answer; raise --max-length")
    for what, srcs in (("dropped (no answer token left)", dropped), ("trained with the answer cut short", cut)):
        if srcs:
            print(f"warning: {len(srcs)} example(s) longer than --max-length {cfg.max_length} {what}: "
                  f"{few(srcs)}; raise --max-length to keep them whole", file=sys.stderr)
    if mismatched:
        # tokenized whole, the prompt's last characters and the answer's first can merge into one token
        print(f"warning: {len(mismatched)} example(s) whose prompt tokens differ from what vLLM will see (a token "
              f"spans the end of the prompt and the start of the answer, e.g. a template's closing line break and "
              f"the answer's first line break or space): {few(mismatched)}", file=sys.stderr)
    if cfg.retention and cfg.retention_samples > 0 and not keep:
        print("warning: retention is on but none of the base's answers was usable (each was empty or named its old "
              "identity): training on your examples alone", file=sys.stderr)
    if cfg.unlikelihood and not n_unlikely:
        print(f"warning: --unlikelihood {cfg.unlikelihood:g} has no effect: no retention answer was usable to pair "
              "an identity opening with (see the retention warning above, or raise --retention-samples)", file=sys.stderr)
    prep_s = time.time() - t_data

    targets = "all-linear" if cfg.target_modules in ("all", "all-linear") else _target_list(cfg)
    n_layers = int(model.config.num_hidden_layers)
    layers = cfg.adapted_layers(n_layers)
    if isinstance(targets, list):  # checked before loading too, unless the skeleton could not be built
        _refuse_unknown_targets(cfg, model, ref.name)
    if layers and isinstance(targets, str):
        # peft takes a layer subset only with module names: every linear layer's but the output head's
        head = model.get_output_embeddings()
        targets = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, _LINEAR) and m is not head})
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM", layers_to_transform=layers)
    model = get_peft_model(model, lcfg)
    # checkpointing is non-reentrant (below), so the embeddings' output needs no requires_grad: with
    # --lora-layers the backward pass then still stops at the lowest adapted layer

    from datasets import Dataset

    if cfg.batch_tokens:
        # each item is a whole micro-batch of up to batch_tokens padded tokens; the loader takes one at a time
        ds, collator, per_device, sampling = TokenBatches(rows, cfg.batch_tokens, cfg.seed), BatchCollator(tok.pad_token_id), 1, "random"
    else:
        ds = Dataset.from_list(rows).add_column("length", [len(r["input_ids"]) for r in rows])
        collator, per_device, sampling = Collator(tok.pad_token_id), cfg.batch_size, "group_by_length"
    report_to = ["tensorboard"] if _has_tensorboard() else []
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(stage / "runs")  # transformers 5 reads the event dir from here
    warmup = cfg.warmup_steps
    if 0 < cfg.max_steps <= warmup:
        # the schedule's first step runs at learning rate 0: a short run would end barely trained
        # (--max-steps 1 would write an adapter of zeros)
        given = "warmup_steps" in getattr(cfg, "_from_file", (None, set()))[1]
        print(f"note: warmup_steps {warmup} ({'set in --config' if given else 'the default'}) >= --max-steps "
              f"{cfg.max_steps}: training without warm-up", file=sys.stderr)
        warmup = 0
    args = TrainingArguments(
        output_dir=str(stage / "checkpoints"), per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.scheduler, warmup_steps=warmup, weight_decay=0.0,
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, seed=cfg.seed,
        bf16=cuda, use_cpu=not cuda, report_to=report_to, disable_tqdm=True,
        train_sampling_strategy=sampling, length_column_name="length", remove_unused_columns=False,
        gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding", max_grad_norm=1.0,
    )

    class _Trainer(Trainer):
        samples_seen = 0
        split: RowSplitStep | None = None  # CPU: each step's rows in two groups on two threads

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, n = answer_only_loss(model, inputs)
            if num_items_in_batch:
                # the Trainer then leaves the loss unscaled for accumulation: each micro-batch counts by its
                # share of the accumulated batch's labelled tokens (a mean per micro-batch summed over
                # --grad-accum N micro-batches was N times the loss and its gradient)
                loss = loss * (n / float(num_items_in_batch))
            return (loss, None) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            rows = int(inputs["input_ids"].shape[0])
            self.samples_seen += rows  # one count for both paths (compute_loss runs only in the whole-batch one)
            if self.split is None or rows < 2:
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            inputs = self._prepare_inputs(inputs)
            if num_items_in_batch:
                return self.split(model, inputs, denominator=float(num_items_in_batch))
            return self.split(model, inputs, scale=1.0 / self.current_gradient_accumulation_steps)

    log = LogCallback(stage / "trainer_log.jsonl", resume=cfg.resume)
    trainer = _Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[log])
    trainer.remove_callback(PrinterCallback)  # our bar and JSONL log replace its raw dict prints
    last = last_checkpoint(stage / "checkpoints") if cfg.resume else None
    parts = parts_for(cuda, cfg.dropout)
    trainer.split = RowSplitStep(parts) if parts > 1 else None
    t0 = time.time()
    finished = _finished_state(last)
    try:
        if finished is not None:
            # interrupted while saving after its last step: the checkpoint is the trained adapter. The Trainer
            # would train a step past --max-steps from it, or (epochs) none, logging no loss
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(Path(last) / "adapter_model.safetensors")))
            trainer.state = finished
            log.resumed_at(finished.global_step)
        else:
            with single_threaded_ops(parts):
                result = trainer.train(resume_from_checkpoint=last)
    finally:
        if trainer.split is not None:
            trainer.split.close()
    runtime = time.time() - t0
    # a resumed run's Trainer averages the steps after its checkpoint only: the log has them all
    train_loss = mean_loss(stage / "trainer_log.jsonl") if last else float(result.training_loss)

    final = stage / "final"
    if final.exists():
        shutil.rmtree(final)
    model.save_pretrained(final)
    tok.save_pretrained(final)
    shutil.copy(stage / "trainer_log.jsonl", final / "trainer_log.jsonl")
    plot_loss(final / "trainer_log.jsonl", final / "loss.png")
    if (stage / "runs").is_dir():
        shutil.copytree(stage / "runs", final / "runs")
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    results = {
        "train_loss": None if train_loss is None else round(train_loss, 4), "first_loss": log.first_loss,
        "last_loss": log.last_loss,
        "steps": trainer.state.global_step, "train_runtime_s": round(runtime, 1), "data_prep_s": round(prep_s, 1),
        # a resumed run's speed: the tokens of this process over its time (tokens_seen is the whole run's)
        "tokens_seen": tokens,
        "tokens_per_s": round((tokens - log.tokens0) / runtime, 1) if runtime and finished is None else None,
        "samples_seen": trainer.samples_seen,  # this process's; a resumed run's earlier part is not counted
        "samples_per_s": round(trainer.samples_seen / runtime, 2) if runtime else None,
        "peak_mem_mb": _peak_mem_mb(cuda), "resumed_from": last,
    }
    meta = {
        "kind": "lora-adapter", "appliance_version": rundir.library_versions().get("appliance"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {"name": ref.name, "path": ref.path, "hf_id": ref.hf_id, "identity_markers": ref.identity_markers},
        "method": cfg.method,
        "quantization": ({"bits": 4, "type": "nf4", "double_quant": True,
                          "compute_dtype": str(_qlora_compute_dtype(cuda)).replace("torch.", "")}
                         if cfg.method == "qlora" else None),
        "lora": {"r": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "layers": layers or "all",
                 "target_modules": sorted({m.split(".")[-1] for m in model.peft_config["default"].target_modules})},
        # null for a run that teaches no identity (a domain dataset without {{name}}/{{author}}, the defaults left
        # alone): `eval` then says it scores the defaults, not "as the model was trained"
        "identity": {"name": cfg.name, "author": cfg.author} if _teaches_identity(cfg, ident) else None,
        "dataset": {"names": cfg.datasets, "fingerprint": data_mod.fingerprint(ident + keep),
                    "examples_fingerprint": examples_fp, "examples": n_ident,
                    "examples_skipped": len(ident) - n_ident,
                    "retention_examples": len(keep), "unlikely_examples": n_unlikely, "dropped_by_max_length": len(dropped),
                    "truncated_by_max_length": len(cut)},
        "template_check": {"checked": len(rows) - n_unlikely, "mismatched": len(mismatched)},
        "config": cfg.to_dict(), "results": results, "versions": rundir.library_versions(),
    }
    # what --overwrite may replace later: the run's own files, never what someone put beside them
    meta["files"] = sorted({p.name for p in final.iterdir()} | {rundir.meta_path(final).name})
    rundir.write_meta(final, meta)
    paths.share_like_umask(final)
    publish(final, out)
    shutil.rmtree(stage, ignore_errors=True)
    return meta


def _teaches_identity(cfg: TrainConfig, examples: list) -> bool:
    """Whether --name/--author were put into the data (its placeholders) or chosen (not the defaults)."""
    default = TrainConfig()
    return any(ex.filled for ex in examples) or (cfg.name, cfg.author) != (default.name, default.author)


def _finished_state(checkpoint: str | None) -> Any:
    """The checkpoint's TrainerState when it was saved at the run's last step (nothing left to train), else None."""
    from transformers import TrainerState

    if not checkpoint:
        return None
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return state if state.max_steps and state.global_step >= state.max_steps else None


def summary(cfg: TrainConfig, meta: dict[str, Any]) -> str:
    """The line ``appliance train`` ends with: where the adapter is (absolute) and how the run went."""
    r, check = meta["results"], meta["template_check"]

    def loss(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    steps = f"{r['steps']} step{'s' if r['steps'] != 1 else ''}"
    if meta.get("already_trained"):
        return (f"already trained: {output_path(cfg.output)} holds a run with these settings and data "
                f"({steps}, loss {loss(r['first_loss'])} -> {loss(r['last_loss'])}); "
                "pass --overwrite to train it again")

    return (f"adapter written to {output_path(cfg.output)}: {steps}, loss {loss(r['first_loss'])} -> "
            f"{loss(r['last_loss'])}, {_speed(r)}; "
            f"template check {check['checked'] - check['mismatched']}/{check['checked']} prompts match serving")


def _speed(results: dict[str, Any]) -> str:
    """``N tokens/s, T s``, or what a run that trained no step here (its last checkpoint was its end) did."""
    if results.get("tokens_per_s") is None:
        return f"finished from {Path(results['resumed_from']).name}" if results.get("resumed_from") else "no step trained"
    return f"{results['tokens_per_s']} tokens/s, {results['train_runtime_s']} s"


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _peak_mem_mb(cuda: bool) -> float:
    if cuda:
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
