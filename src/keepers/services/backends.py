"""Where a CLI command runs: on the store directly, or through the server that owns it.

DuckDB allows one writing process per file. When `keepers serve` holds the file, it leaves
`<file>.server.json` (owner-only) with its URL and a per-run admin token; CLI commands then
go through its management API instead of failing on the lock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from keepers.errors import DatabaseLocked, KeepersError, StoreUnavailable
from keepers.services.keepers import IngestReport, Keepers
from keepers.settings import Settings


class Backend(Protocol):
    def status(self) -> dict[str, Any]: ...
    def create_write_key(self, name: str) -> dict[str, str]: ...
    def list_write_keys(self) -> list[dict[str, Any]]: ...
    def ingest(self, messages: list[dict[str, Any]], source: str) -> IngestReport: ...
    def lifecycle(self, operation: str, **params: Any) -> Any: ...
    def journeys(self, operation: str, **params: Any) -> Any: ...
    def close(self) -> None: ...


def server_info_path(database_url: str) -> Path | None:
    if database_url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return None
    return Path(database_url + ".server.json")


def write_server_info(database_url: str, url: str, admin_token: str) -> Path | None:
    path = server_info_path(database_url)
    if path is None:
        return None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": url, "admin_token": admin_token, "pid": os.getpid()}, handle)
    return path


#: operations that change something: audited when run from the command line
AUDITED = {
    "lifecycle": {"segment_save", "segment_delete", "definitions_apply"},
    "journeys": {"save", "save_file", "set_status"},
}


def cli_actor() -> str:
    """Who is at the terminal, as histories and the audit log name them."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


