"""Audience uploads against local fakes of the Meta Graph API and the Google Ads REST API.

The fakes CHECK every request the way the platforms would (path, method, auth headers,
body schema, hash format, batch limits, session sequencing, job order, consent) and record
each broken rule in `violations`; they answer like the platforms, error bodies included.
Every test ends by asserting that the fake saw no violation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from keepers.delivery import Outcome
from keepers.delivery.audiences import GoogleCustomerMatchClient, Member, MetaAudienceClient
from keepers.errors import InvalidInput

HEX64 = re.compile(r"^[0-9a-f]{64}$")
META_TOKEN = "meta-token-123"
GOOGLE_TOKEN = "ya29.google-token"
DEV_TOKEN = "dev-token-abc"
CUSTOMER = "1234567890"
LOGIN = "9876543210"
Answer = tuple[int, dict[str, Any], dict[str, str]]


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(call: Coroutine[Any, Any, Outcome]) -> Outcome:
    return asyncio.run(call)


def consenting(n: int) -> list[Member]:
    return [Member(email=f" Person{i}@Example.com", ad_consent=True) for i in range(n)]


class Fake:
    """What a fake platform saw, and which of its rules were broken."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.url = ""

    def check(self, ok: object, message: str) -> bool:
        if not ok:
            self.violations.append(message)
        return bool(ok)

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        fake: Fake = self.server.fake  # type: ignore[attr-defined]
        headers = {k.lower(): v for k, v in self.headers.items()}
        with fake.lock:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            fake.check(headers.get("content-type") == "application/json", "not JSON content")
            fake.check(isinstance(body, dict), f"{self.command} {self.path}: body not an object")
            fake.requests.append((self.command, self.path, body or {}))
            status, answer, extra = fake.answer(self.command, self.path, headers, body or {})
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_DELETE = do_GET = _serve

    def log_message(self, *args: object) -> None:
        pass


def serve(fake: Fake) -> Iterator[Fake]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.fake = fake  # type: ignore[attr-defined]
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


# --- fake Meta ----------------------------------------------------------------------------

META_KEYS = {"EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP", "COUNTRY"}


def meta_error(message: str, code: int, transient: bool = False) -> dict[str, Any]:
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbC1"}
    return {"error": {**error, "is_transient": transient}}


