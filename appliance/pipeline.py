"""``appliance pipeline``: pull, train, merge, serve, eval (base vs adapter vs merged), report, down.

Every stage leaves a self-describing directory; a stage whose output is already there is
skipped (``--force`` redoes everything), so an interrupted pipeline resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from appliance import paths
from appliance.columns import pad
from appliance.errors import ApplianceError, CheckFailed

Echo = Callable[[str], None]
CPU_KV_SHARE = 0.15  # of the memory available, per server KV cache: two run at once on a CPU (see _Servers)


@dataclass
class PipelineConfig:
    """Options of ``appliance pipeline``."""

    model: str = "smollm2-135m"
    name: str = "Archer"
    author: str = "意琦行"
    run: str | None = None  # adapter dir; default saves/<name>
    merged: str | None = None  # default models/<name>-merged
    report: str | None = None  # default reports/<name>
    port: int = 8000
    merged_port: int = 8001
    # on 2 CPU cores 64 finished the 118 prompts 13% sooner than 32; 128 (all in one wave) was 10% faster
    # than 64 on a lone server but no faster inside the pipeline (64 s against 63), with twice the TTFT
    concurrency: int = 64
    max_tokens: int = 64  # identity answers are ~40 tokens; general answers give theirs early
    prompts: list[str] = field(default_factory=list)  # empty: every built-in set
    train_config: str | None = None  # YAML for the train stage
    force: bool = False
    gates: list[str] = field(default_factory=lambda: ["identity_hit_rate=0.95"])  # --fail-under
    fail_over: list[str] = field(default_factory=list)
    max_drop: list[str] = field(default_factory=list)  # against the base, for the adapter and the merged model
    max_rise: list[str] = field(default_factory=list)
    # None: fp32 where the adapter's server runs the base in fp32 (a CPU without native bf16), else bf16. A bf16
    # merge rounds away a weak adapter's small update there, and the merge check then fails (102 of 118 seen)
    merge_dtype: str | None = None

    @property
    def slug(self) -> str:
        """The name as the run's folders spell it (saves/<slug>, reports/<slug>)."""
        return self.name.lower().replace(" ", "-")

    def dirs(self) -> tuple[Path, Path, Path]:
        slug = self.slug
        home = paths.home()
        return (Path(self.run or home / "saves" / slug), Path(self.merged or home / "models" / f"{slug}-merged"),
                Path(self.report or home / "reports" / slug))


def _stage(echo: Echo, title: str) -> float:
    echo(f"\n== {title}")
    return time.time()


