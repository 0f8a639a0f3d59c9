"""`beamline status` on one host takes another host's devices as answering
from that host's supervisor's probes (ProbeAnswers), under the same rules as
its own: a fresh answer, from a server its supervisor sees running."""

from __future__ import annotations

import pytest

from beamline import config as cfg
from beamline import generate
from beamline.orchestrator import RECENT_ANSWER, _answers_elsewhere
from tests.helpers import PROJECT


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    base = tmp_path_factory.mktemp("two-hosts")
    generate.write(
        generate.Spec.for_servers(24, hosts=("hosta", "hostb")), PROJECT / "db_config", base / "bl"
    )
    return cfg.load(base / "bl", base / "run")


def _on(config, host):
    """A hardware server of ``host`` with its devices."""
    for s in config.servers.values():
        if s.host == host and s.name.startswith("Motor/"):
            return s.name, [d.lower() for d in config.devices_of(s.name)]
    raise AssertionError(f"no motor server on {host}")


def _supervision(server, devices, state="RUNNING", pid=4321, age=0.3):
    return {
        "servers": {server.lower(): {"server": server, "state": state, "pid": pid}},
        "answers": {d: {"state": "ON", "age": age} for d in devices},
    }


def test_a_fresh_answer_from_a_running_server_on_the_other_host_counts(config):
    server, devices = _on(config, "hostb")
    checks = _answers_elsewhere(config, _supervision(server, devices), "hosta")
    assert set(checks) == set(devices)
    assert {c.state for c in checks.values()} == {"ON"}


@pytest.mark.parametrize(
    "change",
    [
        {"age": RECENT_ANSWER + 0.5},  # heard too long ago
        {"age": None},  # never heard
        {"state": "RESTARTING"},  # its supervisor is restarting it
        {"pid": None},  # no process seen
    ],
)
def test_stale_or_unsupervised_answers_do_not_count(config, change):
    server, devices = _on(config, "hostb")
    assert _answers_elsewhere(config, _supervision(server, devices, **change), "hosta") == {}


def test_this_hosts_own_servers_are_left_to_its_own_process_check(config):
    server, devices = _on(config, "hosta")
    assert _answers_elsewhere(config, _supervision(server, devices), "hosta") == {}
    assert _answers_elsewhere(config, {}, "hosta") == {}  # no supervisor answered
