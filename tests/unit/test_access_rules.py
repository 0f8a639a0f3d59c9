"""db_config/access.json: parsing, placeholders and the errors that name the fix."""

from __future__ import annotations

import json

import pytest

from beamline import proddb

PROJECT_CONFIG = proddb.Path(__file__).resolve().parents[2] / "db_config"


def write(tmp_path, doc) -> proddb.Path:
    (tmp_path / "access.json").write_text(json.dumps(doc))
    return tmp_path


def test_the_demo_rules_load_with_the_user():
    rules = {r.user: r for r in proddb.load_access(PROJECT_CONFIG, user="alice")}
    assert rules["*"].devices == (("*/*/*", "read"),)
    assert rules["alice"].devices == (("*/*/*", "write"),)
    assert rules["operator"].devices == (
        ("bl01/*/*", "write"),
        ("bl01/sardana/macroserver", "read"),  # the more restrictive rule wins
        ("bl01/sardana/pool", "read"),
        ("sys/*/*", "read"),
    )


def test_local_stands_for_this_hosts_addresses(tmp_path):
    doc = {"users": {"bob": {"addresses": ["@local", "10.0.1.*"], "devices": {"*/*/*": "write"}}}}
    rules = {r.user: r for r in proddb.load_access(write(tmp_path, doc))}
    assert "127.0.0.1" in rules["bob"].addresses and "10.0.1.*" in rules["bob"].addresses
    assert set(rules["bob"].addresses) == set(proddb.local_addresses()) | {"10.0.1.*"}


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"default": "all"}, ["'default'", "read", "write"]),
        ({"users": {"bob": {"devices": {"bl01/mot": "write"}}}}, ["bob", "domain/family/member"]),
        ({"users": {"bob": {"devices": {"bl01/*/*": "rw"}}}}, ["bob", "'rw'"]),
        ({"users": {"bob": {"devices": {}}}}, ["bob", "devices"]),
        ({"users": {"bob": {"addresses": ["10.0.0"], "devices": {"a/b/c": "read"}}}}, ["IPv4"]),
        ({"users": {"*": {"devices": {"a/b/c": "read"}}}}, ["'default'"]),
        ([], ["JSON object"]),
    ],
)
def test_bad_rules_name_the_entry_and_the_fix(tmp_path, doc, words):
    with pytest.raises(proddb.ProdDbError) as err:
        proddb.load_access(write(tmp_path, doc))
    for word in words:
        assert word in str(err.value)
    assert "access.json" in str(err.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(proddb.ProdDbError, match="no access rules"):
        proddb.load_access(tmp_path)
    (tmp_path / "access.json").write_text("{")
    with pytest.raises(proddb.ProdDbError, match="not valid JSON"):
        proddb.load_access(tmp_path)


def test_a_user_named_twice_is_refused_not_the_last_taken(tmp_path):
    (tmp_path / "access.json").write_text(
        '{"users": {"bob": {"devices": {"bl01/*/*": "write"}}, '
        '"bob": {"devices": {"bl01/*/*": "read"}}}}'
    )
    with pytest.raises(proddb.ProdDbError, match="users.bob: defined twice in one object"):
        proddb.load_access(tmp_path)


def test_read_only_commands_of_the_demo_keep_code_and_elements_for_the_beamline_account():
    table = proddb.load_read_only_commands(PROJECT_CONFIG)
    assert table["MacroServer"] == ("GetMacroInfo",)
    assert "Stop" in table["Pool"] and "Abort" in table["Pool"]
    forbidden = {"SetMacroCode", "GetMacroCode", "ReloadMacroLib", "CreateMeasurementGroup"}
    assert not forbidden & {c for commands in table.values() for c in commands}
    operator = {r.user: r for r in proddb.load_access(PROJECT_CONFIG)}["operator"]
    assert ("bl01/sardana/macroserver", "read") in operator.devices
    assert ("bl01/sardana/pool", "read") in operator.devices


@pytest.mark.parametrize(
    "table,words",
    [
        ([], ["read_only_commands", "map a class"]),
        ({"Pool": "Stop"}, ["read_only_commands.Pool", "list of command names"]),
        ({"Pool": ["Stop now"]}, ["read_only_commands.Pool"]),
    ],
)
def test_bad_read_only_commands_name_the_entry(tmp_path, table, words):
    (tmp_path / "access.json").write_text(json.dumps({"read_only_commands": table}))
    with pytest.raises(proddb.ProdDbError) as err:
        proddb.load_read_only_commands(tmp_path)
    for word in words:
        assert word in str(err.value)