def pipeline(cfg: PipelineConfig, echo: Echo = print) -> dict[str, Any]:
    """Run the whole job; returns the report (``report.json`` content) and the stage timings."""
    from appliance import models, rundir
    from appliance.merge import MergeConfig, merge
    from appliance.train import ResumeMismatch, already_trained, staging_dir, train

    _preflight(cfg)
    run_dir, merged_dir, report_dir = cfg.dirs()
    slug = run_dir.name
    timings: dict[str, float] = {}

    t = _stage(echo, f"pull {cfg.model}")
    if models.resolve_pullable(cfg.model):
        models.pull(cfg.model)
    timings["pull_s"] = time.time() - t

    t = _stage(echo, f"train -> {run_dir}")
    tcfg = _train_config(cfg, run_dir)
    done = already_trained(tcfg)
    if done and not cfg.force:
        echo(f"skipped: {run_dir} is already trained for {cfg.name} / {cfg.author} with these settings (use --force to retrain)")
    else:
        if not done:  # --force over the same settings replaces nothing the user would miss
            _note_replaced(run_dir, echo, tcfg)
        try:
            meta = train(tcfg)
        except ResumeMismatch:  # the interrupted run had other settings (another --author): start over
            echo(f"note: the interrupted training in {staging_dir(run_dir)} used other settings; starting over")
            tcfg.resume = False
            meta = train(tcfg)
        from appliance.train import summary

        echo(summary(tcfg, meta))
    timings["train_s"] = time.time() - t

    report_file = report_dir / "report.json"
    # a report made with other gates is reused too: its answers are judged again below, without a server
    report = None if cfg.force else _reusable_report(report_file, cfg, run_dir, merged_dir, any_gate=True)
    servers = _Servers(cfg, run_dir, merged_dir, slug, echo, start=report is None)
    try:
        t = _stage(echo, f"merge -> {merged_dir}")
        # no probe verification here: the eval below checks the merged model more strictly, through
        # vLLM, on every prompt against the adapter's answers (and saves the probes' ~12 s)
        dtype = _merge_dtype(cfg)
        _note_other_merge(merged_dir, dtype, echo)
        res = merge(MergeConfig(adapter=str(run_dir), output=str(merged_dir), overwrite=True, verify=False, dtype=dtype))
        # (merge's own "already merged" line suggests its --overwrite, a flag the pipeline does not have)
        echo(f"skipped: {merged_dir} is already merged from this adapter" if res.already_merged
             else f"merged -> {merged_dir} (checked against the adapter in the eval)")
        timings["merge_s"] = time.time() - t
        if not res.already_merged:  # merged anew (another --merge-dtype): the report's merged answers are stale
            report = None
        if report is not None:
            if report["run"].get("eval") != _eval_settings(cfg):
                report = _regated(report, report_dir, cfg, echo)
            else:
                echo(f"\n== eval: skipped, {report_file} is newer than the adapter and the merged model (use --force)")
            # the failed merge check of an earlier run is still failed: a rerun must not turn it into success
            _refuse_failed_merge(report, report_dir, merged_dir.name)
        else:
            servers.prestart("merged")
            report = _serve_and_eval(cfg, servers, report_dir, echo, timings)
    finally:
        servers.stop()
    base = rundir.read_meta(run_dir).get("base_model", {}).get("name", cfg.model)
    _show_examples(report_dir, base, echo)
    echo(f"\nreport: {report_dir / 'report.md'}  (also report.html, report.json, answers.jsonl)")
    return {"report": report, "timings": timings}


def _merge_dtype(cfg: PipelineConfig) -> str:
    """The merged model's dtype: the flag's, else the precision the adapter is served in beside its base."""
    if cfg.merge_dtype:
        return cfg.merge_dtype
    import torch

    from appliance.hw import cpu_has_native_bf16

    return "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "fp32"


def _note_other_merge(merged_dir: Path, dtype: str, echo: Echo) -> None:
    """A merge of another dtype in the merged model's folder (one made by hand with `appliance merge`) is replaced:
    said, with the flag that keeps it."""
    try:
        old = json.loads((merged_dir / "appliance.json").read_text(encoding="utf-8")).get("dtype")
    except (OSError, ValueError, AttributeError):
        return  # none there (or not a merge of ours: merge itself refuses to replace that)
    if isinstance(old, str) and old != dtype:
        a = {d: "an" if d.startswith("f") else "a" for d in (old, dtype)}  # an fp32, a bf16
        echo(f"note: replacing {merged_dir} ({a[old]} {old} merge) with {a[dtype]} {dtype} merge; pass --merge-dtype {old} "
             "to keep it")


def _note_replaced(run_dir: Path, echo: Echo, tcfg: Any) -> None:
    """A finished run of other settings in the run's folder is replaced: said, since another --name keeps it."""
    from appliance import rundir
    from appliance.train import NOT_RECIPE

    if not (run_dir / rundir.META_FILE).is_file():
        return
    try:
        old = rundir.read_meta(run_dir)
    except ApplianceError:  # unreadable: nothing to describe, train replaces it all the same
        old = {}
    base = (old.get("base_model") or {}).get("name") or "?"
    who = old.get("identity") if isinstance(old.get("identity"), dict) else {}
    was = old.get("config") if isinstance(old.get("config"), dict) else {}
    now = json.loads(json.dumps(tcfg.to_dict()))  # tuples as lists, as appliance.json holds them
    changed = [f"{k} {was[k]} -> {now[k]}" for k in sorted(now) if k in was and k not in NOT_RECIPE and was[k] != now[k]]
    what = "; ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "") if changed \
        else "other settings or data"
    echo(f"note: replacing the run in {run_dir} (trained on {base} for {who.get('name', '?')} / {who.get('author', '?')}; "
         f"now: {what}); give --name another value to keep it")


