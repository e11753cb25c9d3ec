"""report.md and report.html (self-contained, inline SVG charts) from a computed report and its rows."""

from __future__ import annotations

import html

# (key, label, scale): rates are shown x100 so every quality figure reads on a 0-100 axis
QUALITY = [("identity_hit_rate", "identity hit %", 100), ("identity_zh_hit_rate", "identity hit ZH %", 100),
           ("identity_en_hit_rate", "identity hit EN %", 100), ("identity_leak_rate", "old identity leak %", 100),
           ("general_accuracy", "general accuracy %", 100), ("name_leak_rate", "name leak %", 100),
           ("bleu4", "BLEU-4", 1), ("rouge1", "ROUGE-1", 1), ("rouge2", "ROUGE-2", 1), ("rougeL", "ROUGE-L", 1)]
TABLE = QUALITY + [("name_leak_count", "name leak count", 1), ("general_correct", "general correct", 1),
                   ("errors", "failed requests", 1), ("truncated", "cut at max tokens", 1), ("requests_per_s", "requests/s", 1),
                   ("output_tokens_per_s", "output tokens/s", 1), ("ttft_p50_ms", "TTFT p50 ms", 1),
                   ("ttft_p95_ms", "TTFT p95 ms", 1), ("tpot_ms", "TPOT ms", 1), ("latency_p50_ms", "latency p50 ms", 1),
                   ("latency_p95_ms", "latency p95 ms", 1)]
SET_COLS = [("hit_rate", "hit %", 100), ("leak_rate", "leak %", 100), ("accuracy", "accuracy %", 100),
            ("name_leak_count", "name leaks", 1), ("references", "with reference", 1), ("bleu4", "BLEU-4", 1), ("rouge1", "R-1", 1), ("rouge2", "R-2", 1),
            ("rougeL", "R-L", 1)]
