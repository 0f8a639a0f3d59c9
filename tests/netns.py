"""Hosts on one machine for the multi-host tests and `bench scale`'s two-host
run: each host a network namespace (its own address on a private bridge, via
a veth pair) with its own host name, PID namespace and /proc; one central
Tango database in the root namespace, on the bridge only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import wait_until

BEAMLINE = str(Path(sys.executable).parent / "beamline")
SUBNET = "10.231.{}.{}"
#: the tests that build hosts need these
NEEDS_NAMESPACES = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
    reason="needs root, ip (iproute2) and unshare for network namespaces",
)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


class Network:
    """A bridge in the root namespace and one namespace per host on it."""

    def __init__(self, tag: str, third: int):
        self.tag, self.third = tag, third
        self.bridge = f"blbr{tag}"
        self.root_ip = SUBNET.format(third, 254)
        self.hosts: dict[str, str] = {}  # name -> address

    @classmethod
    def fresh(cls) -> Network:
        """A network with a random tag (its bridge, namespaces and subnet)."""
        tag = uuid.uuid4().hex[:4]
        return cls(tag, 100 + int(tag, 16) % 100)

    def port(self) -> int:
        """A TCP port for the central database, from the tag."""
        return 10000 + int(self.tag, 16) % 5000

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

    def start(self, *up_args: str, timeout: float = 240, check: bool = True) -> int:
        """`beamline up` on this host (``up_args`` added); its exit code,
        asserted 0 when ``check``."""
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
        wait_until(
            lambda: done.exists() and done.read_text().endswith("\n"),
            timeout,
            f"`beamline up` on {self.name}",
        )
        rc = int(done.read_text())
        if check:
            assert rc == 0, (
                f"beamline up on {self.name} exited {rc}: "
                + (self.run_dir / "up.err").read_text()[-3000:]
            )
        return rc

    def kill(self) -> None:
        """Every process of the host at once (a power cut)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None


def central_database(net: Network, base: Path, port: int) -> tuple[subprocess.Popen, str]:
    """The embedded database (PyDatabaseds) on the bridge's root address:
    (its process, its TANGO_HOST), once it answers."""
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

    try:
        wait_until(lambda: tangodb.answers(tango_host), 30, "the central database")
    except BaseException:
        db.terminate()
        db.wait(10)
        raise
    return db, tango_host


def answering(tango_host: str, devices) -> dict[str, str]:
    """Each device's State through a new client, or 'no answer: ...'."""
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


@dataclass
class TwoHosts:
    net: Network
    hosts: dict[str, Host]  # by name, in the order given
    tango_host: str
    db: subprocess.Popen  # the central database


@contextlib.contextmanager
def two_hosts(base: Path, config: Path, names=("hosta", "hostb")) -> Iterator[TwoHosts]:
    """A fresh network with a namespace per host (not started: ``start`` each,
    the first first) and the central database; everything killed and
    removed on the way out."""
    net = Network.fresh()
    db = None
    hosts: dict[str, Host] = {}
    try:
        net.create({name: i for i, name in enumerate(names, start=1)})
        db, tango_host = central_database(net, base, net.port())
        hosts = {name: Host(net, name, base, config, tango_host) for name in names}
        yield TwoHosts(net, hosts, tango_host, db)
    finally:
        for h in hosts.values():
            h.kill()
        if db is not None:
            db.terminate()
            db.wait(10)
        net.destroy()
