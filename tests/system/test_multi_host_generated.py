"""A generated beamline spread over two hosts (`beamline config generate
--hosts hosta,hostb`), on the network-namespace hosts of tests/netns.py with
one central database: `up` on each host starts exactly that host's servers
under its Starter, and every device of both hosts answers a client. (The
same at 200 servers is `bench scale` with BENCH_SCALE_HOSTS=2.)"""

from __future__ import annotations

import subprocess

import pytest

from beamline import config as cfg
from tests.helpers import PROJECT, wait_until
from tests.netns import BEAMLINE, NEEDS_NAMESPACES, answering, two_hosts

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    NEEDS_NAMESPACES,
]

HOSTS = ("hosta", "hostb")


def test_a_generated_beamline_on_two_hosts_runs_each_hosts_servers_there(tmp_path):
    config = tmp_path / "generated"
    made = subprocess.run(
        [BEAMLINE, "--config-dir", str(PROJECT / "db_config"), "config", "generate"]
        + ["--out", str(config), "--servers", "24", "--hosts", ",".join(HOSTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    c = cfg.load(config, tmp_path / "check")
    wanted = {h: {n for n, s in c.servers.items() if s.host == h} for h in HOSTS}
    assert all(len(names) > 5 for names in wanted.values()), wanted
    hardware = sorted(
        d for server in c.servers if not server.startswith("sardana/") for d in c.devices_of(server)
    )
    with two_hosts(tmp_path, config) as world:
        world.hosts["hosta"].start()
        world.hosts["hostb"].start("--no-sim", "--no-config")
        tango_host = world.tango_host
        from beamline.starter import Starter

        def running(host: str) -> set[str]:
            view = Starter(tango_host, host).servers()
            return {s.name.lower() for s in view.values() if s.state == "ON"}

        for host in HOSTS:  # the Starter sees a server it did not start at its next look
            wait_until(
                lambda host=host: running(host) == wanted[host],
                30,
                f"{host}'s Starter running exactly {host}'s servers",
                on_timeout=lambda host=host: str(running(host) ^ wanted[host]),
            )
        wait_until(
            lambda: not [s for s in answering(tango_host, hardware).values() if "no answer" in s],
            60,
            "every device of both hosts answering",
            on_timeout=lambda: str(
                {d: s for d, s in answering(tango_host, hardware).items() if "no answer" in s}
            ),
        )
