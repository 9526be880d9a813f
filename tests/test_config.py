"""The configuration as operators read and write it: etc/eformws.toml lists every key
with its default, and the choices that depend on Redis are made or refused clearly."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from eformws.config import SCHEMA, ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent / "etc" / "eformws.toml"


def test_example_config_lists_every_key_with_its_default():
    example = tomllib.loads(EXAMPLE.read_text())
    listed = {(section, key): value for section, table in example.items() if isinstance(table, dict)
              for key, value in table.items()}
    assert listed == {key: default for key, (default, _) in SCHEMA.items()}


def test_example_config_loads():
    load_config(str(EXAMPLE), environ={})


def test_stores_are_sqlite_without_redis():
    config = load_config(environ={})
    assert (config.get("sessions", "backend"), config.get("events", "store")) == ("sqlite", "sqlite")


def test_stores_are_redis_when_a_redis_url_is_set():
    config = load_config(overrides={("redis", "url"): "redis://127.0.0.1:6379/0"}, environ={})
    assert (config.get("sessions", "backend"), config.get("events", "store")) == ("redis", "redis")


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://", "redis://h:1/x"])
def test_a_bad_redis_url_is_refused_naming_the_key(url):
    with pytest.raises(ConfigError, match=r"^redis\.url: "):
        load_config(overrides={("redis", "url"): url}, environ={})


def test_a_redis_store_without_a_redis_url_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^events\.store: redis needs redis\.url$"):
        load_config(overrides={("events", "store"): "redis"}, environ={})


def test_several_workers_without_redis_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^server\.workers: more than 1 worker needs redis\.url"):
        load_config(overrides={("server", "workers"): 2}, environ={})