class FakeMeta(Fake):
    """Graph API custom-audience users edges, with multi-batch sessions."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[int, dict[str, Any]] = {}

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        match = re.fullmatch(r"/v21\.0/(\d+)/(users|usersreplace)", path)
        if not self.check(match, f"unknown path {path}"):
            return 404, meta_error("Unknown path components", 2500), {}
        audience, edge = match.groups()
        allowed = {"users": {"POST", "DELETE"}, "usersreplace": {"POST"}}[edge]
        self.check(method in allowed, f"{method} not allowed on /{edge}")
        auth = headers.get("authorization") == f"Bearer {META_TOKEN}"
        if not self.check(auth, "missing or wrong bearer token"):
            return 401, meta_error("Invalid OAuth access token.", 190), {}
        self.check(set(body) == {"payload", "session"}, f"body keys {sorted(body)}")
        rows = self._check_payload(body.get("payload") or {})
        self._check_session(body.get("session") or {}, audience, edge, method, rows)
        if audience == "999":
            return 400, meta_error("(#100) Invalid audience ID: no such custom audience", 100), {}
        if audience == "777":
            text = "(#80003) There have been too many calls to this ad-account."
            return 400, meta_error(text, 80003, transient=True), {}
        if audience == "503":
            return 503, meta_error("Service temporarily unavailable", 2), {"Retry-After": "30"}
        answer = {
            "audience_id": audience,
            "session_id": str(body["session"]["session_id"]),
            "num_received": rows,
            "num_invalid_entries": 0,
            "invalid_entry_samples": {},
        }
        return 200, answer, {}

    def _check_payload(self, payload: dict[str, Any]) -> int:
        schema, data = payload.get("schema"), payload.get("data")
        ok = isinstance(schema, list) and schema and set(schema) <= META_KEYS
        if not self.check(ok and len(set(schema)) == len(schema), f"bad schema {schema}"):
            return 0
        if not self.check(isinstance(data, list) and 1 <= len(data) <= 10_000, "batch size"):
            return 0
        for row in data:
            if not self.check(isinstance(row, list) and len(row) == len(schema), "row width"):
                continue
            self.check(any(row), "empty row")
            for key, value in zip(schema, row, strict=True):
                if key != "EXTERN_ID":
                    self.check(value == "" or HEX64.match(value), f"{key} not hashed: {value}")
        return len(data)

    def _check_session(
        self, session: dict[str, Any], audience: str, edge: str, method: str, rows: int
    ) -> None:
        sid = session.get("session_id")
        if not self.check(isinstance(sid, int) and sid > 0, f"session_id {sid!r}"):
            return
        seen = self.sessions.setdefault(
            sid,
            {"seq": 0, "received": 0, "closed": False, "target": (audience, edge, method)},
        )
        self.check(not seen["closed"], "batch after last_batch_flag")
        self.check(seen["target"] == (audience, edge, method), "session reused elsewhere")
        self.check(session.get("batch_seq") == seen["seq"] + 1, "batch_seq not increasing by 1")
        total = session.get("estimated_num_total")
        self.check(seen.get("total", total) == total and isinstance(total, int), "total moved")
        seen.update(seq=session.get("batch_seq"), total=total, received=seen["received"] + rows)
        is_last = seen["received"] >= total
        self.check(session.get("last_batch_flag") is is_last, "last_batch_flag on wrong batch")
        seen["closed"] = bool(session.get("last_batch_flag"))


@pytest.fixture
def meta() -> Iterator[FakeMeta]:
    yield from serve(FakeMeta())


def meta_client(fake: FakeMeta) -> MetaAudienceClient:
    return MetaAudienceClient(META_TOKEN, base_url=fake.url, api_version="v21.0")


def uploaded_rows(fake: Fake) -> list[list[str]]:
    return [row for _, _, body in fake.requests for row in body["payload"]["data"]]


def test_meta_upload_of_25001_members_goes_in_three_sequenced_batches(meta):
    outcome = run(meta_client(meta).add("123", consenting(25_001)))
    assert outcome.status == "sent", outcome.detail
    assert "25001 members in 3 batches" in outcome.detail
    assert "Meta received 25001" in outcome.detail
    bodies = [body for _, _, body in meta.requests]
    assert [m for m, _, _ in meta.requests] == ["POST"] * 3
    assert {p for _, p, _ in meta.requests} == {"/v21.0/123/users"}
    assert [len(b["payload"]["data"]) for b in bodies] == [10_000, 10_000, 5_001]
    assert [b["session"]["batch_seq"] for b in bodies] == [1, 2, 3]
    assert [b["session"]["last_batch_flag"] for b in bodies] == [False, False, True]
    assert {b["session"]["session_id"] for b in bodies} == {int(outcome.reference)}
    assert {b["session"]["estimated_num_total"] for b in bodies} == {25_001}
    assert {tuple(b["payload"]["schema"]) for b in bodies} == {("EMAIL",)}
    expected = {h(f"person{i}@example.com") for i in range(25_001)}  # trimmed, lowercased
    assert {row[0] for row in uploaded_rows(meta)} == expected
    assert meta.violations == []


def test_meta_add_skips_members_without_ad_consent_and_remove_sends_everyone(meta):
    members = [*consenting(3), Member(email="no@x.com"), Member(email="nope@x.com")]
    client = meta_client(meta)
    added = run(client.add("123", members))
    assert added.status == "sent" and "skipped 2 without ad consent" in added.detail
    assert len(uploaded_rows(meta)) == 3
    assert [h("no@x.com")] not in uploaded_rows(meta)
    meta.requests.clear()
    removed = run(client.remove("123", members))
    assert removed.status == "sent"
    assert [(m, p) for m, p, _ in meta.requests] == [("DELETE", "/v21.0/123/users")]
    assert sorted(uploaded_rows(meta)) == sorted([h(m.email.strip().lower())] for m in members)
    assert meta.violations == []


def test_meta_replace_posts_a_multi_key_schema_to_usersreplace(meta):
    members = [
        Member(email="A@x.com", phone="+1 (800) 555-0101", external_id="Cust-1", ad_consent=True),
        Member(
            first_name="José", last_name="O'Brien", country="US", zip="94107-1234", ad_consent=True
        ),
    ]
    outcome = run(meta_client(meta).replace("123", members))
    assert outcome.status == "sent", outcome.detail
    ((method, path, body),) = meta.requests
    assert (method, path) == ("POST", "/v21.0/123/usersreplace")
    assert body["payload"]["schema"] == [
        "EXTERN_ID",
        "EMAIL",
        "PHONE",
        "FN",
        "LN",
        "ZIP",
        "COUNTRY",
    ]
    assert body["payload"]["data"] == [
        ["Cust-1", h("a@x.com"), h("18005550101"), "", "", "", ""],
        ["", "", "", h("josé"), h("obrien"), h("94107"), h("us")],
    ]
    assert body["session"]["last_batch_flag"] is True
    assert meta.violations == []


def test_meta_error_body_is_reported_and_stops_the_upload(meta):
    outcome = run(meta_client(meta).add("999", consenting(15_000)))
    assert (outcome.status, outcome.code) == ("failed", 400)
    assert "(#100) Invalid audience ID" in outcome.detail
    assert "0 of 2 batches accepted" in outcome.detail
    assert len(meta.requests) == 1
    assert meta.violations == []


def test_meta_throttling_error_with_http_400_is_a_retry(meta):
    outcome = run(meta_client(meta).add("777", consenting(5)))
    assert (outcome.status, outcome.code) == ("retry", 400)
    assert "(#80003)" in outcome.detail
    assert meta.violations == []


def test_meta_server_error_is_a_retry_with_retry_after(meta):
    outcome = run(meta_client(meta).add("503", consenting(5)))
    assert (outcome.status, outcome.code, outcome.retry_after) == ("retry", 503, 30.0)
    assert meta.violations == []


def test_meta_replace_with_nobody_consenting_fails_without_calling_meta(meta):
    outcome = run(meta_client(meta).replace("123", [Member(email="a@x.com")]))
    assert outcome.status == "failed" and "at least one member" in outcome.detail
    assert meta.requests == []


def test_meta_ids_and_endpoint_settings_are_checked_before_any_request(meta):
    with pytest.raises(InvalidInput, match="audience_id"):
        run(meta_client(meta).add("../me", consenting(1)))
    with pytest.raises(InvalidInput, match="base_url"):
        MetaAudienceClient(META_TOKEN, base_url="file:///etc")
    with pytest.raises(InvalidInput, match="api_version"):
        MetaAudienceClient(META_TOKEN, base_url=meta.url, api_version="v21/../x")
    assert meta.requests == []


# --- fake Google --------------------------------------------------------------------------


def google_error(http: int, status: str, message: str, detail: str) -> dict[str, Any]:
    failure = {
        "@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure",
        "errors": [{"errorCode": {"offlineUserDataJobError": status}, "message": detail}],
        "requestId": "req-1",
    }
    return {"error": {"code": http, "message": message, "status": status, "details": [failure]}}


GRANTED = {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}
REJECT = h("reject@example.com")


class FakeGoogle(Fake):
    """OfflineUserDataJobService over REST: create → addOperations (repeatable) → run."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.login: str | None = LOGIN

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        self.check(method == "POST", f"{method} {path}")
        self.check(headers.get("authorization") == f"Bearer {GOOGLE_TOKEN}", "bearer token")
        self.check(headers.get("developer-token") == DEV_TOKEN, "developer-token header")
        self.check(headers.get("login-customer-id") == self.login, "login-customer-id header")
        if path == f"/v21/customers/{CUSTOMER}/offlineUserDataJobs:create":
            return self._create(body)
        match = re.fullmatch(rf"/v21/(customers/{CUSTOMER}/offlineUserDataJobs/\d+):(\w+)", path)
        if not self.check(match and match[1] in self.jobs, f"unknown path {path}"):
            return 404, google_error(404, "NOT_FOUND", "Not found", path), {}
        job = self.jobs[match[1]]
        if match[2] == "addOperations":
            return self._add(job, body)
        self.check(match[2] == "run", f"unknown method {match[2]}")
        self.check(job["state"] == "PENDING" and job["batches"] > 0, "run before operations")
        self.check(body == {}, "run body")
        job["state"] = "RUNNING"
        return 200, {"name": f"customers/{CUSTOMER}/operations/{match[1].rsplit('/', 1)[1]}"}, {}

    def _create(self, body: dict[str, Any]) -> Answer:
        job = body.get("job") or {}
        self.check(set(body) == {"job"}, "create body keys")
        self.check(job.get("type") == "CUSTOMER_MATCH_USER_LIST", "job type")
        metadata = job.get("customerMatchUserListMetadata") or {}
        user_list = str(metadata.get("userList"))
        listed = re.fullmatch(rf"customers/{CUSTOMER}/userLists/(\d+)", user_list)
        self.check(listed, f"userList {user_list}")
        consent = metadata.get("consent")
        self.check(consent is None or consent == GRANTED, f"consent {consent}")
        if listed and listed[1] == "404":
            message = "The user list ID provided for the job is invalid."
            return (
                400,
                google_error(
                    400, "INVALID_USER_LIST_ID", "Request contains an invalid argument.", message
                ),
                {},
            )
        name = f"customers/{CUSTOMER}/offlineUserDataJobs/{len(self.jobs) + 1}"
        self.jobs[name] = {
            "state": "PENDING",
            "consent": consent,
            "list": listed[1] if listed else None,
            "kind": None,
            "batches": 0,
            "identifiers": [],
        }
        return 200, {"resourceName": name}, {}

    def _add(self, job: dict[str, Any], body: dict[str, Any]) -> Answer:
        self.check(job["state"] == "PENDING", "operations added to a job already running")
        self.check(set(body) == {"enablePartialFailure", "operations"}, "addOperations keys")
        self.check(body.get("enablePartialFailure") is True, "enablePartialFailure")
        operations = body.get("operations") or []
        self.check(1 <= len(operations) <= 10_000, f"{len(operations)} operations")
        if job["list"] == "429":
            message = "Resource has been exhausted (e.g. check quota)."
            error = google_error(429, "RESOURCE_EXHAUSTED", message, "Too many requests.")
            return 429, error, {"Retry-After": "60"}
        rejected = []
        for index, operation in enumerate(operations):
            if self._check_operation(job, operation):
                rejected.append(index)
        job["batches"] += 1
        if not rejected:
            return 200, {}, {}
        partial = {
            "code": 3,
            "message": f"Multiple errors in 'details'. First error: {len(rejected)} rejected",
            "details": [
                {"errors": [{"message": "The SHA256 email was rejected."} for _ in rejected]}
            ],
        }
        return 200, {"partialFailureError": partial}, {}

    def _check_operation(self, job: dict[str, Any], operation: dict[str, Any]) -> bool:
        """Check one operation; True when the fake rejects it (partial failure)."""
        (kind,) = operation.keys() if len(operation) == 1 else ("?",)
        self.check(kind in ("create", "remove"), f"operation {operation}")
        self.check(job["kind"] in (None, kind), "create and remove mixed in one job")
        job["kind"] = kind
        if kind == "create":
            self.check(job["consent"] == GRANTED, "create without granted consent")
        identifiers = (operation.get(kind) or {}).get("userIdentifiers") or []
        self.check(1 <= len(identifiers) <= 20, f"{len(identifiers)} identifiers")
        for identifier in identifiers:
            self._check_identifier(identifier)
        job["identifiers"].extend(identifiers)
        return {"hashedEmail": REJECT} in identifiers

    def _check_identifier(self, identifier: dict[str, Any]) -> None:
        if not self.check(len(identifier) == 1, f"identifier {identifier}"):
            return
        ((key, value),) = identifier.items()
        if key in ("hashedEmail", "hashedPhoneNumber"):
            self.check(HEX64.match(str(value)), f"{key} not hashed")
            return
        self.check(key == "addressInfo", f"identifier kind {key}")
        parts = ("hashedFirstName", "hashedLastName", "countryCode", "postalCode")
        self.check(set(value) == set(parts), f"addressInfo keys {sorted(value)}")
        self.check(HEX64.match(str(value.get("hashedFirstName"))), "first name not hashed")
        self.check(HEX64.match(str(value.get("hashedLastName"))), "last name not hashed")
        self.check(re.fullmatch(r"[A-Z]{2}", str(value.get("countryCode"))), "countryCode")
        self.check(not HEX64.match(str(value.get("postalCode"))), "postalCode must be clear")


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    yield from serve(FakeGoogle())