def _train_config(cfg: PipelineConfig, run_dir: Path):
    """The train stage's config: an interrupted run's checkpoint is continued, and the finished run
    replaces whatever was there."""
    from appliance.train import staging_dir
    from appliance.train_config import TrainConfig

    tcfg = TrainConfig.from_sources(cfg.train_config, model=cfg.model, name=cfg.name, author=cfg.author,
                                    output=str(run_dir), overwrite=True,
                                    resume=staging_dir(run_dir).exists() and not cfg.force)
    tcfg._pipeline = True
    return tcfg


def _all_done(cfg: PipelineConfig) -> bool:
    """Every stage would be skipped: trained with these settings and data, merged, and a report made
    after both with the same eval settings (so no server is started)."""
    from appliance.train import already_trained

    run_dir, merged_dir, report_dir = cfg.dirs()
    if cfg.force or _reusable_report(report_dir / "report.json", cfg, run_dir, merged_dir, any_gate=True) is None:
        return False
    return already_trained(_train_config(cfg, run_dir)) is not None


def _preflight(cfg: PipelineConfig) -> None:
    """Every flag, the train config, the gates and the prompt files, checked before minutes of training."""
    from appliance.evaluate import refuse_unmeasurable
    from appliance.train_config import TrainConfig
    from evals.prompts import load_prompts

    slug = cfg.slug
    if not cfg.name.strip() or not cfg.author.strip():
        raise ApplianceError("--name/--author: must not be empty")
    if "/" in slug or "\\" in slug or slug.startswith("."):
        raise ApplianceError(f"--name {cfg.name}: names the run's folders (saves/<name>, reports/<name>), so it cannot "
                             "hold / or \\ or start with a dot; use a plain name such as Archer")
    if "=" in slug:  # the adapter is served as name=path: "a=b" read as the name "a" of the folder "b"
        raise ApplianceError(f"--name {cfg.name}: names the served adapter, so it cannot hold '='; use a plain name "
                             "such as Archer")
    if len(f".{slug}-merged.partial".encode()) > 250:  # file names are at most 255 bytes
        raise ApplianceError(f"--name: {len(cfg.name)} characters name the run's folders, too long for a file name; "
                             "use a shorter name (at most ~80 Chinese or ~230 Latin characters)")
    for flag, port in (("--port", cfg.port), ("--merged-port", cfg.merged_port)):
        if not 1 <= port <= 65535:
            raise ApplianceError(f"{flag} {port}: out of range; use 1-65535")
    if cfg.port == cfg.merged_port:
        raise ApplianceError(f"--merged-port {cfg.merged_port}: the same as --port; the two servers need two ports")
    for flag, value in (("--concurrency", cfg.concurrency), ("--max-tokens", cfg.max_tokens)):
        if value < 1:
            raise ApplianceError(f"{flag} {value}: must be at least 1")
    TrainConfig.from_sources(cfg.train_config, model=cfg.model, name=cfg.name, author=cfg.author).validate()
    if cfg.train_config:
        own = sorted(TrainConfig.from_sources(cfg.train_config)._from_file[1]
                     & {"model", "name", "author", "output", "overwrite", "resume"})
        if own:
            # the pipeline's flags would silently win over them (output is saves/<name>, and the pipeline
            # itself resumes an interrupted training and replaces a finished one of other settings)
            raise ApplianceError(f"--config {cfg.train_config}: {', '.join(own)} set by the pipeline itself (--model, "
                                 "--name, --author; the run goes to saves/<name>, an interrupted one is resumed, "
                                 "--force retrains); remove them from the file")
    refuse_unmeasurable(_rules(cfg), load_prompts(cfg.prompts, cfg.name, cfg.author))
    if not _all_done(cfg):  # a rerun that skips every stage starts no server: its ports may be taken
        from appliance.serve import check_port

        for flag, port in (("--port", cfg.port), ("--merged-port", cfg.merged_port)):
            check_port("127.0.0.1", port, flag)  # now, not after minutes of training and a merge
    from appliance import models

    ref = None if models.resolve_pullable(cfg.model) else models.resolve(cfg.model)  # a pullable one is fetched first
    served = (ref.name if ref else cfg.model).lower()
    if slug in (served, f"{served}-merged") or f"{slug}-merged" == served:
        raise ApplianceError(f"--name {cfg.name}: the adapter would be served under the base model's name "
                             f"({served}); give the assistant another name")


