"""Model names (MLflow's model registry): a key's trained models registered under a name as
versions 1, 2, ... (a number is never given twice, even after its model is deleted), and aliases
(production, staging, ...) that point at one version.

A model reference, wherever a model id is taken (/v1/models/{ref}/..., /v2/models/{ref}...):
- a model id (32 hex characters);
- `name`: its `production` alias when it has one, else its latest version;
- `name@N`: version N; `name@alias`: the version the alias points at.

References are resolved on every request (one indexed query), so an alias move takes effect on
the very next request; the predictor cache is keyed by model id, which never changes meaning.
Another key's names read as absent (404).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import NotFound, Unprocessable
from app.schemas import ALIAS_PATTERN, ModelVersionRead, RegisteredModelRead
from app.schemas import MODEL_NAME_PATTERN as NAME_PATTERN
from app.services import is_id, owned_by
from app.tables import Model, ModelAlias, ModelVersion, RegisteredModel

# Aliases start with a letter, so `name@2` (a version) and `name@production` never collide.
DEFAULT_ALIAS = "production"
_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)


def check_name(name: str, *, loc: tuple[str | int, ...] = ("path", "name")) -> str:
    if not _NAME.fullmatch(name):
        raise Unprocessable(
            f"model name {name!r} is not valid: use 1 to 63 of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit",
            loc=loc,
        )
    if is_id(name):
        raise Unprocessable(
            f"model name {name!r} reads as a model id (32 hex characters); pick another name",
            loc=loc,
        )
    return name


def name_for(label: str) -> str | None:
    """The model name a free-form label (a study's name) registers under: accents dropped,
    lower-cased, each run of other characters one '-', trimmed of '-', '.' and '_' at both ends,
    at most 63 characters ("Iris Search v2" -> "iris-search-v2"). None when nothing valid is
    left, or it reads as a model id."""
    ascii_text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9._-]+", "-", ascii_text.lower()).strip("-._")[:63].rstrip("-._")
    if not name or is_id(name):
        return None
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias):
        raise Unprocessable(
            f"alias {alias!r} is not valid: use 1 to 63 of a-z, 0-9, '_' and '-', starting with "
            "a letter (a number would read as a version)",
            loc=("path", "alias"),
        )
    return alias


def find(
    session: Session, *, owner: str | None, name: str, lock: bool = False
) -> RegisteredModel | None:
    """The caller's name, or None. `lock`: FOR UPDATE on Postgres, so writers of one name's
    versions and aliases take turns (SQLite's BEGIN IMMEDIATE already makes them)."""
    query = select(RegisteredModel).where(
        RegisteredModel.name == name, owned_by(RegisteredModel.owner_id, owner)
    )
    return session.scalar(query.with_for_update() if lock else query)


def _get(session: Session, *, owner: str | None, name: str, lock: bool = False) -> RegisteredModel:
    registered = find(session, owner=owner, name=name, lock=lock)
    if registered is None:
        raise NotFound(f"model name {name!r} not found; GET /v1/registered-models lists yours")
    return registered


def _find_or_make(session: Session, *, owner: str | None, name: str) -> RegisteredModel:
    """The name's row, locked; made when new. Two transactions making one new name at once: the
    second waits on the unique index, fails inside its savepoint, and takes the first's row."""
    registered = find(session, owner=owner, name=name, lock=True)
    if registered is not None:
        return registered
    try:
        with session.begin_nested():
            registered = RegisteredModel(owner_id=owner, name=name)
            session.add(registered)
    except IntegrityError:
        registered = find(session, owner=owner, name=name, lock=True)
        if registered is None:  # made and deleted again in between: never happens today
            raise
    return registered


def register(session: Session, *, owner: str | None, name: str, model_id: str) -> ModelVersion:
    """The model as the name's next version (the name is made on its first version)."""
    check_name(name)
    model = session.scalar(
        select(Model.id).where(Model.id == model_id, owned_by(Model.owner_id, owner))
    )
    if not is_id(model_id) or model is None:
        raise NotFound(f"model {model_id!r} not found; a succeeded job's model_id names one")
    registered = _find_or_make(session, owner=owner, name=name)  # locked: numbers taken in turn
    registered.last_version += 1
    version = ModelVersion(
        registered_model_id=registered.id, version=registered.last_version, model_id=model_id
    )
    session.add(version)
    session.flush()
    return version


def versions(session: Session, registered: RegisteredModel) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.registered_model_id == registered.id)
            .order_by(ModelVersion.version)
        )
    )


