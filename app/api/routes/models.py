from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Response

from app.api.deps import After, JsonBody, Limit, OwnerDep, ReadSession, StateDep, WriteSession, committed
from app.api.schemas import ModelRead, Page, PredictRequest, PredictResponse, Weights
from app.db import repositories as repo
from app.db.models import Dataset, Model
from app.errors import NotFound
from app.services import resources as svc
from app.services.onnx_export import export_onnx

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=Page[ModelRead], summary="List trained models, newest first")
def list_models(
    owner: OwnerDep, session: ReadSession, st: StateDep, limit: Limit = 20, after: After = None
) -> dict[str, object]:
    rows, more = repo.list_owned(session, Model, owner, limit=limit, after=after)
    return {"data": [svc.model_view(r, st.models.get(session, r)) for r in rows], "has_more": more}


@router.get("/{model_id}", response_model=ModelRead, summary="Get a model: spec, metrics, classes, input scaling")
def get_model(model_id: str, owner: OwnerDep, session: ReadSession, st: StateDep) -> dict[str, object]:
    row = svc.get_model(session, owner=owner, model_id=model_id)
    return svc.model_view(row, st.models.get(session, row))


@router.get(
    "/{model_id}/weights",
    response_model=Weights,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "JSON arrays per layer, or with ?format=npz an npz archive of the same arrays: "
            "layer<i>.weights (n_in x n_out), layer<i>.biases, and input.mean / input.scale when the model "
            "standardizes its inputs.",
        }
    },
    summary="Download a model's weights",
)
def get_weights(
    model_id: str,
    owner: OwnerDep,
    session: ReadSession,
    st: StateDep,
    format: Annotated[Literal["json", "npz"], Query(description="json (default) or npz")] = "json",
) -> object:
    row = svc.get_model(session, owner=owner, model_id=model_id)
    model = st.models.get(session, row)
    if format == "npz":
        buf = io.BytesIO()
        arrays = {}
        for i, (w, b) in enumerate(model.layer_weights()):
            arrays[f"layer{i}.weights"], arrays[f"layer{i}.biases"] = w, b
        if model.x_mean is not None and model.x_scale is not None:
            arrays["input.mean"], arrays["input.scale"] = model.x_mean, model.x_scale
        np.savez(buf, **arrays)
        return Response(
            buf.getvalue(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{model_id}.npz"'},
        )
    scaling = None
    if model.x_mean is not None and model.x_scale is not None:
        scaling = {"mean": model.x_mean.tolist(), "scale": model.x_scale.tolist()}
    layers = [
        {
            "weights": w.astype(np.float64).tolist(),
            "biases": b.astype(np.float64).tolist(),
            "activation": layer.activation,
        }
        for (w, b), layer in zip(model.layer_weights(), model.spec.layers, strict=True)
    ]
    return {"model_id": row.id, "layers": layers, "input_scaling": scaling}


@router.get(
    "/{model_id}/export",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The model as an ONNX file (opset 17), `<model_id>.onnx`: float32 input `inputs` "
            "[N, n_features] of raw feature rows -> float32 output `outputs` [N, n_outputs], the same values as "
            "/predict's `outputs` (input scaling included). metadata_props hold model_id, classes and "
            "feature_names as JSON.",
        }
    },
    summary="Export a model as an ONNX file",
)
def export_model(
    model_id: str,
    owner: OwnerDep,
    session: ReadSession,
    st: StateDep,
    format: Annotated[Literal["onnx"], Query(description="onnx (the only export format)")] = "onnx",
) -> Response:
    row = svc.get_model(session, owner=owner, model_id=model_id)
    model = st.models.get(session, row)
    # The model's own dataset, even if since deleted: its feature names describe the model's inputs.
    dataset = session.get(Dataset, row.dataset_id)
    feature_names = dataset.feature_names if dataset is not None and dataset.owner == owner else None
    data = export_onnx(model, model_id=row.id, classes=row.classes, feature_names=feature_names)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.onnx"'},
    )


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    dependencies=[JsonBody],
    summary="Predict on raw feature rows",
)
def predict(
    model_id: str, body: PredictRequest, owner: OwnerDep, session: ReadSession, st: StateDep
) -> dict[str, object]:
    row = svc.get_model(session, owner=owner, model_id=model_id)
    return svc.predict(row, st.models.get(session, row), body.inputs)


@router.delete("/{model_id}", status_code=204, response_class=Response, summary="Delete a model")
def delete_model(model_id: str, owner: OwnerDep, session: WriteSession, st: StateDep) -> Response:
    if not repo.soft_delete(session, Model, owner, model_id):
        raise NotFound(f"no model with id {model_id!r}")
    st.models.drop(model_id)
    return committed(session, Response(status_code=204))
