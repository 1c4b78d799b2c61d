from __future__ import annotations

import io
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.deps import After, AppState, Limit, OwnerDep, ReadSession, StateDep
from app.api.routes.jobs import check_idempotency_key
from app.api.schemas import DatasetCreate, DatasetRead, Page
from app.db import repositories as repo
from app.db.models import Dataset
from app.errors import InvalidRequest, NotFound
from app.services import dataset_codec as codec
from app.services import resources as svc

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "CSV, UTF-8, comma-separated."},
        "target": {
            "type": "string",
            "description": "Target column name(s) or 0-based index(es), comma-separated; default: the last column.",
        },
        "header": {
            "type": "string",
            "enum": ["auto", "true", "false"],
            "default": "auto",
            "description": "Whether the first line names the columns.",
        },
        "task": {"type": "string", "enum": ["classification", "regression"]},
        "name": {"type": "string", "maxLength": 200},
    },
}
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DatasetCreate"}},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


def _parse_json(raw: bytes, st: AppState) -> tuple[codec.ParsedDataset, str | None]:
    try:
        body = DatasetCreate.model_validate_json(raw)
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(exc.errors(include_url=False)) from None
    parsed = codec.from_json(
        body.features,
        list(body.targets),
        task=body.task,
        feature_names=body.feature_names,
        max_rows=st.settings.max_dataset_rows,
        max_features=st.settings.max_features,
    )
    return parsed, body.name


def _parse_csv(upload: UploadFile, form: Any, st: AppState) -> tuple[codec.ParsedDataset, str | None]:
    targets = [t for v in form.getlist("target") if isinstance(v, str) for t in v.split(",") if t.strip()]
    header_raw = str(form.get("header") or "auto").lower()
    if header_raw not in ("auto", "true", "false"):
        raise InvalidRequest("header must be auto, true or false", field="header")
    task = form.get("task")
    if task not in (None, "", "classification", "regression"):
        raise InvalidRequest("task must be classification or regression", field="task")
    name = form.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidRequest("name must be text of at most 200 characters", field="name")
    upload.file.seek(0)
    text = io.TextIOWrapper(upload.file, encoding="utf-8-sig", errors="strict", newline="")
    try:
        parsed = codec.from_csv(
            text,
            targets=targets,
            header=None if header_raw == "auto" else header_raw == "true",
            task=task or None,
            max_rows=st.settings.max_dataset_rows,
            max_features=st.settings.max_features,
        )
    except UnicodeDecodeError:
        raise InvalidRequest("the file is not UTF-8 text", field="file") from None
    finally:
        text.detach()
    return parsed, name


@router.post(
    "",
    status_code=201,
    response_model=DatasetRead,
    openapi_extra=_OPENAPI,
    summary="Submit a dataset: JSON rows, or a CSV upload (multipart/form-data)",
    description="Class labels (ints, strings, bools) are one-hot encoded for the network in the sorted "
    "order given back as `classes`; numeric targets are regression targets.",
)
async def create_dataset(
    request: Request,
    owner: OwnerDep,
    st: StateDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> object:
    check_idempotency_key(idempotency_key)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=20, max_part_size=1 << 20) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("multipart upload needs a 'file' part with the CSV", field="file")
            parsed, name = await run_in_threadpool(_parse_csv, upload, form, st)
            request_sha = codec.sha256(parsed.to_bytes()) + json.dumps([name])
    elif ctype in ("application/json", ""):
        raw = await request.body()
        if not raw:
            raise InvalidRequest("the request body is empty; send JSON {features, targets} or a CSV upload")
        parsed, name = await run_in_threadpool(_parse_json, raw, st)
        request_sha = codec.sha256(raw)
    else:
        from app.api.errors import problem

        return problem(415, f"unsupported content type {ctype!r}: send application/json or multipart/form-data")
    return await run_in_threadpool(_store, st, owner, parsed, name, idempotency_key, request_sha)


def _store(
    st: AppState, owner: str, parsed: codec.ParsedDataset, name: str | None, key: str | None, request_sha: str
) -> object:
    from fastapi.responses import JSONResponse

    with st.db.session() as session:
        row, replayed = svc.create_dataset_idempotent(
            session,
            owner=owner,
            parsed=parsed,
            name=name,
            limits=st.limits,
            idempotency_key=key,
            request_sha=request_sha,
        )
        body = DatasetRead.model_validate(svc.dataset_view(row)).model_dump(mode="json")
    headers = {"Location": f"/v1/datasets/{body['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=201, headers=headers)


@router.get("", response_model=Page[DatasetRead], summary="List datasets, newest first")
def list_datasets(owner: OwnerDep, session: ReadSession, limit: Limit = 20, after: After = None) -> dict[str, object]:
    rows, more = repo.list_owned(session, Dataset, owner, limit=limit, after=after)
    return {"data": [svc.dataset_view(r) for r in rows], "has_more": more}


@router.get("/{dataset_id}", response_model=DatasetRead, summary="Get a dataset's description")
def get_dataset(dataset_id: str, owner: OwnerDep, session: ReadSession) -> dict[str, object]:
    return svc.dataset_view(svc.get_dataset(session, owner=owner, dataset_id=dataset_id))


@router.delete("/{dataset_id}", status_code=204, response_class=Response, summary="Delete a dataset")
def delete_dataset(dataset_id: str, owner: OwnerDep, st: StateDep) -> Response:
    with st.db.session() as session:
        if not repo.soft_delete(session, Dataset, owner, dataset_id):
            raise NotFound(f"no dataset with id {dataset_id!r}")
    return Response(status_code=204)