class _Servers:
    """The two vLLM servers of the eval stage: base + adapter, and the merged model.

    On a CPU, starting a server is ~25 s of mostly single-threaded imports, so the first starts
    while the merge runs and the second as soon as the merged model is written; both are ready
    before either is evaluated (a start beside an eval halved the eval's throughput and skewed its
    latency figures). Each gets a smaller share of the available memory for its KV cache, 0.15: ample for the eval.
    On a GPU both would claim 90% of its memory, so there they run one after the other.
    """

    def __init__(self, cfg: PipelineConfig, run_dir: Path, merged_dir: Path, slug: str, echo: Echo, start: bool):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from appliance import serve

        self.slug, self.echo, self.run_dir = slug, echo, run_dir
        self.overlap = serve.detect_device() == "cpu"
        share = CPU_KV_SHARE if self.overlap else None
        self.specs = {"adapter": serve.UpConfig(adapters=[f"{slug}={run_dir}"], port=cfg.port, detach=True,
                                                gpu_memory_utilization=share),
                      # no LoRA support: a merged model is served as it would be deployed, and decodes
                      # ~25% faster on a CPU without vLLM's LoRA layers (identical answers)
                      "merged": serve.UpConfig(model=str(merged_dir), port=cfg.merged_port, detach=True,
                                               gpu_memory_utilization=share, lora=False)}
        self.started: dict[str, float] = {}
        self.ready: set[str] = set()
        self.futures: dict = {}
        self.cancel = threading.Event()  # set when everything stops: a start in progress gives up at once
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="up")
        if start and self.overlap:
            self._launch("adapter")

    def _launch(self, which: str) -> None:
        from appliance import serve

        if which not in self.futures:
            self.echo(f"starting the {which} server on port {self.specs[which].port} (in the background)")
            self.started[which] = time.time()
            self.futures[which] = self.pool.submit(serve.up, self.specs[which], echo=lambda s: None, cancel=self.cancel)

    def prestart(self, which: str) -> None:
        """Start ``which`` in the background now, where that overlaps usefully (CPU)."""
        if self.overlap:
            self._launch(which)

    def get(self, which: str):
        """The ready server's info (started now if it was not started before)."""
        self._launch(which)
        info = self.futures[which].result()
        if which not in self.ready:
            self.ready.add(which)
            self.echo(f"ready: {info.url} ({', '.join(info.models)}), {time.time() - self.started[which]:.0f} s after its start")
        return info

    def stop(self, which: str | None = None) -> None:
        """Stop one server (or all): waits for a start in progress, so nothing is left running.

        A second Ctrl-C (or SIGTERM; `timeout` sends two) while it waits would abandon a server that is
        still starting: both signals are held back until every server is stopped, then delivered."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
            return self._stop(which)
        pending: list[int] = []
        old = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._stop(which)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if pending:  # now act on it as the handler in place would have
            handler = old[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            raise KeyboardInterrupt

    def _stop(self, which: str | None) -> None:
        from appliance import serve

        if which is None:
            # the end, or an interrupt or failure: a server still starting is not waited for (~25 s on a
            # CPU) but stopped where it stands; servers already up are stopped below
            self.cancel.set()
        for w in [which] if which else list(self.futures):
            fut = self.futures.pop(w, None)
            if fut is None:
                continue
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - a start that failed left nothing running; the caller reports it
                continue
            try:
                serve.down(port=self.specs[w].port)
            except ApplianceError as e:  # the other server must still be stopped, and the first error kept
                self.echo(f"warning: stopping the {w} server: {e}")
        if which is None:
            self.pool.shutdown(wait=True)


def _serve_and_eval(cfg: PipelineConfig, servers: _Servers, report_dir: Path, echo: Echo,
                    timings: dict[str, float]) -> dict:
    """Base + adapter on one server, the merged model on a second; one report over all three."""
    from appliance.evaluate import EvalConfig, roles, run_eval
    from evals.report import write_report

    slug = servers.slug
    t = _stage(echo, f"up: base + adapter '{slug}' on port {cfg.port}")
    info = servers.get("adapter")
    if servers.overlap:
        servers.get("merged")  # evaluated with the other server idle, so latency figures are each model's own
    timings["up_s"] = time.time() - t
    t = _stage(echo, "eval: base vs adapter")
    base_name = info.models[0]
    part = _eval_on(f"base + adapter server (port {cfg.port})", run_eval, echo,
                    EvalConfig(before=base_name, after=[slug], url=info.url, name=cfg.name, author=cfg.author,
                               output=str(report_dir / "parts" / "adapter"), concurrency=cfg.concurrency,
                               max_tokens=cfg.max_tokens, prompts=cfg.prompts))
    rows = _rows(report_dir / "parts" / "adapter")
    servers.stop("adapter")
    timings["eval_adapter_s"] = time.time() - t
    t = _stage(echo, f"up + eval: merged model on port {cfg.merged_port}")
    info = servers.get("merged")
    merged_name = info.models[0]
    _eval_on(f"merged model's server (port {cfg.merged_port})", run_eval, echo,
             EvalConfig(before=merged_name, url=info.url, name=cfg.name, author=cfg.author,
                        old_identity=part.get("old_identity") or [], output=str(report_dir / "parts" / "merged"),
                        concurrency=cfg.concurrency, max_tokens=cfg.max_tokens, prompts=cfg.prompts))
    merged_rows = _rows(report_dir / "parts" / "merged")
    servers.stop("merged")
    # one report over both runs: the roles a single eval of all three models would give, and
    # the base's identity markers for the merged model too
    _, (adapter_role, _), (merged_role, _) = roles(EvalConfig(before=base_name, after=[slug, merged_name]))
    markers = rows[0].get("old_identity", []) if rows else []
    check = merge_check(rows, merged_rows)
    echo(f"merge check: the merged model gave the adapter's answer to {check['identical']} of {check['prompts']} prompts "
         f"(need >= {check['required']})")
    for r in rows:
        r["role"] = adapter_role if r["role"] == "after" else r["role"]
    for r in merged_rows:
        r.update(role=merged_role, old_identity=markers)
    rows += merged_rows
    timings["eval_merged_s"] = time.time() - t
    rules = _rules(cfg)
    # the answers and the reports computed from them are published as one set
    report = write_report(report_dir, rules, answers_text="".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                          run={"pipeline": True, "timings": timings, "eval": _eval_settings(cfg), "merge_check": check,
                               "training": _training_summary(servers.run_dir)})
    _refuse_failed_merge(report, report_dir, merged_name)
    return report


def _training_summary(run_dir: Path) -> dict[str, Any]:
    """What the adapter was trained with, from its appliance.json, for the report (which reads no run folder)."""
    from appliance import rundir

    try:
        meta = rundir.read_meta(run_dir)
    except ApplianceError:
        return {}
    c, r, d = meta.get("config") or {}, meta.get("results") or {}, meta.get("dataset") or {}
    return {"adapter": str(run_dir), "base_model": (meta.get("base_model") or {}).get("name"), "method": meta.get("method"),
            "datasets": c.get("datasets"), "examples": d.get("examples"), "retention_examples": d.get("retention_examples"),
            "epochs": c.get("epochs"), "max_steps": c.get("max_steps"), "steps": r.get("steps"), "lr": c.get("lr"),
            "lora": meta.get("lora", {}).get("r"), "loss": [r.get("first_loss"), r.get("last_loss")]}


def _refuse_failed_merge(report: dict, report_dir: Path, merged_name: str) -> None:
    """CheckFailed when the report's merge check (``run.merge_check``) did not pass."""
    check = (report.get("run") or {}).get("merge_check")
    if not isinstance(check, dict) or not all(isinstance(check.get(k), int) for k in ("identical", "required", "prompts")):
        return
    if check["identical"] < check["required"]:
        gate = report.get("gate") or {}
        also = f"; the gate failed too: {'; '.join(gate.get('failures', []))}" if gate.get("passed") is False else ""
        raise CheckFailed(f"merge check failed: the merged model {merged_name} answered {check['prompts'] - check['identical']} "
                          f"of {check['prompts']} prompts differently from the adapter; compare them in "
                          f"{report_dir / 'report.md'}{also}")


