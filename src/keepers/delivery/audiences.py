r"""Ad-audience sync: Meta Custom Audiences and Google Ads Customer Match.

Both platforms match people on SHA-256 hashes of *normalised* identifiers, so a hash of
"Ann@Example.com " matches nobody: the normalisation has to be the platform's, exactly.
The two platforms disagree in small ways, hence two sets of normalisers (interfaces.md §4):

| field       | Meta (Custom Audiences)                        | Google (Customer Match)         |
|-------------|------------------------------------------------|---------------------------------|
| every key   | strip " \t\r\n\0\x0B." both ends, lowercase    | —                               |
| email       | (the above)                                    | lowercase, remove all spaces    |
| phone       | digits only, no leading zeros: 18005550101     | E.164 with "+": +18005550101    |
| first name  | letters only (UTF-8 letters kept)              | lowercase, collapse spaces      |
| last name   | letters only (UTF-8 letters kept)              | lowercase, no punctuation       |
| country     | first two letters, lowercase; hashed           | ISO alpha-2, upper; UNHASHED    |
| zip         | lowercase, no spaces, part before "-",         | trimmed; UNHASHED               |
|             | US: first 5 characters; hashed                 |                                 |
| external id | as is, unhashed (EXTERN_ID)                    | not sent                        |

A value that already is a SHA-256 hex digest (64 hex characters) passes through lowercased,
so callers holding only hashes can sync. Gmail dot-removal belongs to Google's enhanced
conversions, not to Customer Match, and is not applied. Phones must already carry their
country code ("+44 20 7946 0958", "0044…"); no number is guessed from the country.

Consent: a `Member` is uploaded by `add`/`replace` only when `ad_consent` is True (the person
agreed to their data being used for advertising: Google's ad_user_data *and*
ad_personalization). Skipped members are counted in the Outcome's detail. `remove` sends
everyone given, consent or not, because withdrawing consent is exactly when a person must
leave the audience. Google's job-wide consent is therefore GRANTED/GRANTED on add jobs and
omitted on remove jobs.

Outcome: every call returns ONE aggregate `Outcome` for the whole upload. `sent` means
every batch was accepted; the detail carries the counts (members, batches, skipped, and
what the platform reported). On the first batch that fails the call stops and returns that
batch's classification (`retry` for 5xx/408/429/throttling, `failed` for other 4xx, with
the platform's error message), saying how many batches went through before. A retry sends
the whole upload again: adds and removes are idempotent on the platforms' side. `reference`
is the Meta upload session id / the Google job resource name.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from keepers.delivery import Outcome, Status
from keepers.delivery.webhooks import parse_retry_after
from keepers.errors import InvalidInput

__all__ = [
    "GOOGLE_BATCH_LIMIT",
    "META_BATCH_LIMIT",
    "GoogleCustomerMatchClient",
    "Member",
    "MetaAudienceClient",
    "google_user_identifiers",
    "is_sha256_hex",
    "meta_hash",
    "meta_rows",
    "normalise_email_google",
    "normalise_email_meta",
    "normalise_first_name_google",
    "normalise_last_name_google",
    "normalise_name_meta",
    "normalise_phone_google",
    "normalise_phone_meta",
    "sha256_hex",
]

META_BATCH_LIMIT = 10_000  # "only up to 10000 at a time" (custom-audience users reference)
GOOGLE_BATCH_LIMIT = 10_000  # operations per addOperations request (Google's recommendation)
GOOGLE_MAX_IDENTIFIERS = 20  # user identifiers per UserData
META_STRIP = " \t\r\n\0\x0b."  # the official SDK's strip set, trailing dot included
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_DIGITS = re.compile(r"\D")
_ID = re.compile(r"^\d{1,20}$")
_GOOGLE_JOB = re.compile(r"^customers/\d+/offlineUserDataJobs/-?\d+$")


@dataclass(frozen=True)
class Member:
    """One person to upload. Every identifier is optional; a member with none usable is
    skipped. `ad_consent` gates uploads (see the module docstring); it defaults to False so
    forgetting to set it never uploads anyone."""

    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    country: str | None = None
    zip: str | None = None
    external_id: str | None = None
    ad_consent: bool = False


# --- normalisation and hashing ------------------------------------------------------------


def sha256_hex(text: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes, unsalted: what both platforms expect."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """A value that is already a digest (64 hex characters, surrounding whitespace allowed)."""
    return bool(_SHA256_HEX.match(value.strip()))


def _meta_base(value: str) -> str:
    return value.strip(META_STRIP).lower()


def normalise_email_meta(value: str) -> str:
    return _meta_base(value)


def _phone_digits(value: str) -> str:
    """Digits only, without leading zeros: "+1 (800) 555-0101" and "001 800…" → "1800…"."""
    return _DIGITS.sub("", value).lstrip("0")


def normalise_phone_meta(value: str) -> str:
    return _phone_digits(_meta_base(value))


def normalise_name_meta(value: str) -> str:
    """Letters only, lowercase; accented letters are kept (hashed as UTF-8), as Meta's table
    says ("special characters in UTF-8"). The SDK's a-z filter would drop them."""
    return "".join(ch for ch in _meta_base(value) if ch.isalpha())


