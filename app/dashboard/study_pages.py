"""The study pages' HTML: the studies table, and a study's trials with their objective curves
overlaid and the objective against each searched parameter, drawn as inline SVG on the server.

A running study's page reloads itself every few seconds (as the jobs table does), so the curves
grow as the trials' epochs are recorded. Every user string goes through `esc`.
"""

from __future__ import annotations

import math
from typing import Any

from app.dashboard.pages import esc, layout, number, when
from app.studies.schemas import StudyRead, StudySummary, TrialRead

WIDTH, HEIGHT, PAD = 640, 260, 40
STATE_COLOURS = {
    "complete": "#1f77b4",
    "running": "#2ca02c",
    "pruned": "#b0b0b0",
    "failed": "#d62728",
    "cancelled": "#e0a040",
}
BEST_COLOUR = "#d62728"


def studies_page(studies: list[StudySummary], *, root: str = "") -> str:
    rows = "".join(
        "<tr>"
        f'<td><a class="id" href="{esc(root)}/dashboard/studies/{esc(s.id)}">{esc(s.id[:8])}'
        f"</a></td><td>{esc(s.name)}</td>"
        f'<td><span class="badge {esc(s.status)}">{esc(s.status)}</span></td>'
        f'<td class="num">{s.counts.complete + s.counts.pruned + s.counts.failed} / '
        f"{s.n_trials}</td><td>{esc(s.objective.metric)} ({esc(s.objective.direction)})</td>"
        f'<td class="num">{number(s.best_trial.value if s.best_trial else None)}</td>'
        f"<td>{when(s.created_at)}</td></tr>"
        for s in studies
    )
    table = (
        "<table><tr><th>study</th><th>name</th><th>status</th><th class=num>trials</th>"
        f"<th>objective</th><th class=num>best</th><th>created</th></tr>{rows}</table>"
        if studies
        else "<p>No studies yet: start one with <code>POST /v1/studies</code>.</p>"
    )
    active = any(s.status == "running" for s in studies)
    return layout("studies", f"<h1>Studies</h1>{table}", root=root, refresh=5 if active else None)


def study_page(
    study: StudyRead, curves: dict[int, list[tuple[int, float]]], *, root: str = ""
) -> str:
    """`curves`: trial number -> [(epoch, objective)] as recorded so far."""
    best = study.best_trial.number if study.best_trial else None
    rows = "".join(_trial_row(study, trial, best, root) for trial in study.trials)
    params = list(study.search_space)
    header = "".join(f"<th>{esc(p)}</th>" for p in params)
    scatters = "".join(
        f"<figure><figcaption>{esc(study.objective.metric)} against {esc(p)}</figcaption>"
        f"{_scatter(study, p, best)}</figure>"
        for p in params
    )
    body = f"""
<h1>Study <span class="id">{esc(study.id)}</span>
<span class="badge {esc(study.status)}" id="status">{esc(study.status)}</span></h1>
<p>{esc(study.name)} · {esc(study.sampler)} sampler · {esc(study.pruner)} pruner ·
objective {esc(study.objective.metric)} ({esc(study.objective.direction)}) ·
trials {len(study.trials)} / {study.n_trials}, at most {study.max_parallel} at once</p>
<p id="best">best: {_best_text(study, root)}</p>
<p id="registered">{_registered_text(study, root)}</p>
<div class="charts">
<figure><figcaption>{esc(study.objective.metric)} per epoch, every trial (best in red, pruned
grey)</figcaption>{_curves(study, curves, best)}</figure>
{scatters}
</div>
<h2>Trials</h2>
<table id="trials"><tr><th class=num>#</th><th>state</th><th class=num>value</th>
<th class=num>epochs</th>{header}<th>job</th><th>model</th></tr>{rows}</table>"""
    refresh = 3 if study.status == "running" else None
    return layout(f"study {study.id[:8]}", body, root=root, refresh=refresh)


def _best_text(study: StudyRead, root: str) -> str:
    trial = study.best_trial
    if trial is None:
        return "none yet"
    model = (
        f' · model <a class="id" href="{esc(root)}/dashboard/models/{esc(trial.model_id)}">'
        f"{esc(trial.model_id)}</a>"
        if trial.model_id
        else ""
    )
    return f"trial {trial.number}, {esc(study.objective.metric)} {number(trial.value)}{model}"


def _registered_text(study: StudyRead, root: str) -> str:
    """Where the best model goes (or went) under its model name."""
    if study.register_as is None:
        return ""
    name = esc(study.register_as)
    link = f'<a href="{esc(root)}/dashboard/names/{name}"><code>{name}</code></a>'
    if study.registered_version is not None:
        return f"best model registered as {link} version {study.registered_version}"
    if study.status == "running":
        return (
            f"the best model is registered as the next version of {link} when the study completes"
        )
    why = "no trial completed" if study.status == "completed" else "the study was cancelled"
    return f"nothing registered under {link}: {why}"


