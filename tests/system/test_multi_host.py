"""Two hosts on one machine: each a network namespace (its own address on a
bridge, via a veth pair) with its own host name, PID namespace and /proc, one
central Tango database in between. The same db_config assigns every server to
a host; `beamline up --host` on each starts its Starter and only its servers,
and each host's supervisor heals its own servers.

A client sees every device; killing every process of host B leaves host A's
devices answering; bringing host B back restores its devices.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import PROJECT, wait_until

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
        reason="needs root, ip (iproute2) and unshare for network namespaces",
    ),
]

BEAMLINE = str(Path(sys.executable).parent / "beamline")
SUBNET = "10.231.{}.{}"
HOST_B_SERVERS = ("DataLogger/logger", "ExperimentQueue/queue", "Supervisor/hostb")
HOST_B_DEVICES = ("bl01/sys/logger", "bl01/sys/queue", "bl01/sys/supervisor-hostb")
HOST_A_DEVICES = (
    "bl01/mot/sample_x",
    "bl01/shutter/fe",
    "bl01/ct/scaler",
    "bl01/vac/gauge1",
    "bl01/sys/supervisor",
)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def two_host_config(dest: Path) -> Path:
    """db_config with hosts: B runs the logger, the queue and its own
    supervisor; A runs everything else."""
    shutil.copytree(PROJECT / "db_config", dest)
    starter = json.loads((dest / "starter.json").read_text())
    for name, info in starter["servers"].items():
        info["host"] = "hostb" if name in HOST_B_SERVERS else "hosta"
    starter["servers"]["Supervisor/hostb"] = {"host": "hostb", "level": 1, "controlled": True}
    (dest / "starter.json").write_text(json.dumps(starter, indent=2))
    system = json.loads((dest / "tango" / "system.json").read_text())
    system["servers"]["Supervisor"]["hostb"] = {
        "Supervisor": {"bl01/sys/supervisor-hostb": {"properties": {"HangTimeout": ["3.0"]}}}
    }
    (dest / "tango" / "system.json").write_text(json.dumps(system, indent=2))
    return dest


class Network:
    """A bridge in the root namespace and one namespace per host on it."""

    def __init__(self, tag: str, third: int):
        self.tag, self.third = tag, third
        self.bridge = f"blbr{tag}"
        self.root_ip = SUBNET.format(third, 254)
        self.hosts: dict[str, str] = {}  # name -> address

    def netns(self, host: str) -> str:
        return f"bl{self.tag}{host[-1]}"

    def create(self, hosts: dict[str, int]) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.root_ip}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        lines = ["127.0.0.1 localhost"]
        for name, last in hosts.items():
            self.hosts[name] = SUBNET.format(self.third, last)
            lines.append(f"{self.hosts[name]} {name}")
        lines.append(f"{self.root_ip} blroot")
        for name in hosts:
            ns, veth = self.netns(name), f"v{self.tag}{name[-1]}"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "link", "set", veth, "master", self.bridge)
            run("ip", "link", "set", veth, "up")
            run(
                "ip",
                "netns",
                "exec",
                ns,
                "ip",
                "addr",
                "add",
                f"{self.hosts[name]}/24",
                "dev",
                "eth0",
            )
            run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(lines) + "\n")

    def destroy(self) -> None:
        for name in self.hosts:
            ns = self.netns(name)
            run("ip", "netns", "delete", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
            run("ip", "link", "delete", f"v{self.tag}{name[-1]}", check=False)
        run("ip", "link", "delete", self.bridge, check=False)
        with contextlib.suppress(OSError):  # only if no other namespace uses it
            Path("/etc/netns").rmdir()


class Host:
    """`beamline up` inside a host's namespaces; the namespace's init keeps
    the host alive, and killing it kills every process of the host."""

    def __init__(self, net: Network, name: str, base: Path, config: Path, tango_host: str):
        self.net, self.name, self.config, self.tango_host = net, name, config, tango_host
        self.run_dir = base / name
        self.proc: subprocess.Popen | None = None

    def start(self, *up_args: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        done = self.run_dir / "up.rc"
        done.unlink(missing_ok=True)
        script = (
            f"hostname {self.name} && "
            f"{BEAMLINE} --run-dir {self.run_dir} --config-dir {self.config} up "
            f"--tango-host {self.tango_host} --host {self.name} "
            f"--listen {self.net.hosts[self.name]} --sim-auto-ports --json {' '.join(up_args)} "
            f"> {self.run_dir}/up.json 2> {self.run_dir}/up.err; "
            f"echo $? > {done}; exec sleep 100000"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("TANGO_HOST", "BEAMLINE_RUN_DIR")}
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.net.netns(self.name),
                "unshare",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
                script,
            ],
            env=env,
            start_new_session=True,
        )
        wait_until(done.exists, 240, f"`beamline up` on {self.name}")
        rc = done.read_text().strip()
        assert rc == "0", (
            f"beamline up on {self.name} exited {rc}: "
            + (self.run_dir / "up.err").read_text()[-3000:]
        )

    def kill(self) -> None:
        """Every process of the host at once (a power cut)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None