COLORS = ["#8c8c8c", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
FIRST_EXAMPLE = "你是谁？"


def _fmt(v, scale=1) -> str:
    if v is None:
        return "–"
    return f"{v * scale:.1f}" if isinstance(v, float) or scale != 1 else str(v)


def _delta(a, b, scale=1) -> str:
    if a is None or b is None:
        return "–"
    if isinstance(a, int) and isinstance(b, int) and scale == 1:  # counts: "+1", not "+1.0"
        return f"{b - a:+d}"
    return f"{(b - a) * scale:+.1f}"


def _cell(text: str, limit: int = 220) -> str:
    t = " ".join((text or "").split())
    t = t if len(t) <= limit else t[:limit] + "…"
    return t.replace("|", "\\|") or "(empty)"


def _failed_note(models: dict) -> str:
    """What failed requests do to the figures (a hit rate of 65% may be 22 timeouts, not 22 wrong answers)."""
    failed = [f"{m['model']} {m['errors']} of {m['n']}" for m in models.values() if m.get("errors")]
    if not failed:
        return ""
    return (f"Failed requests ({', '.join(failed)}) have no answer and count as misses in every figure below (an empty "
            "answer: not a hit, not correct, BLEU and ROUGE 0); rerun the eval with a larger --timeout or a lower --concurrency.")


def _md(text: str) -> str:
    """A name (a set, a model, a role) as one markdown table cell: a "|" in it would split the row."""
    return " ".join(str(text).split()).replace("|", "\\|")  # as _cell escapes a prompt


def _canon(text: str) -> str:
    return "".join(text.split()).replace("?", "？").rstrip("？")


def example_rows(rows: list[dict], n_identity: int = 8, n_general: int = 4) -> list[str]:
    """Prompts shown side by side: "你是谁？" first, then identity prompts, then general ones, in file order.

    Places the identity prompts leave empty go to general ones: a domain eval without identity prompts
    shows 12 of its questions, not 4."""
    seen: list[str] = []
    for r in rows:
        if r["prompt"] not in seen:
            seen.append(r["prompt"])
    kinds = {r["prompt"]: r["kind"] for r in rows}
    # "你是谁?" / " 你是谁 " count too: the canonical question as users type it
    head = [p for p in seen if _canon(p) == _canon(FIRST_EXAMPLE)][:1]
    ident = [p for p in seen if kinds[p] == "identity" and p not in head]
    general = [p for p in seen if kinds[p] != "identity"]
    ident = head + ident[: n_identity - len(head)]
    return ident + general[: n_general + n_identity - len(ident)]


def _shown_of(rows: list[dict]) -> tuple[list[str], int]:
    """The example prompts both reports show, and how many prompts there are (to say when not all are shown)."""
    return example_rows(rows), len({r["prompt"] for r in rows})


def _answers(rows: list[dict]) -> dict[tuple[str, str], str]:
    return {(r["role"], r["prompt"]): r["answer"] for r in rows}


def _sets(rows: list[dict]) -> dict[str, str]:
    return {r["prompt"]: r.get("set", "") for r in rows}


def training_line(report: dict) -> str:
    """What the adapter was trained with, when the pipeline recorded it in the report's run."""
    t = (report.get("run") or {}).get("training") or {}
    if not t:
        return ""
    loss = t.get("loss") or [None, None]
    how = f"{t.get('steps')} steps" + (f", loss {loss[0]:.3g} -> {loss[1]:.3g}" if None not in loss else "")
    data = ", ".join(map(str, t.get("datasets") or [])) or "?"
    return (f"Trained: `{t.get('adapter')}` on `{t.get('base_model')}` ({t.get('method')}, rank {t.get('lora')}, "
            f"lr {t.get('lr')}), data {data} ({t.get('examples')} examples + {t.get('retention_examples')} retention), "
            f"{how}.")


def title(report: dict, rows: list[dict]) -> str:
    """The identity scored for ("Archer by 意琦行"), or, when no prompt is an identity prompt (a domain eval),
    the models compared: the identity is then measured by nothing and would misname the job."""
    if not rows or any(r["kind"] == "identity" for r in rows):
        return f"{report['name']} by {report['author']}"
    models = [m["model"] for m in report["models"].values()]
    return " -> ".join(dict.fromkeys(models))


def _measured(models: dict, key: str) -> bool:
    """Whether some model has a value for ``key``: a metric no prompt measures (identity hits without identity
    prompts) is left out of the tables rather than shown as a row of dashes."""
    return any(m.get(key) is not None for m in models.values())


def _set_cols(models: dict) -> list[tuple[str, str, int]]:
    """The per-set columns some set measures (no "hit %" column of dashes without identity prompts)."""
    sets = [sm for m in models.values() for sm in m["sets"].values()]
    return [c for c in SET_COLS if any(sm.get(c[0]) is not None for sm in sets)] if sets else SET_COLS


def render_md(report: dict, rows: list[dict]) -> str:
    """Markdown report: before/after metrics with deltas, per-set table, examples side by side."""
    models = report["models"]
    roles = list(models)
    base = models.get("before")
    gate = report.get("gate", {})
    out = [f"# Eval: {title(report, rows)}", ""]
    out.append("Models: " + ", ".join(f"{r} = `{m['model']}`" for r, m in models.items())
               + f"; {models[roles[0]]['n']} prompts each; old identity markers: "
               + (", ".join(report["old_identity"]) or "none (leak not measured)") + ".")
    if trained := training_line(report):
        out += ["", trained]
    if gate:
        verdict = "PASSED" if gate["passed"] else "FAILED"
        out += ["", f"Gate: **{verdict}** ({' '.join(gate['rules']) or 'no rules'})"]
        out += [f"- {f}" for f in gate["failures"]]
    if failed := _failed_note(models):
        out += ["", failed]
    head = ["metric"] + [_md(f"{r} ({m['model']})") for r, m in models.items()]
    others = [r for r in roles if r != "before"] if base else []
    head += [f"Δ {r}" for r in others]
    out += ["", "## Metrics", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, scale in TABLE:
        if rows and not _measured(models, key):
            continue
        cells = [label] + [_fmt(models[r].get(key), scale) for r in roles]
        cells += [_delta(base.get(key), models[r].get(key), scale) for r in others]
        out.append("| " + " | ".join(cells) + " |")
    cols = _set_cols(models)
    out += ["", "## Per set", "", "| set | model | n | " + " | ".join(c[1] for c in cols) + " |",
            "|" + "---|" * (len(cols) + 3)]
    for s in sorted({s for m in models.values() for s in m["sets"]}):
        for r in roles:
            sm = models[r]["sets"].get(s)
            if sm:
                out.append(f"| {_md(s)} | {r} | {sm['n']} | " + " | ".join(_fmt(sm.get(k), sc) for k, _, sc in cols) + " |")
    ans, sets = _answers(rows), _sets(rows)
    # the set says how each prompt was scored (identity_*, general, open): a prompt without `kind` is classified
    shown, total = _shown_of(rows)
    out += ["", "## Examples", ""]
    if len(shown) < total:
        order = ("\"你是谁？\" first, then identity, then the others" if any(r["kind"] == "identity" for r in rows)
                 else "in file order")
        out += [f"{len(shown)} of the {total} prompts ({order}); "
                "every answer is in answers.jsonl.", ""]
    out += ["| prompt | set | " + " | ".join(roles) + " |", "|" + "---|" * (len(roles) + 2)]
    for p in shown:
        out.append(f"| {_cell(p, 80)} | {_md(sets.get(p, ''))} | " + " | ".join(_cell(ans.get((r, p), "")) for r in roles) + " |")
    return "\n".join(out) + "\n"


def _bar_chart(models: dict) -> str:
    roles = list(models)
    w, h, left, top, bottom = 860, 300, 40, 20, 70
    quality = [q for q in QUALITY if _measured(models, q[0])] or QUALITY  # no empty groups (identity, domain evals)
    gw = (w - left) / len(quality)
    bw = min(22.0, (gw - 10) / max(len(roles), 1))
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="metrics before vs after">']
    for t in range(0, 101, 25):
        y = top + (h - top - bottom) * (1 - t / 100)
        s.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w}" y2="{y:.1f}" stroke="#ddd"/>'
                 f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{t}</text>')
    for i, (key, label, scale) in enumerate(quality):
        x0 = left + i * gw + 5
        for j, r in enumerate(roles):
            v = models[r].get(key)
            if v is None:
                continue
            val = max(0.0, min(100.0, v * scale))
            bh = (h - top - bottom) * val / 100
            s.append(f'<rect x="{x0 + j * bw:.1f}" y="{h - bottom - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                     f'fill="{COLORS[j % len(COLORS)]}"><title>{html.escape(r)} {label}: {val:.1f}</title></rect>')
        s.append(f'<text x="{x0 + gw / 2 - 5:.1f}" y="{h - bottom + 14}" font-size="10" text-anchor="end" '
                 f'transform="rotate(-30 {x0 + gw / 2 - 5:.1f} {h - bottom + 14})">{label}</text>')
    s.append("</svg>")
    return "".join(s)


def _cdf_chart(rows: list[dict], field: str, roles: list[str], title: str) -> str:
    """Cumulative distribution of a latency field per model (x: ms, y: share of requests)."""
    series = {r: sorted(x[field] for x in rows if x["role"] == r and x.get(field) is not None and not x.get("error"))
              for r in roles}
    vmax = max((v[-1] for v in series.values() if v), default=1.0) or 1.0
    w, h, left, top, bottom = 420, 240, 50, 15, 35
    pw, ph = w - left - 30, h - top - bottom
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{field} distribution">',
         f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in (0, 0.5, 1.0):
        s.append(f'<text x="{left - 4}" y="{top + ph * (1 - t) + 4:.1f}" font-size="10" text-anchor="end">{t:.0%}</text>')
        s.append(f'<text x="{left + pw * t:.1f}" y="{h - 18}" font-size="10" text-anchor="middle">{vmax * t:.0f}</text>')
    s.append(f'<text x="{left + pw / 2}" y="{h - 4}" font-size="11" text-anchor="middle">{title} (ms), cumulative share of requests</text>')
    for j, r in enumerate(roles):
        xs = series[r]
        if not xs:
            continue
        pts = " ".join(f"{left + pw * v / vmax:.1f},{top + ph * (1 - (i + 1) / len(xs)):.1f}" for i, v in enumerate(xs))
        s.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS[j % len(COLORS)]}" stroke-width="2">'
                 f'<title>{html.escape(r)}</title></polyline>')
    s.append("</svg>")
    return "".join(s)