def aliases(session: Session, registered: RegisteredModel) -> dict[str, int]:
    rows = session.execute(
        select(ModelAlias.alias, ModelAlias.version)
        .where(ModelAlias.registered_model_id == registered.id)
        .order_by(ModelAlias.alias)
    )
    return {alias: version for alias, version in rows}


def view(session: Session, registered: RegisteredModel) -> RegisteredModelRead:
    """A name as the API and the dashboard show it: its versions and aliases."""
    return RegisteredModelRead(
        name=registered.name,
        versions=[
            ModelVersionRead(version=v.version, model_id=v.model_id, created_at=v.created_at)
            for v in versions(session, registered)
        ],
        aliases=aliases(session, registered),
        created_at=registered.created_at,
    )


def served_version(name: RegisteredModelRead) -> int | None:
    """The version the unversioned name answers with: its production alias, else its latest."""
    if DEFAULT_ALIAS in name.aliases:
        return name.aliases[DEFAULT_ALIAS]
    return name.versions[-1].version if name.versions else None


@dataclass
class Registration:
    """One version of one name that a model is, and the aliases pointing at that version."""

    name: str
    version: int
    aliases: list[str] = field(default_factory=list)


def names_of(session: Session, *, owner: str | None, model_id: str) -> list[Registration]:
    """Every name and version the model is registered as (by name, then version)."""
    rows = session.execute(
        select(RegisteredModel.name, ModelVersion.version, ModelAlias.alias)
        .join(ModelVersion, ModelVersion.registered_model_id == RegisteredModel.id)
        .outerjoin(
            ModelAlias,
            (ModelAlias.registered_model_id == ModelVersion.registered_model_id)
            & (ModelAlias.version == ModelVersion.version),
        )
        .where(ModelVersion.model_id == model_id, owned_by(RegisteredModel.owner_id, owner))
        .order_by(RegisteredModel.name, ModelVersion.version, ModelAlias.alias)
    )
    found: dict[tuple[str, int], Registration] = {}
    for name, version, alias in rows:
        entry = found.setdefault((name, version), Registration(name, version))
        if alias is not None:
            entry.aliases.append(alias)
    return list(found.values())


def list_names(session: Session, *, owner: str | None) -> list[RegisteredModel]:
    return list(
        session.scalars(
            select(RegisteredModel)
            .where(owned_by(RegisteredModel.owner_id, owner))
            .order_by(RegisteredModel.name)
        )
    )


def get(session: Session, *, owner: str | None, name: str) -> RegisteredModel:
    return _get(session, owner=owner, name=name)


def set_alias(
    session: Session, *, owner: str | None, name: str, alias: str, version: int
) -> RegisteredModel:
    """Point `alias` at `version`, in one statement: a request sees the old or the new version."""
    check_alias(alias)
    registered = _get(session, owner=owner, name=name, lock=True)
    exists = session.scalar(
        select(ModelVersion.version).where(
            ModelVersion.registered_model_id == registered.id, ModelVersion.version == version
        )
    )
    if exists is None:
        raise NotFound(f"model name {name!r} has no version {version}")
    moved = session.execute(
        update(ModelAlias)
        .where(ModelAlias.registered_model_id == registered.id, ModelAlias.alias == alias)
        .values(version=version, updated_at=func.now())
    )
    if moved.rowcount == 0:  # type: ignore[attr-defined]
        session.add(ModelAlias(registered_model_id=registered.id, alias=alias, version=version))
    session.flush()
    return registered


def delete_alias(session: Session, *, owner: str | None, name: str, alias: str) -> None:
    registered = _get(session, owner=owner, name=name, lock=True)
    row = session.get(ModelAlias, (registered.id, alias))
    if row is None:
        raise NotFound(f"model name {name!r} has no alias {alias!r}")
    session.delete(row)
    session.flush()


