"""Delivery channels: the side effects a journey step asks for (email over SMTP, signed
webhooks, ad-audience uploads). Each channel turns one outbox row into one attempt and
answers with an `Outcome`; the outbox decides what happens next (retry with backoff, give
up, suppress). Channels never touch the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["sent", "retry", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt did.

    `sent`: the receiver accepted it. `retry`: a transient failure (SMTP 4xx, timeout,
    network error, HTTP 5xx/408/429); try again later, no sooner than `retry_after` seconds
    when the receiver said so. `failed`: permanent (SMTP 5xx, HTTP 4xx); do not retry.
    `code` is the SMTP or HTTP status when there was one, `detail` one readable line,
    `reference` the id the receiver can dedupe on (Message-ID, webhook-id, upload session).
    `suppress` asks the outbox to stop sending to this address (hard bounce);
    `disable` to stop calling this endpoint (HTTP 410 Gone)."""

    status: Status
    detail: str
    code: int | None = None
    reference: str | None = None
    retry_after: float | None = None
    suppress: bool = False
    disable: bool = False
