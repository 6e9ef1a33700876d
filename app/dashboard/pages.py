"""The dashboard's HTML, built server-side with every user-supplied string escaped.

Job and dataset names, errors, feature names and class labels all come from users: they go
through `esc` (text and attributes) or `json_island` (data for the page's script), never raw.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from importlib import resources
from typing import Any

from app.job_status import TERMINAL

LIVE_JS = resources.files("app.dashboard").joinpath("live.js").read_text(encoding="utf-8")
AUTH_JS = resources.files("app.dashboard").joinpath("auth.js").read_text(encoding="utf-8")
NAMES_JS = resources.files("app.dashboard").joinpath("names.js").read_text(encoding="utf-8")
# Jobs a compare view overlays at most: two legend lines a job fill the chart at six.
MAX_COMPARE = 6
# Tableau's palette, one colour a job in the compare view.
JOB_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #1d2733; color: #fff; padding: 10px 24px; }
header a { color: #fff; text-decoration: none; font-weight: 600; margin-right: 18px; }
main { padding: 16px 24px; max-width: 1400px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 16px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e5e8; text-align: left; }
th { background: #eef0f3; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .id { font-family: ui-monospace, monospace; font-size: 12px; }
.badge { padding: 1px 8px; border-radius: 9px; font-size: 12px; background: #ddd; }
.badge.queued { background: #e8e8e8; } .badge.running { background: #cfe3ff; }
.badge.succeeded { background: #c9f0d0; } .badge.failed { background: #ffd0d0; }
.badge.cancelling, .badge.cancelled { background: #fbe7c6; }
.badge.complete, .badge.completed { background: #c9f0d0; } .badge.pruned { background: #e0e0e0; }
tr.best td { background: #fff0f0; font-weight: 600; }
tr.served td { background: #eef7ee; }
.badge.alias { background: #d8e4ff; margin-left: 4px; }
td.aliases button { border: none; background: none; cursor: pointer; padding: 0 2px; }
section.name { margin-bottom: 24px; }
h1 code, h2 code { font-size: 0.9em; }
.badge.warning { background: #fff0c0; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #e3e5e8; padding: 8px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 640px; height: 260px; display: block; }
.error { color: #a40000; white-space: pre-wrap; }
.warning { color: #7a4d00; background: #fff4d6; padding: 6px 10px; white-space: pre-wrap; }
header a#sign-out { float: right; font-weight: 400; margin-right: 0; }
textarea { width: 640px; height: 120px; font-family: ui-monospace, monospace; }
"""


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def json_island(element_id: str, data: Any) -> str:
    """Data for the page's script. `<`, `>` and `&` are escaped inside the JSON so no string can
    close the script element."""
    text = (
        json.dumps(data, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def layout(title: str, body: str, *, root: str = "", refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · fitserve</title>{meta}<style>{STYLE}</style>"
        f"<script>{AUTH_JS}</script></head><body>"
        f'<header><a href="{esc(root)}/dashboard">fitserve</a>'
        f'<a href="{esc(root)}/dashboard">jobs</a>'
        f'<a href="{esc(root)}/dashboard/studies">studies</a>'
        f'<a href="{esc(root)}/dashboard/names">model names</a>'
        f'<a href="{esc(root)}/docs">API docs</a>'
        '<a href="#" id="sign-out" hidden>sign out</a>'
        f"</header><main>{body}</main></body></html>"
    )


def sign_in_page(*, root: str = "") -> str:
    """What a page answers without a key where keys are required: a form for one, and the
    script that fetches the page again with it (app/dashboard/auth.js). No data of anyone's."""
    body = """
<h1>Sign in</h1>
<form id="sign-in">
<p>This server requires an API key (create one with <code>fitserve keys create NAME</code>).
It is kept in this browser tab's session storage until you sign out or close the tab, and sent
as <code>Authorization: Bearer</code> with the dashboard's requests.</p>
<label>API key <input type="password" name="key" autocomplete="off" required autofocus></label>
<button type="submit">Sign in</button>
</form>
<p class="error" id="sign-in-error"></p>"""
    return layout("sign in", body, root=root)


def names_script(*, root: str) -> str:
    """The model-name buttons' and forms' script (names.js), where it sends its calls (the API
    under `root`) and the line it reports refusals on."""
    return (
        '<p class="error" id="names-error"></p>'
        f'<span id="names-api" data-api="{esc(root)}/v1/registered-models/" hidden></span>'
        f"<script>{NAMES_JS}</script>"
    )


def badge(status: str) -> str:
    return f'<span class="badge {esc(status)}" id="status">{esc(status)}</span>'


def jobs_page(jobs: list[Any], *, root: str = "") -> str:
    rows = []
    for job in jobs:
        loss = job.metrics.loss if job.metrics is not None else None
        accuracy = job.metrics.accuracy if job.metrics is not None else None
        model = (
            f'<a class="id" href="{esc(root)}/dashboard/models/{esc(job.model_id)}">'
            f"{esc(job.model_id[:8])}</a>"
            if job.model_id
            else ""
        )
        flag = (
            f' <span class="badge warning" title="{esc(job.warning)}">warning</span>'
            if job.warning
            else ""
        )
        rows.append(
            "<tr>"
            f'<td><input type="checkbox" name="job" value="{esc(job.id)}" form="compare" '
            f'aria-label="compare {esc(job.id[:8])}"></td>'
            f'<td><a class="id" href="{esc(root)}/dashboard/jobs/{esc(job.id)}">'
            f"{esc(job.id[:8])}</a></td>"
            f"<td>{esc(job.name or '')}</td>"
            f'<td><span class="badge {esc(job.status)}">{esc(job.status)}</span>'
            f"{flag}</td>"
            f'<td class="num">{job.epoch} / {job.epochs}</td>'
            f'<td class="num">{number(loss)}</td><td class="num">{number(accuracy)}</td>'
            f"<td>{model}</td><td>{when(job.created_at)}</td>"
            "</tr>"
        )
    table = (
        f'<form id="compare" method="get" action="{esc(root)}/dashboard/compare">'
        f"<button type=submit>Compare the selected jobs</button> (up to {MAX_COMPARE})</form>"
        "<table><tr><th></th><th>job</th><th>name</th><th>status</th><th class=num>epoch</th>"
        "<th class=num>loss</th><th class=num>accuracy</th><th>model</th><th>submitted</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else "<p>No jobs yet: submit one with <code>fitserve train spec.json --dataset iris</code>"
        " or <code>POST /v1/jobs</code>.</p>"
    )
    active = any(job.status not in TERMINAL for job in jobs)
    return layout("jobs", f"<h1>Jobs</h1>{table}", root=root, refresh=5 if active else None)


METRIC_COLUMNS = ("loss", "accuracy", "mae", "val_loss", "val_accuracy", "val_mae", "seconds")
# What the compare view reads of an epoch: its number and the curves' figures.
CURVE_FIELDS = {"epoch", *METRIC_COLUMNS[:6]}


def job_page(
    job: Any, history: list[dict[str, Any]], *, next_after: int | None = None, root: str = ""
) -> str:
    """`history`: the first page of the job's epochs; `next_after`: where the script reads the
    next page from GET /v1/jobs/{id}/metrics (None: no more), before it follows the stream."""
    model_href = f"{root}/dashboard/models/{job.model_id}" if job.model_id else "#"
    # The stream resumes after the rows the page holds, so nothing is drawn twice.
    after = history[-1]["epoch"] if history else 0
    events_url = f"{root}/v1/jobs/{job.id}/events"
    metrics_url = f"{root}/v1/jobs/{job.id}/metrics"
    next_page = "" if next_after is None else str(next_after)
    name = f"{esc(job.name)} · " if job.name else ""
    columns = [c for c in METRIC_COLUMNS if any(row.get(c) is not None for row in history)]
    recent = history[-10:]
    table_rows = "".join(
        f'<tr><td class="num">{row["epoch"]}</td>'
        + "".join(f'<td class="num">{number(row.get(c))}</td>' for c in columns)
        + "</tr>"
        for row in reversed(recent)
    )
    table = (
        "<table><tr><th>epoch</th>"
        + "".join(f'<th class="num">{esc(c)}</th>' for c in columns)
        + f"</tr>{table_rows}</table>"
        if recent
        else ""
    )
    body = f"""
<h1>Job <span class="id">{esc(job.id)}</span> {badge(job.status)}</h1>
<section id="job" data-status="{esc(job.status)}" data-epochs="{esc(job.epochs)}"
  data-events="{esc(events_url)}" data-after="{after}"
  data-metrics="{esc(metrics_url)}" data-next="{next_page}"
  data-models="{esc(root)}/dashboard/models/">
<p>{name}epoch <span id="progress">{job.epoch} / {job.epochs}</span>
 · device {esc(job.device or "-")} · attempts {job.attempts}
 · model <a class="id" id="model" href="{esc(model_href)}">{esc(job.model_id or "-")}</a></p>
<p class="error" id="error">{esc(job.error or "")}</p>
{warning_note(job.warning)}
<div class="charts">
<figure><figcaption>Loss</figcaption><svg class="chart" id="chart-loss"></svg></figure>
<figure><figcaption>Accuracy / MAE</figcaption><svg class="chart" id="chart-metric"></svg></figure>
<figure><figcaption>Gradient norm per layer (log scale): vanishing sinks, exploding climbs
</figcaption><svg class="chart" id="chart-grads"></svg></figure>
</div>
<h2>Latest epochs</h2>{table}
</section>
{json_island("history", history)}
<script>{LIVE_JS}</script>"""
    return layout(f"job {job.id[:8]}", body, root=root)


def warning_note(warning: str | None) -> str:
    return f'<p class="warning" id="warning">Warning: {esc(warning)}</p>' if warning else ""


def compare_page(jobs: list[tuple[Any, list[dict[str, Any]]]], *, root: str = "") -> str:
    """The curves of the picked jobs overlaid: one colour a job, validation dashed. Each job comes
    with its curve's rows (thinned: app/services/jobs.py get_curve), the last epoch last."""
    rows, data = [], []
    for i, (job, history) in enumerate(jobs):
        colour = JOB_COLOURS[i % len(JOB_COLOURS)]
        label = job.name or job.id[:8]
        last = history[-1] if history else {}
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colour}">&nbsp;&nbsp;&nbsp;</span>'
            f'</td><td><a class="id" href="{esc(root)}/dashboard/jobs/{esc(job.id)}">'
            f"{esc(job.id[:8])}</a></td><td>{esc(job.name or '')}</td>"
            f'<td><span class="badge {esc(job.status)}">{esc(job.status)}</span></td>'
            f'<td class="num">{job.epoch} / {job.epochs}</td>'
            + "".join(f'<td class="num">{number(last.get(c))}</td>' for c in METRIC_COLUMNS[:6])
            + f"<td>{esc(job.warning or '')}</td></tr>"
        )
        data.append({"id": job.id, "label": label, "colour": colour, "rows": history})
    header = "".join(f'<th class="num">{c}</th>' for c in METRIC_COLUMNS[:6])
    body = f"""
<h1>Compare {len(jobs)} jobs</h1>
<table id="compared"><tr><th></th><th>job</th><th>name</th><th>status</th>
<th class="num">epoch</th>{header}<th>warning</th></tr>{"".join(rows)}</table>
<section id="compare">
<div class="charts">
<figure><figcaption>Loss (validation dashed)</figcaption><svg class="chart" id="chart-loss">
</svg></figure>
<figure><figcaption>Accuracy / MAE (validation dashed)</figcaption>
<svg class="chart" id="chart-metric"></svg></figure>
</div>
</section>
{json_island("compared-jobs", data)}
<script>{LIVE_JS}</script>"""
    return layout("compare", body, root=root)