def _normalise_country_meta(value: str, country: str | None = None) -> str:
    return "".join(ch for ch in _meta_base(value) if ch.isascii() and ch.isalpha())[:2]


def _normalise_zip_meta(value: str, country: str | None = None) -> str:
    code = "".join(_meta_base(value).split("-")[0].split())
    return code[:5] if country == "us" else code


_META_NORMALISERS: dict[str, Callable[..., str]] = {
    "EMAIL": lambda v, c=None: normalise_email_meta(v),
    "PHONE": lambda v, c=None: normalise_phone_meta(v),
    "FN": lambda v, c=None: normalise_name_meta(v),
    "LN": lambda v, c=None: normalise_name_meta(v),
    "ZIP": _normalise_zip_meta,
    "COUNTRY": _normalise_country_meta,
}
META_SCHEMA = ("EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP", "COUNTRY")
_META_FIELDS = ("external_id", "email", "phone", "first_name", "last_name", "zip", "country")


def meta_hash(key: str, value: str | None, *, country: str | None = None) -> str:
    """The value Meta expects in column `key` of a multi-key upload; "" when there is none.

    EXTERN_ID goes as is and unhashed; a 64-hex value is taken as already hashed; anything
    else is normalised by the key's rule and SHA-256 hashed. `country` (the member's) only
    matters for ZIP, where US codes are cut to five characters."""
    if value is None:
        return ""
    if key == "EXTERN_ID":
        return value
    if key not in _META_NORMALISERS:
        raise InvalidInput(f"schema key {key!r} is not one Keepers uploads to Meta")
    if is_sha256_hex(value):
        return value.strip().lower()
    normalised = _META_NORMALISERS[key](value, country)
    return sha256_hex(normalised) if normalised else ""


def _meta_row(member: Member) -> list[str]:
    country = _normalise_country_meta(member.country) if member.country else None
    return [
        meta_hash(key, getattr(member, name), country=country)
        for key, name in zip(META_SCHEMA, _META_FIELDS, strict=True)
    ]


def meta_rows(members: Sequence[Member]) -> tuple[list[str], list[list[str]]]:
    """(schema, data) for a multi-key upload: only the columns some member fills, "" where
    a member lacks one, and members with no usable identifier left out."""
    rows = [row for row in map(_meta_row, members) if any(row)]
    used = [i for i in range(len(META_SCHEMA)) if any(row[i] for row in rows)]
    return [META_SCHEMA[i] for i in used], [[row[i] for i in used] for row in rows]


def normalise_email_google(value: str) -> str:
    return "".join(value.split()).lower()


def normalise_phone_google(value: str) -> str:
    """E.164 with the "+": Google hashes "+18005550101" where Meta hashes "18005550101"."""
    digits = _phone_digits(value)
    return "+" + digits if digits else ""


def normalise_first_name_google(value: str) -> str:
    """Lowercase; no spaces before, after, or more than one in between."""
    return " ".join(value.lower().split())