class LocalBackend:
    def __init__(self, keepers: Keepers) -> None:
        self.keepers = keepers

    def _audit(self, action: str, target: str | None) -> None:
        """Whoever can open the store is its administrator; what they change is audited."""
        from keepers.services.access import AccessService, cli_principal

        access = AccessService(self.keepers.db, self.keepers.clock)
        access.record(cli_principal(cli_actor()), action, target)

    def status(self) -> dict[str, Any]:
        return self.keepers.status()

    def create_write_key(self, name: str) -> dict[str, str]:
        record, secret = self.keepers.create_write_key(name)
        self._audit("key.create", f"key:{record.key_id}")
        return {"key_id": record.key_id, "name": record.name, "write_key": secret}

    def list_write_keys(self) -> list[dict[str, Any]]:
        return [
            {
                "key_id": k.key_id,
                "name": k.name,
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in self.keepers.list_write_keys()
        ]

    def ingest(self, messages: list[dict[str, Any]], source: str) -> IngestReport:
        return self.keepers.ingest_messages(messages, source)

    def lifecycle(self, operation: str, **params: Any) -> Any:
        """One `LifecycleService` operation, run here."""
        result = getattr(self.keepers.lifecycle, operation)(**params)
        if operation in AUDITED["lifecycle"]:
            self._audit(f"cli.{operation}", params.get("key"))
        return result

    def journeys(self, operation: str, **params: Any) -> Any:
        """One `JourneyService` operation, run here."""
        result = getattr(self.keepers.journeys, operation)(**params)
        if operation in AUDITED["journeys"]:
            body = params.get("body")
            key = body.get("key") if isinstance(body, dict) else None
            target = params.get("key") or key
            self._audit(f"cli.journeys.{operation}", target)
        return result

    def close(self) -> None:
        self.keepers.close()


class RemoteBackend:
    def __init__(self, url: str, admin_token: str) -> None:
        import httpx

        self.url = url
        self._http = httpx.Client(
            base_url=url, timeout=300, headers={"Authorization": f"Bearer {admin_token}"}
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the server at {self.url} did not answer: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise KeepersError(
                f"the server at {self.url} answered {response.status_code}: {message}"
            )
        return response.json() if response.content else None

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/api/status")

    def create_write_key(self, name: str) -> dict[str, str]:
        return self._call("POST", "/api/keys", json={"name": name})

    def list_write_keys(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/keys")

    def ingest(self, messages: list[dict[str, Any]], source: str) -> IngestReport:
        answer = self._call("POST", "/api/ingest", json={"messages": messages, "source": source})
        return IngestReport(
            stored=answer["stored"],
            duplicates=answer["duplicates"],
            rejected=[(r["index"], r["code"], r["message"]) for r in answer["rejected"]],
        )

    def lifecycle(self, operation: str, **params: Any) -> Any:
        """The same operation through the server's REST API."""
        method, path, query, body = _route(operation, params)
        return self._call(method, path, params=query, json=body)

    def journeys(self, operation: str, **params: Any) -> Any:
        """The same journey operation through the server's REST API."""
        method, path, body = _journey_route(operation, params)
        return self._call(method, path, json=body)

    def close(self) -> None:
        self._http.close()


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _route(operation: str, p: dict[str, Any]) -> tuple[str, str, dict | None, dict | None]:
    """(method, path, query, body) of a lifecycle operation in the REST API."""
    from urllib.parse import quote

    if operation == "compute":
        body = {k: _iso(v) for k, v in p.items() if v is not None}
        return "POST", "/api/compute", None, body
    if operation == "explain":
        query = {"as_of": _iso(p["as_of"])} if p.get("as_of") else {}
        if p.get("scores"):
            query["scores"] = "true"
        return "GET", f"/api/customers/{quote(p['customer'], safe='')}/explain", query, None
    if operation == "segment_save":  # the server records the change as made through the API
        body = {k: p.get(k) for k in ("rule", "label", "description")}
        return "PUT", f"/api/segments/{quote(p['key'], safe='')}", None, body
    if operation == "segment_preview":
        return "POST", "/api/segments/preview", None, {"rule": p["rule"], "sample": p["sample"]}
    if operation in ("segment_show", "segment_delete"):
        verb = "GET" if operation == "segment_show" else "DELETE"
        return verb, f"/api/segments/{quote(p['key'], safe='')}", None, None
    if operation in ("report", "report_who"):
        name = quote(p.pop("name"), safe="")
        query = {k: _iso(v) for k, v in p.items() if v is not None}
        suffix = "/customers" if operation == "report_who" else ""
        return "GET", f"/api/reports/{name}{suffix}", query, None
    if operation == "definitions_apply":
        return "PUT", "/api/definitions", None, {"definitions": p["body"]}
    fixed = {
        "stages": "/api/stages",
        "segments_list": "/api/segments",
        "definitions_export": "/api/definitions",
        "definitions_history": "/api/definitions/history",
    }
    return "GET", fixed[operation], None, None


def _journey_route(operation: str, p: dict[str, Any]) -> tuple[str, str, dict | None]:
    """(method, path, body) of a journey operation in the REST API."""
    from urllib.parse import quote

    key = quote(str(p.get("key", "")), safe="")
    if operation == "save":
        return "POST", "/api/journeys", p["body"]
    if operation == "set_status":
        return "PUT", f"/api/journeys/{key}/status", {"status": p["status"]}
    if operation == "trace":
        return "GET", f"/api/journeys/{key}/trace/{quote(p['customer'], safe='')}", None
    if operation == "set_consent":
        body = {
            "customer": str(p["customer"]),
            "list": p["list_id"],
            "status": p["status"],
            "channel": p.get("channel", "email"),
            "source": p.get("source", "cli"),
        }
        return "PUT", "/api/consent", body
    if operation == "run":
        return "POST", "/api/journeys/run", None
    if operation == "simulate":
        body = {"since": _iso(p["since"]), "step_days": p.get("step_days", 1.0)}
        return "POST", f"/api/journeys/{key}/simulate", body
    if operation in ("show", "stats"):
        suffix = "/stats" if operation == "stats" else ""
        return "GET", f"/api/journeys/{key}{suffix}", None
    return "GET", "/api/journeys", None


def open_backend(settings: Settings) -> Backend:
    """The store directly when it is free, else the server holding it."""
    try:
        return LocalBackend(Keepers.open(settings))
    except DatabaseLocked as exc:
        info = _read_server_info(settings.database_url)
        if info is None:
            raise
        backend = RemoteBackend(info["url"], info["admin_token"])
        try:
            backend._call("GET", "/health")
        except KeepersError:
            backend.close()
            raise DatabaseLocked(exc.message) from exc
        return backend


def _read_server_info(database_url: str) -> dict[str, Any] | None:
    path = server_info_path(database_url)
    if path is None or not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "url" in info and "admin_token" in info else None
