"""Dataset use cases: create (JSON, or an uploaded CSV / Parquet / Arrow file), list, read,
delete, resolve, and the built-ins."""

from __future__ import annotations

from functools import cache
from typing import IO, Any

import numpy as np
from sqlalchemy import and_, exists, func, or_, select, text
from sqlalchemy.orm import Session

from app.blobs import insert_with_blob
from app.config import Settings
from app.csv_ingest import parse_csv
from app.data import BUILTINS
from app.dataset_codec import (
    EncodedDataset,
    ParsedDataset,
    build_dataset,
    check_feature_names,
    check_name,
    default_feature_names,
    encode_arrays,
    features_array,
    sequences_tokens,
)
from app.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from app.job_status import ACTIVE
from app.schemas import DatasetCreate
from app.services import is_id, owned_by
from app.tables import Dataset, Job, Model
from app.uploads import UploadLimits, parse_upload

# Any constant shared by every fitserve process: serializes built-in registration on Postgres.
_BUILTIN_LOCK_KEY = 0x66697473  # "fits"


def visible(owner: str | None) -> Any:
    """Datasets a caller may read: the built-ins and its own, not deleted."""
    return and_(
        or_(Dataset.builtin.is_(True), owned_by(Dataset.owner_id, owner)),
        Dataset.deleted_at.is_(None),
    )


def describe(parsed: ParsedDataset) -> dict[str, Any]:
    """A parsed dataset's `Dataset` columns other than its arrays (JSON: what the intake helper
    sends back beside the encoded arrays, app/intake.py)."""
    return {
        "task": parsed.task,
        "rows": parsed.rows,
        "n_features": parsed.n_features,
        "n_outputs": parsed.n_outputs,
        "feature_names": parsed.feature_names,
        "target_names": parsed.target_names,
        "classes": parsed.classes,
        "tokens": parsed.tokens.n_tokens if parsed.tokens is not None else None,
        "max_token_id": _max_id(parsed),
    }


def _check_columns(columns: dict[str, Any], settings: Settings) -> None:
    tokens = columns["tokens"]
    if tokens is not None:
        # documents count in token ids, not in the dense cells they stand for
        if tokens > settings.max_dataset_tokens:
            raise PayloadTooLarge(
                f"the dataset has {tokens:,} token ids; the limit is "
                f"{settings.max_dataset_tokens:,} (FITSERVE_MAX_DATASET_TOKENS): upload fewer "
                "or shorter documents"
            )
        return
    rows, width = columns["rows"], columns["n_features"] + columns["n_outputs"]
    cells = rows * width
    if cells > settings.max_dataset_cells:
        raise PayloadTooLarge(
            f"the dataset has {rows:,} rows x {width} "
            f"columns = {cells:,} values; the limit is {settings.max_dataset_cells:,} "
            "(FITSERVE_MAX_DATASET_CELLS): upload fewer rows or columns"
        )


def _store(
    session: Session, *, owner: str | None, name: str, parsed: ParsedDataset, builtin: bool = False
) -> Dataset:
    columns, encoded = describe(parsed), encode_arrays(parsed)
    return _insert(session, columns, encoded, owner=owner, name=name, builtin=builtin)


def _insert(
    session: Session,
    columns: dict[str, Any],
    encoded: EncodedDataset,
    *,
    owner: str | None,
    name: str,
    builtin: bool = False,
) -> Dataset:
    """A new row; its features written in pieces from the arrays' own memory (app/blobs.py)."""
    row = Dataset(
        owner_id=owner,
        name=name,
        builtin=builtin,
        **columns,
        targets=encoded.targets,
        sha256=encoded.sha256,
    )
    insert_with_blob(session, row, "features", encoded.features)
    # created_at comes from the database; the arrays are not read back
    session.refresh(row, attribute_names=["created_at"])
    return row


def _max_id(parsed: ParsedDataset) -> int | None:
    tokens = parsed.tokens
    if tokens is None:
        return None
    return int(tokens.values.max()) if tokens.n_tokens else -1  # -1: only empty documents


def parse_json(body: DatasetCreate) -> ParsedDataset:
    """A validated JSON upload's arrays and columns (CPU only: no database)."""
    if body.sequences is not None:
        tokens = sequences_tokens(body.sequences)
        return build_dataset(
            x=np.zeros((tokens.rows, 0)),
            targets=body.targets,
            task=body.task,
            feature_names=["sequences"],
            target_names=body.target_names,
            tokens=tokens,
        )
    assert body.features is not None  # exactly one of them: DatasetCreate checks
    x = features_array(body.features)
    names = (
        check_feature_names(body.feature_names, x.shape[1])
        if body.feature_names is not None
        else default_feature_names(x.shape[1])
    )
    return build_dataset(
        x=x,
        targets=body.targets,
        task=body.task,
        feature_names=names,
        target_names=body.target_names,
    )


def create_encoded(
    session: Session,
    *,
    owner: str | None,
    name: str,
    columns: dict[str, Any],
    encoded: EncodedDataset,
    settings: Settings,
) -> Dataset:
    """A JSON upload, validated, built and encoded off the event loop by app/intake.py (in a
    helper process when it is big)."""
    _check_columns(columns, settings)
    return _insert(session, columns, encoded, owner=owner, name=name)


