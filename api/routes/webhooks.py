"""/v1/webhooks: register endpoints for job events, read every delivery and its attempts, send a ping,
send a finished delivery's event again, rotate the signing secret.

The URL is checked here from its text (jobs/webhooks.py:check_url; no DNS lookup in a request); the
worker's sender checks the resolved addresses again on every delivery (worker/webhook_sender.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Response

from api.deps import PageAfter, PageLimit, SessionDep, SettingsDep, TenantDep
from api.problems import PROBLEM_SCHEMA, Problem
from api.schemas.examples import ROTATION_EXAMPLES
from api.schemas.webhooks import (DeliveryList, DeliveryOut, SecretRotation, WebhookCreate, WebhookCreated, WebhookList,
                                  WebhookOut)
from jobs import quotas_repo, webhooks_repo
from jobs.tables import utcnow
from jobs.webhooks import check_url

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses={401: PROBLEM_SCHEMA, 404: PROBLEM_SCHEMA})


@router.post("", status_code=201, response_model=WebhookCreated, responses={409: PROBLEM_SCHEMA, 422: PROBLEM_SCHEMA})
def create_webhook(body: WebhookCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> WebhookCreated:
    """Register a URL for job events; the answer holds the signing secret, shown only this once."""
    reason = check_url(body.url, allow_private=settings.webhook_allow_private_networks)
    if reason is not None:
        raise Problem(422, reason, field="url")
    quotas_repo.lock_tenant(session, tenant_id=tenant.id)  # two creations at once cannot both pass the limit
    limit = settings.webhooks_per_tenant
    if webhooks_repo.count(session, tenant_id=tenant.id) >= limit:
        raise Problem(409, f"this tenant has {limit} webhooks, the limit (KD_WEBHOOKS_PER_TENANT); delete one first",
                      slug="webhook-limit")
    row = webhooks_repo.create(session, tenant_id=tenant.id, url=body.url, events=[e.value for e in body.events],
                               now=utcnow())
    out = WebhookCreated.from_row(row)
    session.commit()
    return out


@router.get("", response_model=WebhookList)
def list_webhooks(session: SessionDep, tenant: TenantDep) -> WebhookList:
    """List the tenant's webhooks, newest first (all of them: at most KD_WEBHOOKS_PER_TENANT)."""
    return WebhookList(data=[WebhookOut.from_row(r) for r in webhooks_repo.list_webhooks(session, tenant_id=tenant.id)],
                       has_more=False)


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, session: SessionDep, tenant: TenantDep) -> WebhookOut:
    """Retrieve one webhook (without its secret)."""
    return WebhookOut.from_row(webhooks_repo.get(session, tenant_id=tenant.id, webhook_id=webhook_id))


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Delete a webhook and its delivery log; nothing more is sent to it."""
    webhooks_repo.delete_webhook(session, tenant_id=tenant.id, webhook_id=webhook_id)
    session.commit()
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList)
def list_deliveries(webhook_id: str, session: SessionDep, tenant: TenantDep,
                    limit: PageLimit = 20,
                    after: PageAfter = None,
                    status: Literal["pending", "succeeded", "failed"] | None = None) -> DeliveryList:
    """List a webhook's deliveries, newest first, each with every attempt."""
    rows, has_more = webhooks_repo.list_deliveries(session, tenant_id=tenant.id, webhook_id=webhook_id,
                                                   limit=limit, after=after, status=status)
    return DeliveryList(data=[DeliveryOut.from_row(r) for r in rows], has_more=has_more)


@router.post("/{webhook_id}/test", status_code=202, response_model=DeliveryOut, responses={429: PROBLEM_SCHEMA})
def ping_webhook(webhook_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> DeliveryOut:
    """Queue a `ping` event to this webhook; follow it in its deliveries. 429 while
    KD_WEBHOOK_PENDING_LIMIT of its deliveries wait to be sent."""
    row = webhooks_repo.enqueue_ping(session, tenant_id=tenant.id, webhook_id=webhook_id, now=utcnow(),
                                     pending_limit=settings.webhook_pending_limit)
    out = DeliveryOut.from_row(row)
    session.commit()
    return out


@router.post("/{webhook_id}/deliveries/{delivery_id}/retry", status_code=202, response_model=DeliveryOut,
             responses={409: PROBLEM_SCHEMA, 429: PROBLEM_SCHEMA})
def redeliver(webhook_id: str, delivery_id: str, session: SessionDep, tenant: TenantDep,
              settings: SettingsDep) -> DeliveryOut:
    """Send a finished delivery's event again, as a new delivery (409 while it is still pending; 429
    while KD_WEBHOOK_PENDING_LIMIT of the webhook's deliveries wait to be sent)."""
    row = webhooks_repo.redeliver(session, tenant_id=tenant.id, webhook_id=webhook_id, delivery_id=delivery_id,
                                  now=utcnow(), pending_limit=settings.webhook_pending_limit)
    out = DeliveryOut.from_row(row)
    session.commit()
    return out


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookCreated)
def rotate_secret(webhook_id: str, session: SessionDep, tenant: TenantDep,
                  body: Annotated[SecretRotation | None, Body(openapi_examples=ROTATION_EXAMPLES)] = None
                  ) -> WebhookCreated:
    """Replace the signing secret; the answer holds the new one, shown only this once. The old one keeps
    signing too (a second v1= in KD-Signature) for `previous_secret_valid_seconds` (default 24 h)."""
    body = body or SecretRotation()
    row = webhooks_repo.rotate_secret(session, tenant_id=tenant.id, webhook_id=webhook_id, now=utcnow(),
                                      previous_valid_seconds=body.previous_secret_valid_seconds)
    out = WebhookCreated.from_row(row)
    session.commit()
    return out
