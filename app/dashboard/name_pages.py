"""The model-name pages' HTML: every name of the key with its versions (each a link to its model
and the job that trained it) and aliases, and the buttons and form that move an alias
(app/dashboard/names.js calls PUT/DELETE /v1/registered-models/{name}/aliases/{alias}).

Names and aliases are restricted by the API's patterns, job names are not: every user string goes
through `esc`, and names reach the script only as escaped data- attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.dashboard.pages import esc, layout, names_script, number, when
from app.schemas import RegisteredModelRead
from app.services.registry import DEFAULT_ALIAS

# The aliases a version row offers a one-click move to; any other is typed into the form.
QUICK_ALIASES = ("production", "staging")
# The metric shown per version, the first the model's final epoch has.
HEADLINE_METRICS = ("val_accuracy", "accuracy", "val_mae", "mae", "loss")


@dataclass
class VersionDetail:
    """What the dashboard shows of a version's model beside its id."""

    job_id: str | None
    job_name: str | None
    metrics: dict[str, Any]


def names_page(
    names: list[RegisteredModelRead],
    details: dict[str, VersionDetail],
    served: dict[str, int | None],
    *,
    root: str = "",
) -> str:
    sections = "".join(_name_section(n, details, served[n.name], root=root) for n in names)
    body = "<h1>Model names</h1>" + (
        names_script(root=root) + sections
        if names
        else "<p>No model names yet: register a model from its page, submit a job with "
        '<code>"register_as": "iris"</code>, or run <code>fitserve names register NAME '
        "MODEL_ID</code>.</p>"
    )
    return layout("model names", body, root=root)


def name_page(
    name: RegisteredModelRead,
    details: dict[str, VersionDetail],
    served: int | None,
    *,
    root: str = "",
) -> str:
    body = (
        f'<p><a href="{esc(root)}/dashboard/names">all model names</a></p>'
        + names_script(root=root)
        + _name_section(name, details, served, root=root, heading="h1")
    )
    return layout(f"model name {name.name}", body, root=root)


def _name_section(
    name: RegisteredModelRead,
    details: dict[str, VersionDetail],
    served: int | None,
    *,
    root: str,
    heading: str = "h2",
) -> str:
    by_version: dict[int, list[str]] = {}
    for alias, version in name.aliases.items():
        by_version.setdefault(version, []).append(alias)
    rows = "".join(
        _version_row(name.name, v, details.get(v.model_id), by_version.get(v.version, []),
                     served, root=root)
        for v in reversed(name.versions)
    )  # fmt: skip
    how = f"its {DEFAULT_ALIAS} alias" if DEFAULT_ALIAS in name.aliases else "its latest version"
    options = "".join(
        f'<option value="{v.version}">{v.version}</option>' for v in reversed(name.versions)
    )
    link = (
        f'<a href="{esc(root)}/dashboard/names/{esc(name.name)}"><code>{esc(name.name)}</code></a>'
    )
    if served is None:
        return f"""
<section class="name" data-name="{esc(name.name)}">
<{heading}>Model name {link}</{heading}>
<p>No versions left: their models were deleted. Register a model from its page.</p>
</section>"""
    return f"""
<section class="name" data-name="{esc(name.name)}">
<{heading}>Model name {link}</{heading}>
<p><code>/v1/models/{esc(name.name)}/predict</code> answers with version
<span class="served">{esc(served)}</span> ({how}); <code>{esc(name.name)}@N</code> names version
N, <code>{esc(name.name)}@alias</code> the version an alias points at.</p>
<table class="versions"><tr><th class=num>version</th><th>aliases</th><th>model</th><th>job</th>
<th>final epoch</th><th>registered</th><th>point an alias here</th></tr>{rows}</table>
<form data-action="move-alias" data-name="{esc(name.name)}">
<label>Alias <input name="alias" required maxlength="63" placeholder="production"></label>
<label>version <select name="version">{options}</select></label>
<button type="submit">Point the alias</button>
</form>
</section>"""


def _version_row(
    name: str,
    version: Any,
    detail: VersionDetail | None,
    aliases: list[str],
    served: int | None,
    *,
    root: str,
) -> str:
    badges = " ".join(
        f'<span class="badge alias" data-alias="{esc(alias)}">{esc(alias)}</span>'
        f'<button type="button" data-action="remove-alias" data-name="{esc(name)}" '
        f'data-alias="{esc(alias)}" title="remove the alias {esc(alias)}">×</button>'
        for alias in sorted(aliases)
    )
    moves = " ".join(
        f'<button type="button" data-action="move-alias" data-name="{esc(name)}" '
        f'data-alias="{esc(alias)}" data-version="{version.version}">{esc(alias)}</button>'
        for alias in QUICK_ALIASES
        if alias not in aliases
    )
    job = metric = "-"
    if detail is not None:
        if detail.job_id:
            label = detail.job_name or detail.job_id[:8]
            job = f'<a href="{esc(root)}/dashboard/jobs/{esc(detail.job_id)}">{esc(label)}</a>'
        metric = next(
            (
                f"{esc(key)} {number(detail.metrics[key])}"
                for key in HEADLINE_METRICS
                if isinstance(detail.metrics.get(key), int | float)
            ),
            "-",
        )
    mark = ' class="served"' if version.version == served else ""
    return (
        f'<tr data-version="{version.version}"{mark}><td class="num">{version.version}</td>'
        f'<td class="aliases">{badges}</td>'
        f'<td><a class="id" href="{esc(root)}/dashboard/models/{esc(version.model_id)}">'
        f"{esc(version.model_id)}</a></td><td>{job}</td><td>{metric}</td>"
        f"<td>{when(version.created_at)}</td><td>{moves}</td></tr>"
    )