def model_names(model_id: str, names: list[Any], *, root: str = "") -> str:
    """The names and versions a model is registered as, and a form to register it under one."""
    registered = ", ".join(
        f'<a href="{esc(root)}/dashboard/names/{esc(r.name)}"><code>{esc(r.name)}</code></a> '
        f"version {r.version}"
        + "".join(f' <span class="badge alias">{esc(alias)}</span>' for alias in r.aliases)
        for r in names
    )
    return f"""
<h2>Names</h2>
<p id="registered-as">{"Registered as " + registered if names else "Not registered under a name."}
</p>
<form data-action="register" data-model="{esc(model_id)}">
<label>Register as the next version of <input name="name" required maxlength="63"
 placeholder="iris" title="1 to 63 of a-z, 0-9, '.', '_' and '-', starting with a-z or 0-9">
</label> <button type="submit">Register</button>
</form>
{names_script(root=root)}"""


def model_page(model: Any, *, feature_names: list[str], names: list[Any], root: str = "") -> str:
    summary = model.summary
    layer_rows = "".join(
        f"<tr><td>{esc(layer.name)}</td><td>{esc(layer.type)}</td>"
        f"<td><code>{esc(tuple(layer.output_shape))}</code></td>"
        f'<td class="num">{layer.params:,}</td></tr>'
        for layer in summary.layers
    )
    metrics = model.metrics.model_dump(exclude_none=True) if model.metrics is not None else {}
    metric_text = " · ".join(
        f"{esc(k)} {number(v)}" for k, v in metrics.items() if k in METRIC_COLUMNS
    )
    classes = ", ".join(esc(c) for c in model.classes or []) or "-"
    header = ",".join(feature_names)
    body = f"""
<h1>Model <span class="id">{esc(model.id)}</span></h1>
<p>{esc(model.task)} · trained by job
 <a class="id" href="{esc(root)}/dashboard/jobs/{esc(model.job_id)}">{esc(model.job_id)}</a>
 · classes: {classes}</p>
<p>Final epoch: {metric_text or "-"}</p>
{model_names(model.id, names, root=root)}
<h2>Summary</h2>
<table><tr><th>layer</th><th>type</th><th>output shape</th><th>params</th></tr>{layer_rows}
<tr><th colspan="3">total params</th><th class="num">{summary.total_params:,}</th></tr>
<tr><td colspan="3">trainable</td><td class="num">{summary.trainable_params:,}</td></tr>
<tr><td colspan="3">non-trainable</td><td class="num">{summary.non_trainable_params:,}</td></tr>
</table>
<h2>Predict</h2>
<form id="predict" data-url="{esc(root)}/v1/models/{esc(model.id)}/predict">
<p>One input row per line, {len(feature_names)} comma-separated numbers:
<code>{esc(header)}</code></p>
<textarea name="inputs" required></textarea><br><button type="submit">Predict</button>
</form>
<p class="error" id="predict-error"></p>
<table id="predict-output"></table>
<script>
document.getElementById("predict").addEventListener("submit", function (event) {{
  event.preventDefault();
  var form = event.target, out = document.getElementById("predict-output");
  var error = document.getElementById("predict-error");
  var inputs = form.inputs.value.trim().split(/\\n+/).map(function (line) {{
    return line.split(",").map(Number);
  }});
  error.textContent = ""; out.textContent = "";
  var headers = window.fitserveAuth.headers({{"Content-Type": "application/json"}});
  fetch(form.dataset.url, {{method: "POST", headers: headers, credentials: "omit",
                           body: JSON.stringify({{inputs: inputs}})}})
    .then(function (r) {{ return r.json().then(function (body) {{ return [r.ok, body]; }}); }})
    .then(function (result) {{
      if (!result[0]) {{ error.textContent = result[1].detail; return; }}
      result[1].outputs.forEach(function (row, i) {{
        var tr = out.insertRow();
        tr.insertCell().textContent = inputs[i].join(", ");
        if (result[1].predictions) tr.insertCell().textContent = result[1].predictions[i];
        tr.insertCell().textContent = row.map(function (v) {{ return v.toFixed(4); }}).join(", ");
      }});
    }});
}});
</script>"""
    return layout(f"model {model.id[:8]}", body, root=root)