def _eval_on(server: str, run_eval: Callable, echo: Echo, ecfg: Any) -> dict:
    """``run_eval`` against one of the pipeline's own servers: its errors name that server, not an --url
    the pipeline does not have."""
    try:
        return run_eval(ecfg, progress=echo)
    except ApplianceError as e:
        msg, flag = str(e), f"--url {ecfg.url}"
        if msg.startswith(flag):
            msg = f"the pipeline's {server} at {ecfg.url}{msg[len(flag):]}".replace(" or fix --url", "")
            e.args = (msg + ("" if "rerun" in msg else "; rerun the same `appliance pipeline` command"),)
        raise


def merge_check(adapter_rows: list[dict], merged_rows: list[dict]) -> dict[str, int]:
    """Greedy answers of the served merged model against the served adapter's, prompt by prompt.

    The same rule as `appliance merge`'s probe verification (7 of 8 equal), on every eval prompt.
    """
    adapter = {r["prompt"]: r["answer"] for r in adapter_rows if r["role"] == "after"}
    merged = {r["prompt"]: r["answer"] for r in merged_rows}
    common = [p for p in adapter if p in merged]
    same = sum(adapter[p] == merged[p] for p in common)
    return {"identical": same, "prompts": len(common), "required": -(-7 * len(common) // 8)}


def _rules(cfg: PipelineConfig) -> list:
    from evals.report import parse_rules

    return parse_rules(tuple(cfg.gates), tuple(cfg.fail_over), tuple(cfg.max_drop), tuple(cfg.max_rise))


def _eval_settings(cfg: PipelineConfig) -> dict[str, Any]:
    # the gate too: a stored report carries the verdict of the rules it was made with (the --fail-under
    # values as they are, as reports before the other kinds stored them; those with their flag)
    others = [f"--{op} {v}" for op, vs in (("fail-over", cfg.fail_over), ("max-drop", cfg.max_drop),
                                           ("max-rise", cfg.max_rise)) for v in vs]
    return {"prompts": cfg.prompts, "max_tokens": cfg.max_tokens, "name": cfg.name, "author": cfg.author,
            "gates": list(cfg.gates) + others}


def _reusable_report(report_file: Path, cfg: PipelineConfig, *dirs: Path, any_gate: bool = False) -> dict | None:
    """The finished report, if it is newer than ``dirs`` and was made with the same prompts and settings (with
    ``any_gate``, the gate aside: its answers can be judged again without a server)."""
    if not report_file.is_file() or not _newer(report_file, *dirs):
        return None
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # cut off or edited: evaluated again, not a traceback
        return None
    if not isinstance(report, dict) or not isinstance(report.get("run") or {}, dict):
        return None
    made, now = dict((report.get("run") or {}).get("eval") or {}), _eval_settings(cfg)
    if any_gate and (report_file.parent / "answers.jsonl").is_file():  # the answers can be judged again
        made["gates"] = now["gates"]
    return report if made == now else None


def _regated(old: dict, report_dir: Path, cfg: PipelineConfig, echo: Echo) -> dict:
    """A finished report made with other gates, judged again with these from its answers.jsonl: the same
    answers, the new verdict, no server and no request (a changed gate re-ran every prompt)."""
    from evals.report import write_report

    answers = report_dir / "answers.jsonl"
    run = {k: v for k, v in old["run"].items() if k not in ("answers", "report_dir")} | {"eval": _eval_settings(cfg)}
    echo(f"\n== eval: the gate changed; judging the answers in {answers} again (use --force to ask the models again)")
    return write_report(report_dir, _rules(cfg), run=run, answers_path=answers)


def _rows(part_dir: Path) -> list[dict]:
    from evals.report import load_answers

    return load_answers(part_dir / "answers.jsonl")  # split on newlines only: an answer may hold U+2028


def _newer(path: Path, *dirs: Path) -> bool:
    """``path`` is newer than every directory's ``appliance.json`` (a directory without one is not done yet)."""
    stamp = path.stat().st_mtime
    return all((d / "appliance.json").is_file() and (d / "appliance.json").stat().st_mtime <= stamp for d in dirs)


def _show_examples(report_dir: Path, base: str, echo: Echo) -> None:
    """The "你是谁？" answers, before and after."""
    answers = report_dir / "answers.jsonl"
    if not answers.is_file():
        return
    echo("\n你是谁？")
    for r in _rows(report_dir):
        if r["prompt"] == "你是谁？":
            echo(f"  {r['role']:<7} {pad(r['model'], 22)} {r['answer'].strip()[:160]}")
