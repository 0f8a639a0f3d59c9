"""The fork server's pieces that need no beamline: the stub's fallback and
the process title (the whole path runs in tests/system/test_forkserver.py)."""

from __future__ import annotations

import subprocess
import sys

from tango_devices.common import forkserver
from tango_devices.registry import SERVERS


def test_a_server_stub_runs_the_registry_entry_point_without_a_fork_server(monkeypatch, capsys):
    """No fork server configured, or none at its socket: the executable is the server."""
    called = []
    module = type(sys)("fake_server_module")
    module.main = lambda: called.append("Motor") or 3
    monkeypatch.setitem(sys.modules, "fake_server_module", module)
    monkeypatch.setitem(SERVERS, "Motor", ("x:Motor", "fake_server_module:main"))
    monkeypatch.delenv(forkserver.SOCKET_ENV, raising=False)
    assert forkserver.Motor() == 3 and called == ["Motor"]
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(forkserver.SOCKET_ENV, "/nonexistent/forkserver.sock")
    assert forkserver.Motor() == 3 and called == ["Motor", "Motor"]


def test_a_dead_fork_server_is_said_and_the_server_starts_all_the_same(
    monkeypatch, capsys, tmp_path
):
    called = []
    module = type(sys)("fake_server_module")
    module.main = lambda: called.append("Motor")
    monkeypatch.setitem(sys.modules, "fake_server_module", module)
    monkeypatch.setitem(SERVERS, "Motor", ("x:Motor", "fake_server_module:main"))
    stale = tmp_path / "forkserver.sock"
    stale.write_text("")  # a socket file nobody listens on
    monkeypatch.setenv(forkserver.SOCKET_ENV, str(stale))
    assert forkserver.Motor() == 0 and called == ["Motor"]
    assert f"fork server {stale} did not start Motor" in capsys.readouterr().err


def test_only_the_suites_servers_are_entry_points():
    assert callable(forkserver.Motor)
    try:
        forkserver.NotAServer  # noqa: B018
    except AttributeError as exc:
        assert "NotAServer" in str(exc)
    else:
        raise AssertionError("an unknown server name must not be an entry point")


def test_the_process_title_is_the_stubs_command_line():
    code = (
        "import sys\n"
        "from tango_devices.common.forkserver import set_process_title\n"
        "set_process_title(b'/usr/bin/python3\\0/venv/bin/Motor\\0sample_x\\0', 'Motor')\n"
        "print(open('/proc/self/cmdline', 'rb').read().rstrip(b'\\0'))\n"
        "print(open('/proc/self/comm').read().strip())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, " " * 200], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["b'/usr/bin/python3\\x00/venv/bin/Motor\\x00sample_x'", "Motor"]


def test_a_title_longer_than_the_room_is_refused():
    code = (
        "from tango_devices.common.forkserver import set_process_title\n"
        "set_process_title(b'x' * 100000, 'Motor')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "does not fit" in proc.stderr
