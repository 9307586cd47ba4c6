"""The run report (`fedsecure report`, and `report.html` beside `audit.html` in the demo):
what an operator hands to a privacy officer or a colleague after a run — rounds, who
trained and what was aggregated, each client's held-out and public-question accuracy and
ε spent over the rounds, the ALIGN stage's router weights and the policy's accuracy curve.

It reads only the server's metrics log (``STATE/metrics.jsonl``), so it shows what the
server learnt, never more. Every number in the page is also in the JSON (``--json``).
Charts are inline SVG (no scripts, no network), readable in any browser and in print.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The metrics log's records (one JSON object per line); raises ValueError naming a bad line."""
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON: {exc.msg}") from exc
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{lineno}: not a JSON object")
        records.append(rec)
    return records


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def summarise(records: Sequence[Mapping[str, Any]], *, run_id: str | None = None) -> dict[str, Any]:
    """The report's numbers: per round and per client, from the newest run (or ``run_id``)."""
    runs = [r["run_id"] for r in records if isinstance(r.get("run_id"), str)]
    if not runs:
        raise ValueError("the metrics log holds no run")
    run = run_id or runs[-1]
    mine = [r for r in records if r.get("run_id") == run]
    if not mine:
        raise ValueError(f"the metrics log holds nothing of run {run!r}")
    rounds: dict[int, dict[str, Any]] = {}
    clients: dict[str, dict[int, dict[str, float]]] = {}
    for r in mine:
        rnd = r.get("round")
        if not isinstance(rnd, int):
            continue
        row = rounds.setdefault(rnd, {"round": rnd, "trained": [], "uploaded": [], "aggregated": {}})
        phase, client = r.get("phase"), r.get("client")
        if phase == "train" and isinstance(client, str):
            if r.get("uploaded"):
                row["uploaded"].append(client)
                continue
            row["trained"].append(client)
            cell = clients.setdefault(client, {}).setdefault(rnd, {})
            reported = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
            for key in ("heldout_accuracy", "epsilon", "epsilon_budget", "loss_first", "loss_last", "steps"):
                if (v := _finite(reported.get(key))) is not None:
                    cell[key] = v
        elif phase == "ledger" and isinstance(client, str):
            cell = clients.setdefault(client, {}).setdefault(rnd, {})
            for key in ("epsilon", "epsilon_budget"):
                if (v := _finite(r.get(key))) is not None:
                    cell[key] = v
        elif phase == "score" and isinstance(client, str):
            cell = clients.setdefault(client, {}).setdefault(rnd, {})
            if (v := _finite(r.get("ranking_accuracy"))) is not None:
                cell["public_pairwise"] = v
            # top-1 over all answers, weighted by how many questions of each type were judged
            counts = {k[6:]: n for k, n in r.items() if k.startswith("count.") and _finite(n)}
            top1 = [(r.get(f"top1_all.{t}"), n) for t, n in counts.items() if _finite(r.get(f"top1_all.{t}")) is not None]
            if top1 and sum(n for _, n in top1) > 0:
                cell["public_top1"] = sum(v * n for v, n in top1) / sum(n for _, n in top1)
        elif phase == "aggregate":
            row["aggregated"] = {k.split(".", 1)[1]: int(v) for k, v in r.items() if k.startswith("contributors.")}
        elif phase == "align":
            row["align"] = {k: r[k] for k in ("steps", "skipped", "monitor_accuracy", "monitor_by_type",
                                              "monitor_type_mean", "start_accuracy", "start_by_type", "promoted",
                                              "fallen", "fused_lift", "groups_left_out", "best_round", "best_type_mean", "reward_level", "router_weights",
                                              "left_out", "stopped", "error") if k in r}
        elif phase == "personalise" and isinstance(client, str):
            reported = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
            row.setdefault("personalised", {})[client] = {k: v for k, v in reported.items()
                                                          if k.startswith("heldout_accuracy") or k == "epsilon"}
    return {"run_id": run, "rounds": [rounds[k] for k in sorted(rounds)],
            "clients": {c: {str(k): v for k, v in sorted(by_round.items())} for c, by_round in sorted(clients.items())}}


def _per_type(align: Mapping[str, object]) -> str:
    """'colour 0.40 → 0.55, …' from an ALIGN round's record ('' when not measured)."""
    start, now = align.get("start_by_type"), align.get("monitor_by_type")
    if not isinstance(start, Mapping) or not isinstance(now, Mapping):
        return ""
    cells = []
    for t in sorted(start, key=str):
        a, b = _finite(start[t]), _finite(now.get(t))
        if a is not None and b is not None:
            cells.append(f"{t} {a:.2f} → {b:.2f}")
    return ", ".join(cells)


def _promotion(align: Mapping[str, object]) -> str:
    """Which policy the ALIGN stage exports after this round, and whether this round's won."""
    best = align.get("best_round")
    if not isinstance(best, int):
        return ""
    which = "the start (alignment has not helped)" if best < 0 else f"round {best + 1}'s"
    return f"{'yes' if align.get('promoted') else 'no'}; exported: {which}"


