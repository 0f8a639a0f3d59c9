"""Shared fixtures.

System tests of a module share one beamline (``beamline`` fixture), started
with the real CLI in a temporary run directory on free ports. A module that
needs a beamline of its own (up/down behaviour) creates a ``BeamlineRun`` and
does not use the fixture: two test beamlines at once would see each other's
servers (the real Starter finds a server by its command line).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import running_beamline


def _conflicting_processes() -> list[str]:
    """Servers of the demo beamline already running outside this test run."""
    from beamline import config as cfg
    from beamline import procs

    config = cfg.load()
    names = [s.name for s in config.servers.values()]
    return [f"{p.pid} {p.cmdline}" for p in procs.find_processes(None, names)]


@pytest.fixture(scope="session", autouse=True)
def _isolation_guard(request):
    """The real Starter finds servers by command line: a demo beamline running on
    this host would be mistaken for the test's servers. `make test` runs the
    suite in its own PID namespace; a bare `pytest` must not run beside a demo."""
    has_system = any(item.get_closest_marker("system") for item in request.session.items)
    if has_system and os.environ.get("BEAMLINE_ISOLATED") != "1":
        conflicts = _conflicting_processes()
        if conflicts:
            pytest.exit(
                "a beamline is running on this host (" + "; ".join(conflicts[:3]) + "). "
                "Run the tests with `make test` (own PID namespace) or stop it with `make down`.",
                returncode=3,
            )
    os.environ.pop("TANGO_HOST", None)
    yield


@pytest.fixture(scope="module")
def beamline(tmp_path_factory):
    """The demo beamline, up for one test module; torn down and checked at its end."""
    with running_beamline(tmp_path_factory.mktemp("beamline")) as run:
        yield run


@pytest.fixture
def test_output_dir() -> Path:
    out = Path(__file__).resolve().parent.parent / "test-output"
    out.mkdir(exist_ok=True)
    return out