def normalise_last_name_google(value: str) -> str:
    """Lowercase, no punctuation (Unicode category P*), spaces collapsed."""
    kept = "".join(ch for ch in value.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def _google_hash(value: str | None, normalise: Callable[[str], str]) -> str:
    if not value:
        return ""
    if is_sha256_hex(value):
        return value.strip().lower()
    normalised = normalise(value)
    return sha256_hex(normalised) if normalised else ""


def _google_address(member: Member) -> dict[str, str] | None:
    """Google matches an address only with all four parts; country and postal code are
    sent in clear (OfflineUserAddressInfo)."""
    first = _google_hash(member.first_name, normalise_first_name_google)
    last = _google_hash(member.last_name, normalise_last_name_google)
    country, postal = member.country or "", member.zip or ""
    if is_sha256_hex(country) or is_sha256_hex(postal):
        return None  # hashed for Meta; Google needs these two in clear
    country = "".join(ch for ch in country if ch.isascii() and ch.isalpha())
    postal = " ".join(postal.split())
    if not (first and last and len(country) >= 2 and postal):
        return None
    return {
        "hashedFirstName": first,
        "hashedLastName": last,
        "countryCode": country[:2].upper(),
        "postalCode": postal,
    }


def google_user_identifiers(member: Member) -> list[dict[str, Any]]:
    """The `userIdentifiers` of one UserData (REST JSON names), each a one-key oneof."""
    found: list[dict[str, Any]] = []
    if email := _google_hash(member.email, normalise_email_google):
        found.append({"hashedEmail": email})
    if phone := _google_hash(member.phone, normalise_phone_google):
        found.append({"hashedPhoneNumber": phone})
    if address := _google_address(member):
        found.append({"addressInfo": address})
    return found[:GOOGLE_MAX_IDENTIFIERS]


# --- shared HTTP plumbing -----------------------------------------------------------------


def _check_id(value: str | int, field: str) -> str:
    text = str(value).replace("-", "") if field.endswith("customer_id") else str(value)
    if not _ID.match(text):
        raise InvalidInput(f"{field} must be a numeric id, got {value!r}")
    return text


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check_batch_size(batch_size: int, limit: int) -> int:
    if not 1 <= batch_size <= limit:
        raise InvalidInput(f"batch_size must be between 1 and {limit}")
    return batch_size


@asynccontextmanager
async def _http(
    client: httpx.AsyncClient | None, timeout: float
) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's client, or one of our own for the length of one call."""
    if client is not None:
        yield client
        return
    limits = httpx.Timeout(timeout, connect=10.0)
    async with httpx.AsyncClient(timeout=limits, follow_redirects=False) as own:
        yield own


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _snippet(response: httpx.Response) -> str:
    return " ".join(response.text.split())[:200] or response.reason_phrase


@dataclass(frozen=True)
class _Answer:
    """One HTTP exchange classified: ok, or the Outcome fields of a failure."""

    ok: bool
    status: Status = "sent"
    detail: str = ""
    code: int | None = None
    retry_after: float | None = None
    data: dict[str, Any] | None = None


async def _exchange(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    classify: Callable[[httpx.Response], _Answer],
) -> _Answer:
    """Send one JSON request; network trouble is transient, the rest is the platform's."""
    try:
        response = await http.request(
            method,
            url,
            content=orjson.dumps(body),
            headers={**headers, "content-type": "application/json"},
        )
    except httpx.TimeoutException:
        return _Answer(False, "retry", "timed out")
    except httpx.TransportError as exc:
        return _Answer(False, "retry", f"network error: {str(exc) or type(exc).__name__}")
    return classify(response)


def _http_answer(response: httpx.Response, message: str, transient: bool) -> _Answer:
    code = response.status_code
    if 200 <= code < 300:
        return _Answer(True, code=code, data=_json(response))
    retry = transient or code in (408, 429) or code >= 500
    wait = parse_retry_after(response.headers.get("retry-after")) if retry else None
    status: Status = "retry" if retry else "failed"
    return _Answer(False, status, f"HTTP {code}: {message}", code, wait)


def _count(data: dict[str, Any] | None, key: str) -> int:
    """A count from a platform's answer; 0 when missing or not a number."""
    value = (data or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _root(base_url: str, api_version: str) -> str:
    if not base_url.startswith(("https://", "http://")):
        raise InvalidInput("base_url must be an http:// or https:// URL")
    if not re.fullmatch(r"v\d+(\.\d+)?", api_version):
        raise InvalidInput(f"api_version must look like v21 or v21.0, got {api_version!r}")
    return f"{base_url.rstrip('/')}/{api_version}"


def _summary(uploaded: int, batches: int, skipped_consent: int, skipped_empty: int) -> str:
    return (
        f"{uploaded} members in {batches} batch{'es' if batches != 1 else ''}; "
        f"skipped {skipped_consent} without ad consent, {skipped_empty} without identifiers"
    )


def _eligible(members: Sequence[Member], need_consent: bool) -> tuple[list[Member], int]:
    if not need_consent:
        return list(members), 0
    kept = [m for m in members if m.ad_consent]
    return kept, len(members) - len(kept)


# --- Meta ---------------------------------------------------------------------------------

# Graph API error codes that mean "slow down / try later" even when the HTTP status is 400:
# 1 unknown, 2 service unavailable, 4/17/32/613 rate limits, 80003 custom-audience limit.
_META_TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 613, 80003})


def _meta_classify(response: httpx.Response) -> _Answer:
    error = _json(response).get("error")
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or _snippet(response))
    transient = bool(error.get("is_transient")) or error.get("code") in _META_TRANSIENT_CODES
    return _http_answer(response, message, transient)


