"""metrics.json, the per-case CSV, the PNG plots, and one HTML report that opens without a server.

The report embeds its plots as data URIs and carries no script, font or style sheet from elsewhere, so it can
be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from datetime import UTC, datetime
from pathlib import Path

METRICS_FILE = "metrics.json"
CASES_FILE = "cases.csv"
REPORT_FILE = "report.html"
MAX_CASE_ROWS = 500

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; } .plots figure { margin: 0; }
.note { color: #555; font-size: 0.9rem; } .warn { color: #a40; }
"""


def write_outputs(out: Path, document: dict, rows: list[dict], plots: dict[str, bytes]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(document, indent=2) + "\n")
    _write_csv(out / CASES_FILE, rows)
    for name, data in plots.items():
        (out / name).write_bytes(data)
    (out / REPORT_FILE).write_text(render_html(document, rows, plots), encoding="utf-8")


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = _columns(rows)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns or ["case"])
        writer.writeheader()
        writer.writerows(rows)


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _interval(figure: dict) -> str:
    ci = figure.get("ci95")
    return "–" if not ci else f"{ci[0]:.3f} – {ci[1]:.3f}"


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _value(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_html(document: dict, rows: list[dict], plots: dict[str, bytes]) -> str:
    e = html.escape
    model = document["model"]
    counts = document["cases"]
    boot = document["bootstrap"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>medimg eval: {e(document['task'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Site evaluation: {e(document['task'])}</h1>",
        f"<p>Model <b>{e(model['id'])}</b> version {model['version']} (sha256 {e(model['sha256'][:12])}…), "
        f"run through the service's own pipeline. {counts['scored']} of {counts['labelled']} labelled cases scored"
        f"; {counts['failed']} failed, {counts['refused']} refused at intake, {counts['ungradable']} ungradable, "
        f"{counts['label_mismatch']} with a reference that does not fit (listed in the CSV, not scored).</p>",
    ]
    if document.get("research_use_only"):
        parts.append("<p class='warn'>This model is for research use only.</p>")
    parts.append("<h2>Figures with 95 % intervals</h2><table><tr><th>metric</th><th>value</th>"
                 "<th>95 % interval</th><th>n</th></tr>")
    for name, figure in document["metrics"].items():
        parts.append(f"<tr><td>{e(name)}</td><td class='num'>{_value(figure['value'])}</td>"
                     f"<td class='num'>{_interval(figure)}</td><td class='num'>{figure['n']}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p class='note'>Bootstrap over {e(boot['unit'])}: {boot['n_resamples']} resamples, seed "
                 f"{boot['seed']}, {e(boot['method'])}.</p>")
    if document.get("operating_points"):
        parts.append("<h2>Operating points</h2><table><tr><th>name</th><th>threshold</th><th>source</th></tr>")
        for name, point in document["operating_points"].items():
            parts.append(f"<tr><td>{e(name)}</td><td class='num'>{point['threshold']:g}</td>"
                         f"<td>{e(point['source'])}</td></tr>")
        parts.append("</table>")
    if document.get("site_operating_point"):
        site = document["site_operating_point"]
        parts.append(f"<p>Chosen on this data: <b>{e(site['name'])}</b> at threshold {site['threshold']:g} "
                     f"({e(site['rule'])}), written to {e(site['written_to'])}.</p>")
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for name, data in plots.items():
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            parts.append(f"<figure><img src='{uri}' alt='{e(name)}' width='480'><figcaption class='note'>"
                         f"{e(name)}</figcaption></figure>")
        parts.append("</div>")
    parts.append(f"<h2>Cases</h2><p class='note'>{len(rows)} cases, also in {CASES_FILE}"
                 f"{f'; the first {MAX_CASE_ROWS} here' if len(rows) > MAX_CASE_ROWS else ''}.</p>")
    columns = _columns(rows)
    if rows:
        parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>")
        for row in rows[:MAX_CASE_ROWS]:
            parts.append("<tr>" + "".join(f"<td>{e(_cell(row.get(c)))}</td>" for c in columns) + "</tr>")
        parts.append("</table>")
    parts.append(f"<p class='note'>Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by medimg eval.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