def google_client(fake: FakeGoogle, login: str | None = LOGIN) -> GoogleCustomerMatchClient:
    return GoogleCustomerMatchClient(
        developer_token=DEV_TOKEN,
        access_token=GOOGLE_TOKEN,
        customer_id="123-456-7890",
        login_customer_id=login,
        base_url=fake.url,
        api_version="v21",
    )


def google_members(n: int) -> list[Member]:
    members = []
    for i in range(n):
        extra = {"first_name": "Ann", "last_name": "Lee", "country": "us", "zip": "94107"}
        members.append(
            Member(
                email=f"User{i}@Example.com",
                phone=f"+1 (800) {i:07d}",
                ad_consent=True,
                **(extra if i % 100 == 0 else {}),
            )
        )
    return members


def identifiers_of(fake: FakeGoogle, kind: str) -> list[Any]:
    return [
        ident[kind] for job in fake.jobs.values() for ident in job["identifiers"] if kind in ident
    ]


def test_google_12000_members_create_a_job_add_twice_then_run(google):
    outcome = run(google_client(google).add("555", google_members(12_000)))
    assert outcome.status == "sent", outcome.detail
    assert "12000 members in 2 batches" in outcome.detail
    job = f"customers/{CUSTOMER}/offlineUserDataJobs/1"
    assert outcome.reference == job
    assert [p for _, p, _ in google.requests] == [
        f"/v21/customers/{CUSTOMER}/offlineUserDataJobs:create",
        f"/v21/{job}:addOperations",
        f"/v21/{job}:addOperations",
        f"/v21/{job}:run",
    ]
    created = google.requests[0][2]["job"]["customerMatchUserListMetadata"]
    assert created == {"userList": f"customers/{CUSTOMER}/userLists/555", "consent": GRANTED}
    assert [len(b["operations"]) for _, _, b in google.requests[1:3]] == [10_000, 2_000]
    assert google.jobs[job]["state"] == "RUNNING"
    assert set(identifiers_of(google, "hashedEmail")) == {
        h(f"user{i}@example.com") for i in range(12_000)
    }
    assert h("+18000000007") in identifiers_of(google, "hashedPhoneNumber")  # E.164 with +
    assert identifiers_of(google, "addressInfo")[0] == {
        "hashedFirstName": h("ann"),
        "hashedLastName": h("lee"),
        "countryCode": "US",
        "postalCode": "94107",
    }
    assert google.violations == []