def _trial_row(study: StudyRead, trial: TrialRead, best: int | None, root: str) -> str:
    mark = ' class="best"' if trial.number == best else ""
    cells = "".join(f"<td>{esc(_short(trial.params.get(p)))}</td>" for p in study.search_space)
    model = (
        f'<a class="id" href="{esc(root)}/dashboard/models/{esc(trial.model_id)}">'
        f"{esc(trial.model_id[:8])}</a>"
        if trial.model_id
        else ""
    )
    return (
        f"<tr{mark}><td class=num>{trial.number}{' ★' if trial.number == best else ''}</td>"
        f'<td><span class="badge {esc(trial.state)}">{esc(trial.state)}</span></td>'
        f'<td class="num">{number(trial.value)}</td><td class="num">{trial.epochs_run}</td>'
        f'{cells}<td><a class="id" href="{esc(root)}/dashboard/jobs/{esc(trial.job_id)}">'
        f"{esc(trial.job_id[:8])}</a></td><td>{model}</td></tr>"
    )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scale(low: float, high: float, size: float, *, log: bool = False) -> Any:
    if log:
        low, high = math.log10(low), math.log10(high)
    span = (high - low) or 1.0

    def place(value: float) -> float:
        v = math.log10(value) if log else value
        return PAD + (v - low) / span * (size - 2 * PAD)

    return place


def _y_scale(values: list[float]) -> Any:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return lambda v: HEIGHT - PAD - (v - low) / span * (HEIGHT - 2 * PAD)


def _svg(inner: str, label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(label)}">'
        f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" '
        f'fill="none" stroke="#ccc"/>{inner}</svg>'
    )


def _curves(study: StudyRead, curves: dict[int, list[tuple[int, float]]], best: int | None) -> str:
    points = [p for curve in curves.values() for p in curve]
    if not points:
        return _svg("", "no epochs yet")
    epochs = max(e for e, _ in points)
    x = _scale(1, max(epochs, 2), WIDTH)
    y = _y_scale([v for _, v in points])
    states = {t.number: t.state for t in study.trials}
    lines = []
    for number_, curve in sorted(curves.items(), key=lambda kv: kv[0] == best):
        if not curve:
            continue
        colour = BEST_COLOUR if number_ == best else STATE_COLOURS.get(states.get(number_, ""))
        width = 3 if number_ == best else 1.2
        path = " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in curve)
        lines.append(
            f'<polyline class="trial" data-trial="{number_}" points="{path}" fill="none" '
            f'stroke="{colour}" stroke-width="{width}"><title>trial {number_}</title></polyline>'
        )
    labels = (
        f'<text x="{PAD}" y="{HEIGHT - 10}" font-size="11">epoch 1</text>'
        f'<text x="{WIDTH - PAD - 50}" y="{HEIGHT - 10}" font-size="11">epoch {epochs}</text>'
    )
    return _svg("".join(lines) + labels, "objective per epoch")


def _scatter(study: StudyRead, param: str, best: int | None) -> str:
    done = [t for t in study.trials if t.value is not None and param in t.params]
    if not done:
        return _svg("", f"no values for {param} yet")
    spec = study.search_space[param]
    values = [t.params[param] for t in done]
    if "choice" in spec:
        choices = [repr(c) for c in spec["choice"]]
        step = (WIDTH - 2 * PAD) / max(len(choices), 1)

        def x(value: Any) -> float:
            return PAD + step * (choices.index(repr(value)) + 0.5)

        ticks = "".join(
            f'<text x="{PAD + step * (i + 0.5):.1f}" y="{HEIGHT - 10}" font-size="11" '
            f'text-anchor="middle">{esc(c)}</text>'
            for i, c in enumerate(choices)
        )
    else:
        low, high = spec.get("int") or spec.get("float") or (0, 1)
        x = _scale(float(low), float(high), WIDTH, log=bool(spec.get("log")))
        ticks = (
            f'<text x="{PAD}" y="{HEIGHT - 10}" font-size="11">{_short(low)}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 10}" font-size="11" text-anchor="end">'
            f"{_short(high)}{' (log)' if spec.get('log') else ''}</text>"
        )
    y = _y_scale([t.value for t in done if t.value is not None])
    dots = "".join(
        f'<circle cx="{x(v):.1f}" cy="{y(t.value):.1f}" r="{6 if t.number == best else 4}" '
        f'fill="{BEST_COLOUR if t.number == best else STATE_COLOURS[t.state]}">'
        f"<title>trial {t.number}: {esc(_short(v))} → {number(t.value)}</title></circle>"
        for t, v in zip(done, values, strict=True)
        if t.value is not None
    )
    return _svg(dots + ticks, f"objective against {param}")