class MetaAudienceClient:
    """Uploads to one Meta ad account's custom audiences through the Graph API.

    The token travels in the Authorization header, never in the URL, so it stays out of
    access logs. Uploads use Meta's multi-batch session so Meta knows when the last batch
    of an upload (or of a replace) has arrived."""

    def __init__(
        self,
        access_token: str,
        *,
        base_url: str = "https://graph.facebook.com",
        api_version: str = "v21.0",
        client: httpx.AsyncClient | None = None,
        timeout: float = 60.0,
        batch_size: int = META_BATCH_LIMIT,
    ) -> None:
        if not access_token:
            raise InvalidInput("access_token must not be empty")
        self._headers = {"authorization": f"Bearer {access_token}"}
        self._root = _root(base_url, api_version)
        self._client = client
        self._timeout = timeout
        self._batch_size = _check_batch_size(batch_size, META_BATCH_LIMIT)

    async def add(
        self, audience_id: str, members: Sequence[Member], *, session_id: int | None = None
    ) -> Outcome:
        """Add consenting members (POST /{id}/users)."""
        return await self._upload("POST", audience_id, "users", members, True, session_id)

    async def remove(
        self, audience_id: str, members: Sequence[Member], *, session_id: int | None = None
    ) -> Outcome:
        """Remove members, with or without consent (DELETE /{id}/users)."""
        return await self._upload("DELETE", audience_id, "users", members, False, session_id)

    async def replace(
        self, audience_id: str, members: Sequence[Member], *, session_id: int | None = None
    ) -> Outcome:
        """Make the audience exactly the consenting members (POST /{id}/usersreplace); Meta
        swaps the audience when the batch with last_batch_flag arrives."""
        return await self._upload("POST", audience_id, "usersreplace", members, True, session_id)

    async def _upload(
        self,
        method: str,
        audience_id: str,
        edge: str,
        members: Sequence[Member],
        need_consent: bool,
        session_id: int | None,
    ) -> Outcome:
        url = f"{self._root}/{_check_id(audience_id, 'audience_id')}/{edge}"
        eligible, no_consent = _eligible(members, need_consent)
        schema, rows = meta_rows(eligible)
        sid = session_id if session_id is not None else random.randrange(1, 2**62)
        counts = (no_consent, len(eligible) - len(rows))
        if not rows:
            status: Status = "failed" if edge == "usersreplace" else "sent"
            why = "; a replace needs at least one member" if status == "failed" else ""
            return Outcome(status, _summary(0, 0, *counts) + why, reference=str(sid))
        async with _http(self._client, self._timeout) as http:
            return await self._send_batches(http, method, url, schema, rows, sid, counts)

    async def _send_batches(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        schema: list[str],
        rows: list[list[str]],
        sid: int,
        counts: tuple[int, int],
    ) -> Outcome:
        batches = _chunks(rows, self._batch_size)
        received = invalid = 0
        for seq, batch in enumerate(batches, start=1):
            session = {
                "session_id": sid,
                "batch_seq": seq,
                "last_batch_flag": seq == len(batches),
                "estimated_num_total": len(rows),
            }
            body = {"payload": {"schema": schema, "data": list(batch)}, "session": session}
            answer = await _exchange(http, method, url, body, self._headers, _meta_classify)
            if not answer.ok:
                done = f"{seq - 1} of {len(batches)} batches accepted before"
                detail = f"batch {seq}: {answer.detail}; {done}"
                return Outcome(answer.status, detail, answer.code, str(sid), answer.retry_after)
            received += _count(answer.data, "num_received")
            invalid += _count(answer.data, "num_invalid_entries")
        detail = f"{_summary(len(rows), len(batches), *counts)}; Meta received {received}"
        return Outcome("sent", f"{detail}, {invalid} invalid", 200, str(sid))


# --- Google -------------------------------------------------------------------------------

_GOOGLE_TRANSIENT = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "ABORTED"}
)


def _google_messages(error: dict[str, Any]) -> list[str]:
    """The GoogleAdsFailure messages inside a google.rpc.Status (error or partial failure)."""
    found = []
    for detail in error.get("details") or []:
        for item in (detail or {}).get("errors") or []:
            if isinstance(item, dict) and item.get("message"):
                found.append(str(item["message"]))
    return found


def _google_classify(response: httpx.Response) -> _Answer:
    error = _json(response).get("error")
    error = error if isinstance(error, dict) else {}
    parts = [str(error.get("message") or _snippet(response)), *_google_messages(error)[:3]]
    transient = error.get("status") in _GOOGLE_TRANSIENT
    return _http_answer(response, " | ".join(parts), transient)


