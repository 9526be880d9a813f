"""The configuration as operators read and write it: etc/eformws.toml lists every key
with its default, and the choices that depend on Redis are made or refused clearly."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from eformws.runtime.config import SCHEMA, ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent / "etc" / "eformws.toml"


def test_example_config_lists_every_key_with_its_default():
    text = EXAMPLE.read_text()
    example = tomllib.loads(text)
    listed = {(section, key): value for section, table in example.items() if isinstance(table, dict)
              for key, value in table.items()}
    assert listed == {key: default for key, (default, _) in SCHEMA.items() if default is not None}
    # A key whose default is "left out" (None: TOML has no such value) is there as a comment.
    commented = {(section, key) for (section, key), (default, _) in SCHEMA.items() if default is None}
    assert commented and all(re.search(rf"^# {key} = ", text, re.M) for _, key in commented)


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


@pytest.mark.parametrize("text, message", [
    ('path = "x.db"\n', r"^path: settings go in a section: write \[events\] or \[sessions\] on a line above path = \.\.\.$"),
    ("prot = 3000\n", r"^prot: settings go in a section, and no section has a key prot \(sections: auth, events, .*websocket\)$"),
    ("server = 1\n", r"^server: must be a table \(\[server\] on a line of its own, then its keys\)$"),
], ids=["a_key_above_every_section_names_each_section_it_may_go_in",
        "a_key_no_section_has_lists_the_sections",
        "a_section_name_given_a_value_is_told_to_be_a_table"])
def test_a_file_without_its_section_headers_is_told_where_settings_go(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path), environ={})


def test_an_environment_value_names_its_variable_even_where_an_override_wins():
    with pytest.raises(ConfigError, match=r"^redis\.prefix from EFORMWS_REDIS_PREFIX: must be a non-empty string"):
        load_config(overrides={("redis", "prefix"): "ok:"}, environ={"EFORMWS_REDIS_PREFIX": '""'})


def test_a_bad_api_token_setting_is_refused_without_showing_the_token():
    with pytest.raises(ConfigError, match=r"^auth\.api_tokens from EFORMWS_AUTH_API_TOKENS: must be a list of non-empty "
                                          r"strings, got a string \(value not shown\)$"):
        load_config(environ={"EFORMWS_AUTH_API_TOKENS": "secret-token"})


def test_a_wildcard_permission_entry_must_name_its_first_component():
    with pytest.raises(ConfigError, match=r"wamp\.permissions\[0\]\.uri: a wildcard entry names its first component"):
        load_config(overrides={("wamp", "permissions"): [
            {"uri": "..list", "match": "wildcard", "roles": ["staff"], "allow": ["call"]}]}, environ={})


def test_the_rawsocket_port_is_off_unless_given_and_a_port_when_given():
    assert load_config(environ={}).get("wamp", "rawsocket_port") is None
    assert load_config(environ={"EFORMWS_WAMP_RAWSOCKET_PORT": "8081"}).get("wamp", "rawsocket_port") == 8081
    with pytest.raises(ConfigError, match=r"^wamp\.rawsocket_port: must be an integer from 0 to 65535, got 70000$"):
        load_config(overrides={("wamp", "rawsocket_port"): 70000}, environ={})


def test_a_rawsocket_port_with_several_workers_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^wamp\.rawsocket_port: the RawSocket port is served by one process"):
        load_config(overrides={("wamp", "rawsocket_port"): 8081, ("server", "workers"): 2,
                               ("redis", "url"): "redis://127.0.0.1:6379/0"}, environ={})


@pytest.mark.parametrize("value", ["short-secret", 12345, "x" * 31, "tab\t" * 10])
def test_a_bad_cra_key_is_refused_without_showing_it(value):
    with pytest.raises(ConfigError, match=r"^wamp\.cra_key: must be .*\(value not shown\)$") as refused:
        load_config(overrides={("wamp", "cra_key"): value}, environ={})
    assert str(value) not in str(refused.value)


def test_a_cra_key_of_32_characters_or_more_is_taken():
    assert load_config(overrides={("wamp", "cra_key"): "k" * 32}, environ={}).get("wamp", "cra_key") == "k" * 32
