"""Settings: keepers.toml, then environment variables over it, then explicit arguments."""

from __future__ import annotations

import pytest

from keepers.errors import InvalidInput
from keepers.settings import load_settings


def test_toml_file_is_read_and_environment_overrides_it(tmp_path, monkeypatch):
    config = tmp_path / "custom.toml"
    config.write_text('database_url = "from-toml.duckdb"\nport = 9100\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("KEEPERS_CONFIG", str(config))
    monkeypatch.setenv("KEEPERS_PORT", "9200")
    settings = load_settings()
    assert settings.database_url == "from-toml.duckdb"
    assert settings.port == 9200  # environment beats the file
    assert load_settings(host="127.0.0.2").host == "127.0.0.2"  # arguments beat both


def test_database_url_chooses_the_engine(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEEPERS_DATABASE_URL", "postgresql://k@db/keepers")
    assert load_settings().is_postgres
    monkeypatch.setenv("KEEPERS_DATABASE_URL", "data/keepers.duckdb")
    assert not load_settings().is_postgres


def test_invalid_settings_name_the_setting_and_its_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEEPERS_PORT", "99999")
    with pytest.raises(InvalidInput, match=r"setting 'port' \(KEEPERS_PORT\)"):
        load_settings()