def render_html(report: dict, rows: list[dict]) -> str:
    """One self-contained HTML file: tables, examples and inline SVG charts (no external JS/CSS)."""
    models = report["models"]
    roles = list(models)
    e = html.escape
    legend = " ".join(f'<span style="color:{COLORS[j % len(COLORS)]}">■</span> {e(r)} ({e(models[r]["model"])})'
                      for j, r in enumerate(roles))
    gate = report.get("gate", {})
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>Eval: {e(title(report, rows))}</title><style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;font-size:13px}"
             "</style></head><body>", f"<h1>Eval: {e(title(report, rows))}</h1>", f"<p>{legend}</p>"]
    if trained := training_line(report):
        parts.append(f"<p>{e(trained.replace('`', ''))}</p>")
    if gate:
        color = "green" if gate["passed"] else "red"
        parts.append(f"<p>Gate: <b style='color:{color}'>{'PASSED' if gate['passed'] else 'FAILED'}</b> "
                     f"{e(' '.join(gate['rules']))}</p><ul>" + "".join(f"<li>{e(f)}</li>" for f in gate["failures"]) + "</ul>")
    if failed := _failed_note(models):
        parts.append(f"<p>{e(failed)}</p>")
    parts += ["<h2>Metrics before vs after</h2>", _bar_chart(models), "<h2>Latency distribution</h2>",
              _cdf_chart(rows, "latency_ms", roles, "latency"),
              _cdf_chart(rows, "ttft_ms", roles, "time to first token"), "<h2>Table</h2><table><tr><th>metric</th>"]
    parts.append("".join(f"<th>{e(r)}</th>" for r in roles) + "</tr>")
    for key, label, scale in TABLE:
        if rows and not _measured(models, key):
            continue
        parts.append(f"<tr><td>{label}</td>" + "".join(f"<td>{_fmt(models[r].get(key), scale)}</td>" for r in roles) + "</tr>")
    cols = _set_cols(models)
    parts.append("</table><h2>Per set</h2><table><tr><th>set</th><th>model</th><th>n</th>"
                 + "".join(f"<th>{c[1]}</th>" for c in cols) + "</tr>")
    for s in sorted({s for m in models.values() for s in m["sets"]}):
        for r in roles:
            sm = models[r]["sets"].get(s)
            if sm:
                parts.append(f"<tr><td>{e(s)}</td><td>{e(r)}</td><td>{sm['n']}</td>"
                             + "".join(f"<td>{_fmt(sm.get(k), sc)}</td>" for k, _, sc in cols) + "</tr>")
    ans, sets = _answers(rows), _sets(rows)
    shown, total = _shown_of(rows)
    parts.append("</table><h2>Examples</h2>")
    if len(shown) < total:
        parts.append(f"<p>{len(shown)} of the {total} prompts; every answer is in answers.jsonl.</p>")
    parts.append("<table><tr><th>prompt</th><th>set</th>" + "".join(f"<th>{e(r)}</th>" for r in roles) + "</tr>")
    for p in shown:
        parts.append(f"<tr><td>{e(p)}</td><td>{e(sets.get(p, ''))}</td>"
                     + "".join(f"<td>{e(ans.get((r, p), ''))}</td>" for r in roles) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"