def resolve(
    session: Session, *, owner: str | None, ref: str, version: str | None = None
) -> tuple[str, str]:
    """(model id, version) for a model reference and an optional version or alias (which the
    reference's own `@...` must not also give). A model id has the one version "1"."""
    name, _, suffix = ref.partition("@")
    if suffix and version is not None:
        raise NotFound(f"model {ref!r} names a version already; ask for {name!r} instead")
    wanted = suffix or version
    if is_id(name):
        if wanted not in (None, "1"):
            raise NotFound(f"model {name!r} has no version {wanted!r}; its only version is '1'")
        return name, "1"
    registered = find(session, owner=owner, name=name) if _NAME.fullmatch(name) else None
    if registered is None:
        raise NotFound(f"model {name!r} not found: neither a model id nor one of your model names")
    query = select(ModelVersion.version, ModelVersion.model_id).where(
        ModelVersion.registered_model_id == registered.id
    )
    number = _version_number(wanted)
    if wanted is not None and number is None and not _ALIAS.fullmatch(wanted):
        raise NotFound(
            f"model name {name!r} has no version or alias {wanted!r}: a version is a number "
            "(1, 2, ...), an alias starts with a letter a-z"
        )
    if wanted is None:
        alias = session.scalar(
            select(ModelAlias.version).where(
                ModelAlias.registered_model_id == registered.id, ModelAlias.alias == DEFAULT_ALIAS
            )
        )
        if alias is not None:
            query = query.where(ModelVersion.version == alias)
        else:
            query = query.order_by(ModelVersion.version.desc()).limit(1)
    elif number is not None:
        query = query.where(ModelVersion.version == number)
    else:
        query = query.join(
            ModelAlias,
            (ModelAlias.registered_model_id == ModelVersion.registered_model_id)
            & (ModelAlias.version == ModelVersion.version),
        ).where(ModelAlias.alias == wanted)
    found = session.execute(query).first()  # NO_VERSION (-1) matches no row
    if found is None and wanted is None:
        raise NotFound(
            f"model name {name!r} has no versions left (their models were deleted); register "
            f"one with POST /v1/registered-models/{name}/versions"
        )
    if found is None:
        what = "alias" if number is None else "version"
        raise NotFound(f"model name {name!r} has no {what} {wanted!r}")
    return found.model_id, str(found.version)


# What `_version_number` answers for digits past any version (none is above AliasMove's bound).
NO_VERSION = -1
MAX_VERSION = 2**31 - 1  # model_versions.version is an INTEGER


def _version_number(wanted: str | None) -> int | None:
    """A version as a URL writes it, ASCII digits ('²'.isdigit() too, and int() can't read it);
    NO_VERSION for a number past what the column holds (a 32-bit INTEGER on Postgres, which
    refuses a larger parameter rather than matching nothing). None when `wanted` isn't digits."""
    if wanted is None or not (wanted.isascii() and wanted.isdigit()):
        return None
    if len(wanted) > len(str(MAX_VERSION)) or int(wanted) > MAX_VERSION:
        return NO_VERSION
    return int(wanted)


def aliases_pointing_at(session: Session, *, model_id: str) -> list[str]:
    """`name@alias` for every alias that points at the model (which then can't be deleted)."""
    rows = session.execute(
        select(RegisteredModel.name, ModelAlias.alias)
        .join(ModelAlias, ModelAlias.registered_model_id == RegisteredModel.id)
        .join(
            ModelVersion,
            (ModelVersion.registered_model_id == ModelAlias.registered_model_id)
            & (ModelVersion.version == ModelAlias.version),
        )
        .where(ModelVersion.model_id == model_id)
        .order_by(RegisteredModel.name, ModelAlias.alias)
    )
    return [f"{name}@{alias}" for name, alias in rows]


def delete_versions_of(session: Session, *, model_id: str) -> None:
    """The versions that name a model being deleted (no alias points at them: checked first)."""
    session.execute(delete(ModelVersion).where(ModelVersion.model_id == model_id))