class GoogleCustomerMatchClient:
    """Uploads to Customer Match user lists of one Google Ads customer (REST JSON).

    One call is one OfflineUserDataJob: create it, add the operations in requests of at most
    10,000, then run it. Google processes the job asynchronously (hours); `sent` means the
    job was accepted and started, and `reference` is its resource name for polling."""

    def __init__(
        self,
        *,
        developer_token: str,
        access_token: str,
        customer_id: str,
        login_customer_id: str | None = None,
        base_url: str = "https://googleads.googleapis.com",
        api_version: str = "v21",
        client: httpx.AsyncClient | None = None,
        timeout: float = 60.0,
        batch_size: int = GOOGLE_BATCH_LIMIT,
    ) -> None:
        if not developer_token or not access_token:
            raise InvalidInput("developer_token and access_token must not be empty")
        self._customer = _check_id(customer_id, "customer_id")
        self._headers = {
            "authorization": f"Bearer {access_token}",
            "developer-token": developer_token,
        }
        if login_customer_id:
            login = _check_id(login_customer_id, "login_customer_id")
            self._headers["login-customer-id"] = login
        self._root = _root(base_url, api_version)
        self._client = client
        self._timeout = timeout
        self._batch_size = _check_batch_size(batch_size, GOOGLE_BATCH_LIMIT)

    async def add(self, user_list_id: str, members: Sequence[Member]) -> Outcome:
        """Add consenting members to the user list (operations `create`)."""
        return await self._sync(user_list_id, members, "create")

    async def remove(self, user_list_id: str, members: Sequence[Member]) -> Outcome:
        """Remove members, with or without consent (operations `remove`)."""
        return await self._sync(user_list_id, members, "remove")

    async def _sync(self, user_list_id: str, members: Sequence[Member], verb: str) -> Outcome:
        user_list = (
            f"customers/{self._customer}/userLists/{_check_id(user_list_id, 'user_list_id')}"
        )
        eligible, no_consent = _eligible(members, verb == "create")
        operations = [
            {verb: {"userIdentifiers": ids}}
            for ids in map(google_user_identifiers, eligible)
            if ids
        ]
        counts = (no_consent, len(eligible) - len(operations))
        if not operations:
            return Outcome("sent", _summary(0, 0, *counts))
        async with _http(self._client, self._timeout) as http:
            return await self._run_job(http, user_list, verb, operations, counts)

    async def _call(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> _Answer:
        url = f"{self._root}/{path}"
        return await _exchange(http, "POST", url, body, self._headers, _google_classify)

    async def _create_job(self, http: httpx.AsyncClient, user_list: str, verb: str) -> _Answer:
        metadata: dict[str, Any] = {"userList": user_list}
        if verb == "create":
            metadata["consent"] = {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}
        job = {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": metadata}
        path = f"customers/{self._customer}/offlineUserDataJobs:create"
        return await self._call(http, path, {"job": job})

    async def _run_job(
        self,
        http: httpx.AsyncClient,
        user_list: str,
        verb: str,
        operations: list[dict[str, Any]],
        counts: tuple[int, int],
    ) -> Outcome:
        created = await self._create_job(http, user_list, verb)
        if not created.ok:
            return _failure("creating the job", created, None)
        job = str((created.data or {}).get("resourceName", ""))
        if not _GOOGLE_JOB.match(job):
            return Outcome("failed", f"job create answered no usable resourceName: {job!r}")
        batches = _chunks(operations, self._batch_size)
        rejected: list[str] = []
        for n, batch in enumerate(batches, start=1):
            body = {"enablePartialFailure": True, "operations": list(batch)}
            answer = await self._call(http, f"{job}:addOperations", body)
            if not answer.ok:
                return _failure(f"batch {n} of {len(batches)}", answer, job)
            partial = (answer.data or {}).get("partialFailureError")
            if isinstance(partial, dict):
                rejected.extend(_google_messages(partial) or [str(partial.get("message"))])
        ran = await self._call(http, f"{job}:run", {})
        if not ran.ok:
            return _failure("running the job", ran, job)
        detail = _summary(len(operations), len(batches), *counts) + f"; job {job} running"
        if rejected:
            detail += f"; {len(rejected)} operations rejected, first: {rejected[0]}"
        return Outcome("sent", detail, 200, job)


def _failure(step: str, answer: _Answer, job: str | None) -> Outcome:
    return Outcome(
        answer.status,
        f"{step}: {answer.detail}",
        answer.code,
        job,
        answer.retry_after,
    )