def create_from_csv(
    session: Session,
    *,
    owner: str | None,
    name: str,
    data: IO[bytes],
    target: str,
    task: str | None,
    settings: Settings,
    filename: str | None = None,
    content_type: str | None = None,
) -> Dataset:
    """A dataset from an uploaded file — CSV (or gzip'd CSV), Parquet or an Arrow IPC file — read
    block by block from where it lies (app/uploads.py)."""
    check_name(name, "name")
    limits = UploadLimits(
        max_cells=settings.max_dataset_cells,
        max_table_bytes=_max_table_bytes(settings),
        max_text_bytes=settings.upload_bytes_limit,
    )
    parsed = parse_upload(
        data, filename=filename, content_type=content_type, target=target, task=task,
        limits=limits,
    )  # fmt: skip
    columns = describe(parsed)
    _check_columns(columns, settings)
    encoded = encode_arrays(parsed)  # the features' blob is parsed.x's own memory, not a copy
    return _insert(session, columns, encoded, owner=owner, name=name)


def _max_table_bytes(settings: Settings) -> int:
    """A Parquet table's uncompressed size cap: what the limits let a dataset hold (int64 token
    ids or float64 cells as read), plus the body cap for labels and padding."""
    return (
        8 * max(settings.max_dataset_tokens, settings.max_dataset_cells) + settings.max_body_bytes
    )


def list_datasets(session: Session, *, owner: str | None) -> list[Dataset]:
    query = select(Dataset).where(visible(owner))
    # Built-ins first (a stable menu), then the caller's own, newest first.
    query = query.order_by(Dataset.builtin.desc(), Dataset.created_at.desc(), Dataset.id)
    return list(session.scalars(query))


def get_dataset(session: Session, *, owner: str | None, dataset_id: str) -> Dataset:
    row = (
        None
        if not is_id(dataset_id)
        else session.scalar(select(Dataset).where(Dataset.id == dataset_id, visible(owner)))
    )
    if row is None:
        raise NotFound(f"dataset {dataset_id!r} not found; list yours with GET /v1/datasets")
    return row


def resolve_dataset(session: Session, *, owner: str | None, ref: str) -> Dataset:
    """A dataset by id, or a built-in by name."""
    row = None
    if is_id(ref):
        row = session.scalar(select(Dataset).where(Dataset.id == ref, visible(owner)))
    if row is None:
        row = session.scalar(
            select(Dataset)
            .where(Dataset.builtin.is_(True), Dataset.name == ref, Dataset.deleted_at.is_(None))
            .limit(1)
        )
    if row is None:
        raise Unprocessable(
            f"dataset {ref!r} not found: give the id of one of your datasets (GET /v1/datasets) "
            f"or a built-in name ({', '.join(BUILTINS)})",
            loc=("body", "dataset"),
        )
    return row


def delete_dataset(session: Session, *, owner: str | None, dataset_id: str) -> None:
    row = (
        None
        if not is_id(dataset_id)
        else session.scalar(
            select(Dataset)
            .where(Dataset.id == dataset_id, visible(owner))
            # Holds off a concurrent submit's foreign-key check until we're done (Postgres).
            .with_for_update()
        )
    )
    if row is None:
        raise NotFound(f"dataset {dataset_id!r} not found; list yours with GET /v1/datasets")
    if row.builtin:
        raise Conflict(
            f"{row.name!r} is a built-in dataset shared by everyone; it can't be deleted"
        )
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.dataset_id == row.id, Job.status.in_(ACTIVE))
    )
    if active:
        raise Conflict(
            f"dataset {dataset_id!r} is used by {active} queued or running job(s); wait for them "
            "to finish or cancel them (POST /v1/jobs/{id}/cancel), then delete it"
        )
    referenced = session.scalar(select(exists().where(Job.dataset_id == row.id))) or session.scalar(
        select(exists().where(Model.dataset_id == row.id))
    )
    if referenced:
        # Finished jobs and models name it: keep a tombstone for their provenance, drop the data.
        row.deleted_at = func.now()
        row.features = b""
        row.targets = b""
    else:
        session.delete(row)
    session.flush()


def register_builtins(session: Session) -> list[str]:
    """Store each built-in dataset that isn't there yet; safe to run from several processes."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _BUILTIN_LOCK_KEY})
    present = set(session.scalars(select(Dataset.name).where(Dataset.builtin.is_(True))))
    added = []
    for builtin in BUILTINS.values():
        if builtin.name in present:
            continue
        _store(
            session,
            owner=None,
            name=builtin.name,
            parsed=_parse_builtin(builtin.name),
            builtin=True,
        )
        added.append(builtin.name)
    return added


@cache
def _parse_builtin(name: str) -> ParsedDataset:
    # Parsed once per process: every app a test suite (or a restart loop) builds reuses it.
    builtin = BUILTINS[name]
    return parse_csv(builtin.read_bytes(), target=builtin.target, task=builtin.task)