def _policy_series(rounds: Sequence[Mapping[str, object]]) -> dict[str, list[tuple[float, float]]]:
    """Per question type and type-averaged, held-out accuracy by round, from the start."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rounds:
        align = r.get("align")
        if not isinstance(align, Mapping):
            continue
        x = _finite(r.get("round"))
        for when, by_type in ((0.0, align.get("start_by_type")), (x, align.get("monitor_by_type"))):
            if when is None or not isinstance(by_type, Mapping) or (when == 0.0 and any(series.values())):
                continue
            values = {str(t): v for t, v in ((t, _finite(v)) for t, v in by_type.items()) if v is not None}
            for t, v in values.items():
                series.setdefault(t, []).append((when, v))
            if values:
                series.setdefault("type mean", []).append((when, sum(values.values()) / len(values)))
    return series


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], *, y_label: str,
               y_range: tuple[float, float] | None = None, width: int = 520, height: int = 260) -> str:
    """An inline SVG line chart of ``series`` (name -> (x, y) points), with a legend."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return f'<p class="empty">{html.escape(title)}: not reported to the server in this run</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = y_range or (min(ys), max(ys))
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    left, right, top, bottom = 56, 150, 28, 36
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}"><title>{html.escape(title)}</title>',
           f'<text x="{left}" y="18" class="chart-title">{html.escape(title)}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#444"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#444"/>']
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" class="tick">{y:.3g}</text>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{x:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle" class="tick">round</text>')
    out.append(f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" text-anchor="middle" '
               f'class="tick">{html.escape(y_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = sorted(pts)
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(pts))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        ly = top + 14 + 16 * i
        out.append(f'<rect x="{left + pw + 12}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{left + pw + 26}" y="{ly}" class="legend">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _series(summary: Mapping[str, Any], key: str) -> dict[str, list[tuple[float, float]]]:
    return {c: [(float(r), v[key]) for r, v in by_round.items() if key in v]
            for c, by_round in summary["clients"].items() if any(key in v for v in by_round.values())}


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "—"
    return "—" if value is None else str(value)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#111}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #bbb;padding:.25em .6em;
text-align:left}th{background:#f1f1f1}.charts{display:flex;flex-wrap:wrap;gap:1em}
.chart-title{font-weight:600;font-size:13px}.tick,.legend{font-size:11px}.empty{color:#777}
.note{color:#555;font-size:.9em}"""


def render_html(summary: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    rounds = summary["rounds"]
    sections = [f"<h1>Run report: {html.escape(summary['run_id'])}</h1>",
                f'<p class="note">{len(rounds)} rounds, {len(summary["clients"])} clients. Numbers are what the '
                "server recorded (its metrics log); each client's ε is the head it reported from its own ledger "
                "(check the ledgers themselves in audit.html); held-out accuracy appears only for clients that "
                "report it (one uploading adapters sends ciphertexts, not metrics). Every number is also in the "
                "JSON.</p>",
                "<h2>Rounds</h2>",
                _table(["round", "reported training metrics", "uploaded (CKKS)", "aggregated groups (contributors)",
                        "ALIGN steps", "policy accuracy (held-out)", "per type: start → this round",
                        "promoted (exported)", "stopped"],
                       [[r["round"], sorted(r["trained"]), sorted(r["uploaded"]), r["aggregated"],
                         r.get("align", {}).get("steps"), r.get("align", {}).get("monitor_accuracy"),
                         _per_type(r.get("align", {})), _promotion(r.get("align", {})),
                         r.get("align", {}).get("stopped") or r.get("align", {}).get("error")] for r in rounds])]
    budgets = [v.get("epsilon_budget", v.get("epsilon", 0.0)) for by in summary["clients"].values() for v in by.values()]
    charts = [line_chart("ε spent (reported; from 0 to the budget)", _series(summary, "epsilon"), y_label="ε",
                         y_range=(0.0, max(budgets, default=1.0) or 1.0)),
              line_chart("Held-out pairwise accuracy", _series(summary, "heldout_accuracy"), y_label="accuracy",
                         y_range=(0.0, 1.0)),
              line_chart("Public questions: pairwise accuracy", _series(summary, "public_pairwise"),
                         y_label="accuracy", y_range=(0.0, 1.0))]
    charts.append(line_chart("Policy accuracy per type (held-out; round 0 = before ALIGN)", _policy_series(rounds),
                             y_label="exact match", y_range=(0.0, 1.0)))
    sections += ["<h2>Curves</h2>", f'<div class="charts">{"".join(charts)}</div>', "<h2>Clients per round</h2>"]
    columns = [("held-out acc.", "heldout_accuracy"), ("public pairwise", "public_pairwise"),
               ("public top-1", "public_top1"), ("ε", "epsilon"), ("ε budget", "epsilon_budget"),
               ("loss first", "loss_first"), ("loss last", "loss_last")]
    cells = [(c, int(r), v) for c, by_round in summary["clients"].items() for r, v in by_round.items()]
    shown = [(title, key) for title, key in columns if any(key in v for _, _, v in cells)]  # no all-empty column
    sections.append(_table(["client", "round", *(t for t, _ in shown)],
                           [[c, r, *(v.get(k) for _, k in shown)] for c, r, v in cells]))
    weights = [(r["round"], t, w) for r in rounds for t, w in sorted(r.get("align", {}).get("router_weights", {}).items())]
    if weights:
        sections += ["<h2>Router weights per question type</h2>",
                     _table(["round", "question type", "weights"], weights)]
    personal = [(r["round"], c, v) for r in rounds for c, v in sorted(r.get("personalised", {}).items())]
    if personal:
        sections += ["<h2>Personalisation (TAP)</h2>", _table(["round", "client", "metrics"], personal)]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Run report '
            f'{html.escape(summary["run_id"])}</title><style>{STYLE}</style></head><body>{"".join(sections)}'
            "</body></html>")


def write_report(*, metrics: Path, out: Path, json_out: Path | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Write ``report.html`` (and the JSON) from a server's metrics log; returns the summary."""
    summary = summarise(read_metrics(metrics), run_id=run_id)
    out.write_text(render_html(summary), encoding="utf-8")
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary
