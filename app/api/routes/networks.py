from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import After, JsonBody, Limit, OwnerDep, ReadSession, StateDep, WriteSession, committed
from app.api.routes.jobs import IdemKey, check_idempotency_key
from app.api.schemas import NetworkCreate, NetworkRead, Page
from app.db import repositories as repo
from app.db.models import Network
from app.errors import NotFound
from app.services import resources as svc

router = APIRouter(prefix="/v1/networks", tags=["networks"])


@router.post(
    "",
    status_code=201,
    response_model=NetworkRead,
    dependencies=[JsonBody],
    summary="Define a network (an architecture)",
)
def create_network(
    body: NetworkCreate,
    owner: OwnerDep,
    session: WriteSession,
    st: StateDep,
    response: Response,
    idempotency_key: IdemKey = None,
) -> dict[str, object]:
    check_idempotency_key(idempotency_key)
    row, replayed = svc.create_network(
        session, owner=owner, body=body.model_dump(exclude_none=True), limits=st.limits, idempotency_key=idempotency_key
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/networks/{row.id}"
    return committed(session, svc.network_view(row))


@router.get("", response_model=Page[NetworkRead], summary="List networks, newest first")
def list_networks(owner: OwnerDep, session: ReadSession, limit: Limit = 20, after: After = None) -> dict[str, object]:
    rows, more = repo.list_owned(session, Network, owner, limit=limit, after=after)
    return {"data": [svc.network_view(r) for r in rows], "has_more": more}


@router.get("/{network_id}", response_model=NetworkRead, summary="Get a network")
def get_network(network_id: str, owner: OwnerDep, session: ReadSession) -> dict[str, object]:
    return svc.network_view(svc.get_network(session, owner=owner, network_id=network_id))


@router.delete("/{network_id}", status_code=204, response_class=Response, summary="Delete a network")
def delete_network(network_id: str, owner: OwnerDep, session: WriteSession) -> Response:
    if not repo.soft_delete(session, Network, owner, network_id):
        raise NotFound(f"no network with id {network_id!r}")
    return committed(session, Response(status_code=204))
