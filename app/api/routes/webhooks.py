from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import OwnerDep, WriteSession, committed
from app.api.schemas import WebhookSecretRead
from app.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

SIGNING = (
    "Every delivery carries `Backprop-Event-Id`, `Backprop-Timestamp` (Unix seconds) and `Backprop-Signature: "
    "v1=<hex HMAC-SHA256(secret, timestamp + '.' + raw body)>`. Recompute it over the raw body, compare in constant "
    "time, and reject timestamps more than a few minutes old."
)


@router.get(
    "/secret",
    response_model=WebhookSecretRead,
    summary="The secret that signs your webhook deliveries (made on first use)",
    description=SIGNING,
)
def get_secret(owner: OwnerDep, session: WriteSession) -> dict[str, object]:
    return committed(session, webhooks.secret_view(webhooks.secret_for(session, owner)))


@router.post(
    "/secret/rotate",
    response_model=WebhookSecretRead,
    summary="Replace the signing secret; deliveries from now on are signed with the new one",
    description=SIGNING,
)
def rotate_secret(owner: OwnerDep, session: WriteSession) -> dict[str, object]:
    return committed(session, webhooks.secret_view(webhooks.rotate_secret(session, owner)))