def test_google_skips_members_without_consent_and_remove_jobs_carry_no_consent(google):
    members = [*google_members(2), Member(email="no@x.com"), Member(email="nope@x.com")]
    client = google_client(google)
    added = run(client.add("555", members))
    assert added.status == "sent" and "skipped 2 without ad consent" in added.detail
    assert h("no@x.com") not in identifiers_of(google, "hashedEmail")
    removed = run(client.remove("555", members))
    assert removed.status == "sent"
    remove_job = google.jobs[removed.reference]
    assert remove_job["consent"] is None and remove_job["kind"] == "remove"
    assert h("no@x.com") in [i.get("hashedEmail") for i in remove_job["identifiers"]]
    assert google.violations == []


def test_google_error_body_message_reaches_the_outcome_and_nothing_runs(google):
    outcome = run(google_client(google).add("404", google_members(3)))
    assert (outcome.status, outcome.code) == ("failed", 400)
    assert "Request contains an invalid argument." in outcome.detail
    assert "The user list ID provided for the job is invalid." in outcome.detail
    assert len(google.requests) == 1
    assert google.violations == []


def test_google_quota_exhausted_is_a_retry_and_the_job_is_not_run(google):
    outcome = run(google_client(google).add("429", google_members(3)))
    assert (outcome.status, outcome.code, outcome.retry_after) == ("retry", 429, 60.0)
    assert [p.rsplit(":", 1)[1] for _, p, _ in google.requests] == ["create", "addOperations"]
    assert google.violations == []


def test_google_partial_failure_is_sent_and_counted(google):
    members = [*google_members(3), Member(email="Reject@Example.com", ad_consent=True)]
    outcome = run(google_client(google).add("555", members))
    assert outcome.status == "sent"
    assert "1 operations rejected" in outcome.detail and "SHA256 email" in outcome.detail
    assert google.violations == []


def test_google_login_customer_id_header_is_only_sent_when_configured(google):
    google.login = None
    outcome = run(google_client(google, login=None).add("555", google_members(1)))
    assert outcome.status == "sent"
    assert google.violations == []


def test_google_ids_must_be_numeric(google):
    with pytest.raises(InvalidInput, match="customer_id"):
        GoogleCustomerMatchClient(developer_token="d", access_token="a", customer_id="abc")
    with pytest.raises(InvalidInput, match="user_list_id"):
        run(google_client(google).add("1/../2", google_members(1)))
    assert google.requests == []
