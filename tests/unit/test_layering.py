"""Imports point one way: errors/settings ← domain | models ← store ← ingest | demo | engine
← analytics ← services ← web ← cli. A module may import its own package and any lower
layer, never a higher one (so the store never learns about HTTP, and the domain stays pure)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "src" / "keepers"
LAYERS = {
    "errors": 0,
    "settings": 0,
    "domain": 1,
    "models": 1,  # statistical models over NumPy arrays (BTYD, Gamma-Gamma): pure maths
    "store": 2,
    "access": 2.5,  # users, sessions, tokens, audit, GDPR: its own tables; ingest drops the erased
    "ingest": 3,
    "demo": 3,
    "engine": 3,
    "delivery": 3,  # channels (SMTP, webhooks, ad audiences): one outbox row → one attempt
    "analytics": 3.5,  # reports: queries over the store that reuse the engine's compiled traits
    "journeys": 3.6,  # enroll and advance journeys, the outbox worker: rules through the engine
    "sales": 3.6,  # deals, MEDDIC, pipelines, lead scoring: SQL over the store
    "services": 4,
    "web": 5,
    "cli": 6,  # the outermost layer: it starts the web app
    "cli_sales": 6,  # `keepers deals|leads`: part of the CLI, uses its helpers
    "cli_referrals": 6,  # `keepers referrals`
    "cli_access": 6,  # `keepers users|tokens|audit|gdpr`
    "referrals": 3.6,  # codes, attribution, reward ledger, fraud checks: SQL over the store
    "testing": 7,  # helpers for tests and benchmarks; nothing in the product imports them
}


def package_of(module: str) -> str:
    return module.split(".")[1]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keepers."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("keepers."))
    return found


def test_every_package_has_a_layer():
    packages = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.name not in ("__init__.py", "__pycache__", "py.typed")
    }
    assert packages == set(LAYERS)


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        own = parts[0]
        for imported in imports_of(path):
            target = package_of(imported)
            higher = target != own and LAYERS[target] >= LAYERS[own]
            same_cli = LAYERS[own] == LAYERS[target] == LAYERS["cli"]  # cli.py and cli_*.py
            if higher and LAYERS[own] != 0 and not same_cli:
                violations.append(f"{'/'.join(parts)} imports {imported}")
            if LAYERS[own] == 0 and target not in ("errors", "settings"):
                violations.append(f"{'/'.join(parts)} imports {imported}")
    assert violations == []