def status_check(host: Host, tango_host: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BEAMLINE, "--run-dir", str(host.run_dir), "--config-dir", str(host.config)]
        + ["status", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TANGO_HOST": tango_host},
    )


def answering(tango_host: str, devices) -> dict[str, str]:
    import tango

    out = {}
    for d in devices:
        try:
            p = tango.DeviceProxy(f"tango://{tango_host}/{d}")
            p.set_timeout_millis(1500)
            out[d] = str(p.state())
        except tango.DevFailed as exc:
            out[d] = f"no answer: {exc.args[0].desc.strip()[:80]}"
    return out


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    base = tmp_path_factory.mktemp("hosts")
    tag = uuid.uuid4().hex[:4]
    net = Network(tag, 100 + int(tag, 16) % 100)
    db = None
    hosts: dict[str, Host] = {}
    try:
        net.create({"hosta": 1, "hostb": 2})
        # the central database, in the root namespace, on the bridge only
        port = 10000 + int(tag, 16) % 5000
        env = {**os.environ, "PYTANGO_DATABASE_NAME": str(base / "central.db")}
        env.pop("TANGO_HOST", None)
        with open(base / "central-db.log", "wb") as log:
            db = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "PyDatabaseds"),
                    *("--host", net.root_ip, "--port", str(port), "2"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        tango_host = f"{net.root_ip}:{port}"
        from beamline import tangodb

        wait_until(lambda: tangodb.answers(tango_host), 30, "the central database")
        config = two_host_config(base / "db_config")
        hosts = {n: Host(net, n, base, config, tango_host) for n in ("hosta", "hostb")}
        hosts["hosta"].start()  # writes the configuration, runs the virtual hardware
        hosts["hostb"].start("--no-sim", "--no-config")
        yield net, hosts, tango_host, base
    finally:
        for h in hosts.values():
            h.kill()
        if db is not None:
            db.terminate()
            db.wait(10)
        net.destroy()


def test_every_device_of_both_hosts_answers_a_client(two_hosts):
    _net, hosts, tango_host, base = two_hosts
    wait_until(
        lambda: all(
            not s.startswith("no answer")
            for s in answering(tango_host, HOST_A_DEVICES + HOST_B_DEVICES).values()
        ),
        60,
        "every device answering",
        on_timeout=lambda: str(answering(tango_host, HOST_A_DEVICES + HOST_B_DEVICES)),
    )
    up_b = json.loads((hosts["hostb"].run_dir / "up.json").read_text())
    assert up_b["failures"] == []
    # each host's Starter runs only its own servers
    from beamline.starter import Starter

    def running(host):
        view = Starter(tango_host, host).servers()
        return {s.name for s in view.values() if s.state == "ON"}

    wait_until(lambda: set(HOST_B_SERVERS) <= running("hostb"), 30, "host B's Starter view")
    assert "Motor/sample_x" in running("hosta")
    assert not running("hostb") & {"Motor/sample_x", "Sardana/bl01", "Supervisor/supervisor"}
    # `beamline status` from host A shows both hosts
    status = subprocess.run(
        [
            BEAMLINE,
            "--run-dir",
            str(hosts["hosta"].run_dir),
            "--config-dir",
            str(hosts["hosta"].config),
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TANGO_HOST": tango_host},
    )
    data = json.loads(status.stdout)
    assert {h["host"]: h["answers"] for h in data["hosts"]} == {"hosta": True, "hostb": True}
    assert data["supervisor"]["hosts"].keys() >= {"hosta", "hostb"}


def test_host_b_supervisor_heals_its_own_servers(two_hosts):
    _net, hosts, tango_host, _base = two_hosts
    import tango

    sup_b = tango.DeviceProxy(f"tango://{tango_host}/bl01/sys/supervisor-hostb")
    wait_until(
        lambda: "ExperimentQueue/queue" in (sup_b.read_attribute("Servers").value or ()),
        60,
        "host B's supervisor watching the queue",
    )
    report = json.loads(sup_b.Report)
    assert report["host"] == "hostb"
    assert {r["server"] for r in report["servers"]} == {
        "DataLogger/logger",
        "ExperimentQueue/queue",
    }
    sup_a = tango.DeviceProxy(f"tango://{tango_host}/bl01/sys/supervisor")
    watched_a = {r["server"] for r in json.loads(sup_a.Report)["servers"]}
    assert "ExperimentQueue/queue" not in watched_a and "Motor/sample_x" in watched_a

    # a crash on host B: host B's supervisor restarts it
    from beamline import procs

    def queue_row():
        rows = json.loads(sup_b.Report)["servers"]
        return next(r for r in rows if r["server"] == "ExperimentQueue/queue")

    wait_until(lambda: queue_row()["state"] == "RUNNING", 60, "the queue RUNNING on host B")
    before = queue_row()["restarts"]
    pids = procs.server_pids(hosts["hostb"].run_dir, ["ExperimentQueue/queue"])
    assert pids, "the queue's process on host B"
    for pid in pids["experimentqueue/queue"]:
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: queue_row()["restarts"] == before + 1 and queue_row()["state"] == "RUNNING",
        60,
        "host B's supervisor restarting the queue",
        on_timeout=lambda: str(queue_row()),
    )
    assert answering(tango_host, ["bl01/sys/queue"])["bl01/sys/queue"] == "ON"


def test_killing_host_b_leaves_host_a_answering_and_host_b_comes_back(two_hosts):
    _net, hosts, tango_host, _base = two_hosts
    wait_until(
        lambda: all(s == "ON" for s in answering(tango_host, HOST_B_DEVICES).values()),
        60,
        "host B's devices ON",
        on_timeout=lambda: str(answering(tango_host, HOST_B_DEVICES)),
    )
    hosts["hostb"].kill()
    wait_until(
        lambda: all(
            s.startswith("no answer") for s in answering(tango_host, HOST_B_DEVICES).values()
        ),
        30,
        "host B's devices gone",
    )
    a = answering(tango_host, HOST_A_DEVICES)
    assert not any(s.startswith("no answer") for s in a.values()), a
    # the health checks: host A healthy, host B not (each checks its own servers)
    assert status_check(hosts["hosta"], tango_host).returncode == 0
    down_b = status_check(hosts["hostb"], tango_host)
    assert down_b.returncode == 1
    assert "bl01/sys/queue (ExperimentQueue/queue) does not answer" in down_b.stderr

    hosts["hostb"].start("--no-sim", "--no-config")
    wait_until(
        lambda: all(s == "ON" for s in answering(tango_host, HOST_B_DEVICES).values()),
        90,
        "host B's devices back",
        on_timeout=lambda: str(answering(tango_host, HOST_B_DEVICES)),
    )
    a = answering(tango_host, HOST_A_DEVICES)
    assert not any(s.startswith("no answer") for s in a.values()), a
    assert status_check(hosts["hostb"], tango_host).returncode == 0
