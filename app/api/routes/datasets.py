from __future__ import annotations

import io
import json
import math
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

# The multipart fields, documented in OpenAPI; any other field is refused.
_FORM_FIELDS: dict[str, dict[str, Any]] = {
    "file": {
        "type": "string",
        "format": "binary",
        "description": "CSV, UTF-8. Separated by commas, semicolons, tabs or '|': the first line decides "
        "(the separator splitting it into the most fields; a tie goes to the comma) unless `delimiter` is given.",
    },
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
    "delimiter": {
        "type": "string",
        "enum": list(codec.DELIMITERS),
        "description": "The column separator: one character, ',', ';', '|' or a tab. Default: detected from the "
        "first line.",
    },
}
_MULTIPART_SCHEMA = {"type": "object", "required": ["file"], "properties": _FORM_FIELDS, "additionalProperties": False}
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

        errors = exc.errors(include_url=False)
        _check_json_limits(errors)
        raise RequestValidationError(_target_errors(errors)) from None
    parsed = codec.from_json(
        body.features,
        list(body.targets),
        task=body.task,
        feature_names=body.feature_names,
        max_rows=st.settings.max_dataset_rows,
        max_features=st.settings.max_features,
    )
    return parsed, body.name


def _check_json_limits(errors: list[Any]) -> None:
    """The JSON parser's refusals of well-formed JSON, which would otherwise read as "malformed JSON"."""
    for err in errors:
        if err.get("type") != "json_invalid":
            continue
        where = str((err.get("ctx") or {}).get("error", ""))
        if where.startswith("number out of range"):
            raise InvalidRequest(
                f"a number in the body is too long to read ({where}): numbers are limited to 4300 digits, "
                f"and features and regression targets to float64's range (about 1.8e308)"
            )
        if where.startswith("recursion limit exceeded"):
            raise InvalidRequest(
                f"the body is nested too deeply ({where}): a dataset needs at most 3 levels, as in "
                f'{{"features": [[1.0, 2.0]]}}'
            )


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _target_errors(errors: list[Any]) -> list[Any]:
    """pydantic's errors, but one per bad target instead of one per branch of the targets union (labels | rows of
    numbers): "targets[0]: Input should be a valid boolean (and 5 more)" says nothing of the rule that failed."""
    labels: dict[int, list[Any]] = {}  # index -> the label branch's errors for that target
    rows: list[Any] = []
    other: list[Any] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if len(loc) >= 3 and loc[0] == "targets" and isinstance(loc[1], str) and isinstance(loc[2], int):
            if loc[1].startswith("list[list["):
                rows.append(err)
                continue
            if len(loc) == 4:  # (targets, list[union[...]], i, branch)
                labels.setdefault(loc[2], []).append(err)
                continue
        other.append(err)
    if not labels and not rows:
        return errors
    if any(isinstance(e.get("input"), list) for errs in labels.values() for e in errs):
        return other + rows  # rows of numbers were meant: pydantic's messages for them say what is wrong
    out = []
    for i, errs in sorted(labels.items()):
        value = errs[0].get("input")
        too_long = next((e for e in errs if e.get("type") == "string_too_long"), None)
        if too_long is not None:
            limit = (too_long.get("ctx") or {}).get("max_length")
            msg = f"label longer than {limit} characters (it has {len(value)})"
        else:
            msg = f"must be a finite number, a string label or a boolean, not {_describe(value)}"
        out.append({"type": "value_error", "loc": ("targets", i), "msg": msg, "input": value})
    return other + out


def _parse_csv(upload: UploadFile, form: Any, st: AppState) -> tuple[codec.ParsedDataset, str | None]:
    # As a JSON body with an unknown field is refused, so is a form field this route does not read (a typo such as
    # 'targt' would otherwise train on the wrong column without a word).
    unknown = sorted({str(k) for k in form if k not in _FORM_FIELDS})
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise InvalidRequest(
            f"unknown form field(s) {shown}; the fields are {', '.join(_FORM_FIELDS)}",
            field=unknown[0][:64],
        )
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
    delimiter = form.get("delimiter")
    if delimiter is not None and delimiter not in codec.DELIMITERS:
        raise InvalidRequest("delimiter must be one character: ',', ';', '|' or a tab", field="delimiter")
    upload.file.seek(0)
    text = io.TextIOWrapper(upload.file, encoding="utf-8-sig", errors="strict", newline="")
    try:
        parsed = codec.from_csv(
            text,
            targets=targets,
            header=None if header_raw == "auto" else header_raw == "true",
            task=task or None,
            delimiter=delimiter,
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
    "order given back as `classes`; numeric targets are regression targets. A CSV upload takes the form fields "
    "`file`, `target`, `header`, `task`, `name` and `delimiter` (',', ';', tab or '|'; by default the one that "
    "splits the first line into the most fields), and no others.",
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
            # The stored bytes leave out column names (CSV and JSON of the same data are one dataset), but a retry
            # under the same Idempotency-Key with other names is another request.
            request_sha = codec.sha256(parsed.to_bytes()) + json.dumps(
                [name, parsed.feature_names, parsed.target_names]
            )
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
