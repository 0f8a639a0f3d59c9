"""The operator GUI against the running demo beamline, rendered offscreen.

Every panel opens and shows live values (a screenshot of each goes to
test-output/gui/); the device forms follow the device's command table; the
queue panel's buttons change the queue device; a killed server shows as
failed in the supervisor panel and the overview, then recovered.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from tests.helpers import wait_until  # noqa: E402
from tests.system.conftest import reset_queue  # noqa: E402

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    # Taurus 5.4 and Sardana's Qt layer still call deprecated Python APIs
    # (threading notifyAll, Qt.qApp); not ours to fix
    pytest.mark.filterwarnings("ignore::DeprecationWarning:taurus.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:sardana.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pyqtgraph.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:taurus_pyqtgraph.*"),
]

QUEUE = "bl01/sys/queue"
SUPERVISOR = "bl01/sys/supervisor"
MOTOR = "bl01/mot/sample_x"
TIMEOUT = 30


@pytest.fixture(scope="module")
def gui(beamline, tmp_path_factory):
    """The BL01 TaurusGui on the test beamline (its settings in a temp dir)."""
    import tango

    door = beamline.proxy("bl01/sardana/door")
    wait_until(lambda: door.state() == tango.DevState.ON, 60, "the Door ready")
    q = beamline.proxy(QUEUE)
    wait_until(lambda: q.state() != tango.DevState.INIT, 20, "the queue ready")

    from taurus_gui import app as gui_app

    settings = tmp_path_factory.mktemp("gui") / "bl01.ini"
    _app, window = gui_app.make_gui(settings, interactive=False)
    window.show()
    yield window
    from taurus_gui.widgets.common import stop_all_watchers

    assert stop_all_watchers() == 0, "a watcher thread did not stop"
    window.close()
    import taurus

    taurus.Factory("tango").cleanUp()


@pytest.fixture
def queue_device(beamline):
    q = beamline.proxy(QUEUE, timeout_ms=10000)
    yield q
    reset_queue(q)


def panel(gui, name):
    p = gui.getPanel(name)
    assert p is not None, f"no panel {name!r}; panels: {gui.getPanelNames()}"
    gui.setFocusToPanel(name)
    return p.widget()


def test_every_panel_opens_and_shows_live_values(gui, qtbot, beamline, test_output_dir):
    from taurus_gui import app as gui_app

    names = gui.getPanelNames()
    for expected in ("Overview", "Queue", "Supervisor", "Camera", "Counts", "Pressure", MOTOR):
        assert expected in names

    overview = panel(gui, "Overview")
    assert "bl01/mot/slit_h" in overview.tiles and "bl01/det/cam1" in overview.tiles
    # every tile shows what its device says
    proxies = {d: beamline.proxy(d) for d in overview.tiles}

    def mismatches():
        wrong = {}
        for device, tile in overview.tiles.items():
            try:
                actual = str(proxies[device].state())
            except Exception as exc:  # noqa: BLE001 - reported below
                actual = f"no answer: {exc}"
            if tile.state.state != actual:
                wrong[device] = (tile.state.state, actual, tile.state.toolTip())
        return wrong

    try:
        qtbot.waitUntil(lambda: not mismatches(), timeout=60_000)
    except qtbot.TimeoutError:
        pytest.fail(f"tiles (shown, device says, tooltip) differ: {mismatches()}")

    motor = panel(gui, MOTOR)
    qtbot.waitUntil(lambda: motor.state == "ON" and motor.form is not None, timeout=TIMEOUT * 1000)
    form_attrs = {str(i.getModelName()).rsplit("/", 1)[-1] for i in motor.form.getItems()}
    assert {"Position", "Velocity", "Offset"} <= form_attrs

    sup = panel(gui, "Supervisor")
    qtbot.waitUntil(lambda: sup.server_state("Motor/sample_x") == "RUNNING", timeout=TIMEOUT * 1000)
    assert len(sup.rows) >= 10

    queue = panel(gui, "Queue")
    qtbot.waitUntil(lambda: queue.state.text() == "state: idle", timeout=TIMEOUT * 1000)

    camera = panel(gui, "Camera")
    qtbot.mouseClick(camera.buttons["Snap"], _left())
    qtbot.waitUntil(lambda: camera.frames_shown > 0, timeout=TIMEOUT * 1000)
    image = camera.view.getImageItem().image
    assert image.shape == (512, 512) and image.max() > 0

    trend = panel(gui, "Pressure")
    qtbot.waitUntil(lambda: _trend_points(trend) > 0, timeout=TIMEOUT * 1000)

    shots = gui_app.save_screenshots(gui, test_output_dir / "gui")
    with_widget = [n for n in names if gui.getPanel(n).widget() is not None]
    assert len(shots) == len(with_widget) >= 15
    assert all(p.stat().st_size > 1000 for p in shots)


def _left():
    from taurus.external.qt import Qt

    return Qt.Qt.LeftButton


def _trend_points(trend) -> int:
    """Points plotted by a taurus_pyqtgraph TaurusTrend."""
    total = 0
    for item in trend.getPlotItem().listDataItems():
        x, _y = item.getData()
        total += 0 if x is None else len(x)
    return total


def test_device_form_enables_only_what_the_state_allows(gui, qtbot, beamline):
    motor = panel(gui, MOTOR)
    proxy = beamline.proxy(MOTOR)
    qtbot.waitUntil(lambda: motor.state == "ON", timeout=TIMEOUT * 1000)
    assert {"Home", "Stop", "SetPosition"} <= set(motor.enabled_commands())
    start = proxy.Position
    velocity = proxy.Velocity
    proxy.Position = start + 5 * velocity  # a few seconds of motion
    try:
        qtbot.waitUntil(lambda: motor.state == "MOVING", timeout=TIMEOUT * 1000)
        enabled = motor.enabled_commands()
        assert "Stop" in enabled
        assert "Home" not in enabled and "SetPosition" not in enabled
        assert "allowed in" in motor.buttons["Home"].toolTip()
        qtbot.mouseClick(motor.buttons["Stop"], _left())
        qtbot.waitUntil(lambda: motor.state == "ON", timeout=TIMEOUT * 1000)
        assert "Home" in motor.enabled_commands()
    finally:
        proxy.Stop()
        wait_until(lambda: str(proxy.state()) == "ON", TIMEOUT, "the motor stopped")
        proxy.Position = start


def test_queue_panel_buttons_change_the_queue(gui, qtbot, queue_device):
    queue = panel(gui, "Queue")
    q = queue_device
    qtbot.waitUntil(lambda: queue.state.text() == "state: idle", timeout=TIMEOUT * 1000)

    queue.macro_line.setText("ct 0.01")
    qtbot.mouseClick(queue.buttons["add"], _left())
    queue.macro_line.setText("ct 0.02")
    qtbot.mouseClick(queue.buttons["add"], _left())
    qtbot.waitUntil(lambda: q.QueueLength == 2 and len(queue.rows) == 2, timeout=TIMEOUT * 1000)
    assert [r["macro"] for r in queue.rows] == ["ct 0.01", "ct 0.02"]

    # a macro the MacroServer does not know: refused, the queue unchanged
    queue.macro_line.setText("no_such_macro 1")
    qtbot.mouseClick(queue.buttons["add"], _left())
    qtbot.waitUntil(lambda: "no_such_macro" in queue.message.text(), timeout=TIMEOUT * 1000)
    assert q.QueueLength == 2
    assert queue.macro_line.text() == "no_such_macro 1"  # kept, to be corrected

    # move the second item to the front
    queue.table.selectRow(1)
    qtbot.mouseClick(queue.buttons["up"], _left())
    qtbot.waitUntil(
        lambda: [i["args"] for i in json.loads(q.Items)] == [["0.02"], ["0.01"]],
        timeout=TIMEOUT * 1000,
    )
    qtbot.waitUntil(lambda: queue.rows[0]["macro"] == "ct 0.02", timeout=TIMEOUT * 1000)

    # remove the selected one
    queue.table.clearSelection()
    queue.table.selectRow(1)
    qtbot.mouseClick(queue.buttons["remove"], _left())
    qtbot.waitUntil(lambda: q.QueueLength == 1, timeout=TIMEOUT * 1000)
    assert json.loads(q.Items)[0]["args"] == ["0.02"]

    # run it: the queue empties and the history panel shows the outcome
    qtbot.waitUntil(lambda: queue.buttons["start"].isEnabled(), timeout=TIMEOUT * 1000)
    qtbot.mouseClick(queue.buttons["start"], _left())
    qtbot.waitUntil(lambda: q.QueueLength == 0 and not q.RunningItem, timeout=60_000)
    qtbot.waitUntil(
        lambda: (
            queue.history.rowCount() > 0
            and queue.history.item(0, 1).text() == "ct 0.02"
            and queue.history.item(0, 0).text() == "finished"
        ),
        timeout=TIMEOUT * 1000,
    )


def test_queue_panel_run_controls(gui, qtbot, queue_device):
    """Down, Clear, and while an item runs: Stop (after the current item),
    Pause and Resume."""
    queue = panel(gui, "Queue")
    q = queue_device
    qtbot.waitUntil(lambda: queue.state.text() == "state: idle", timeout=TIMEOUT * 1000)
    for line in ("ct 0.01", "ct 0.02"):
        queue.macro_line.setText(line)
        qtbot.mouseClick(queue.buttons["add"], _left())

    def panel_shows_the_queue():
        uids = [i["uid"] for i in json.loads(q.Items)]
        return len(uids) == 2 and [r["uid"] for r in queue.rows] == uids

    qtbot.waitUntil(panel_shows_the_queue, timeout=TIMEOUT * 1000)
    queue.table.clearSelection()
    queue.table.selectRow(0)
    assert len(queue.selected_uids()) == 1
    qtbot.mouseClick(queue.buttons["down"], _left())
    try:
        qtbot.waitUntil(
            lambda: [i["args"] for i in json.loads(q.Items)] == [["0.02"], ["0.01"]],
            timeout=TIMEOUT * 1000,
        )
    except qtbot.TimeoutError:
        pytest.fail(f"Down did not move it: {q.Items}; panel says {queue.message.text()!r}")
    qtbot.mouseClick(queue.buttons["clear"], _left())
    qtbot.waitUntil(lambda: q.QueueLength == 0 and queue.rows == [], timeout=TIMEOUT * 1000)

    for line in ("ct 3", "ct 0.01"):
        queue.macro_line.setText(line)
        qtbot.mouseClick(queue.buttons["add"], _left())
    qtbot.waitUntil(lambda: q.QueueLength == 2, timeout=TIMEOUT * 1000)
    qtbot.waitUntil(lambda: queue.buttons["start"].isEnabled(), timeout=TIMEOUT * 1000)
    qtbot.mouseClick(queue.buttons["start"], _left())
    qtbot.waitUntil(
        lambda: q.QueueState == "running" and bool(q.RunningItem), timeout=TIMEOUT * 1000
    )
    # Stop first (after the current item), then Pause and Resume that item
    qtbot.waitUntil(lambda: queue.buttons["stop"].isEnabled(), timeout=TIMEOUT * 1000)
    qtbot.mouseClick(queue.buttons["stop"], _left())
    qtbot.waitUntil(lambda: q.QueueState == "stopping", timeout=TIMEOUT * 1000)
    qtbot.waitUntil(lambda: queue.buttons["pause"].isEnabled(), timeout=TIMEOUT * 1000)
    qtbot.mouseClick(queue.buttons["pause"], _left())
    qtbot.waitUntil(lambda: q.QueueState == "paused", timeout=TIMEOUT * 1000)
    qtbot.waitUntil(lambda: queue.buttons["resume"].isEnabled(), timeout=TIMEOUT * 1000)
    qtbot.mouseClick(queue.buttons["resume"], _left())
    # the running item ends, the next one stays queued
    qtbot.waitUntil(lambda: q.QueueState == "idle" and not q.RunningItem, timeout=60_000)
    assert [i["macro"] for i in json.loads(q.Items)] == ["ct"]
    assert json.loads(q.Items)[0]["args"] == ["0.01"]
    qtbot.waitUntil(lambda: queue.state.text() == "state: idle", timeout=TIMEOUT * 1000)


def test_overview_tile_opens_the_panel(gui, qtbot, monkeypatch):
    overview = panel(gui, "Overview")
    raised: list[str] = []
    real = gui.setFocusToPanel

    def spy(name):
        raised.append(name)
        real(name)

    monkeypatch.setattr(gui, "setFocusToPanel", spy)
    overview.tiles[MOTOR].button.click()
    overview.tiles[QUEUE].button.click()  # the queue's tile: the Queue panel
    overview.tiles["bl01/sardana/door"].button.click()  # Sardana: the macro executor
    assert raised == [MOTOR, "Queue", "Macros"]
    assert all(gui.getPanel(name) is not None for name in raised)


def test_a_large_group_is_a_grid_whose_tiles_open_forms_on_demand(gui, qtbot, beamline):
    """A group of more devices than GRID_OVER (a real beamline's motors): rows
    of tiles below the beam, inside a scroll area, and no panel per device: a
    click opens the device's form in a window of its own."""
    from taurus.external.qt import Qt

    from taurus_gui.model import GRID_OVER, Section
    from taurus_gui.widgets.overview import GRID_COLUMNS, BeamlineOverview

    devices = tuple(panel(gui, "Overview").tiles)
    assert len(devices) > GRID_OVER
    overview = BeamlineOverview()
    overview.sections = [Section(f"Many ({len(devices)})", devices)]
    overview.setModel("overview")
    qtbot.addWidget(overview)
    overview.show()
    assert overview.findChild(Qt.QScrollArea) is not None
    box = overview.findChild(Qt.QGroupBox)
    grid = box.layout()
    assert isinstance(grid, Qt.QGridLayout) and grid.columnCount() == GRID_COLUMNS
    assert grid.rowCount() == -(-len(devices) // GRID_COLUMNS)
    qtbot.waitUntil(lambda: overview.tiles[MOTOR].state.state == "ON", timeout=TIMEOUT * 1000)

    overview.tiles[MOTOR].button.click()  # no TaurusGui around it: a window
    form = overview.forms[MOTOR]
    assert form.isVisible() and form.windowTitle() == MOTOR
    qtbot.waitUntil(lambda: form.state == "ON" and form.form is not None, timeout=TIMEOUT * 1000)
    overview.tiles[MOTOR].button.click()  # the same window again, raised
    assert list(overview.forms) == [MOTOR]
    form.close()


def test_a_large_group_is_fed_by_the_supervisors_and_the_rest_watch_themselves(
    gui, qtbot, beamline
):
    """The tiles of a large group take their states from the supervisor's
    DeviceStates (one subscription); a device it does not supervise (itself)
    watches its device; a killed server's tile says it is restarting."""
    from taurus_gui.model import Section
    from taurus_gui.widgets.overview import BeamlineOverview

    devices = tuple(panel(gui, "Overview").tiles)
    overview = BeamlineOverview()
    overview.sections = [Section(f"Many ({len(devices)})", devices)]
    overview.feeds = ["bl01/sys/supervisor"]
    overview.setModel("overview")
    qtbot.addWidget(overview)
    qtbot.waitUntil(
        lambda: all(t.state.state != "UNKNOWN" for t in overview.tiles.values()),
        timeout=TIMEOUT * 1000,
    )
    fed = {d for d, t in overview.tiles.items() if t.watcher is None}
    assert "bl01/sys/supervisor" not in fed and overview.tiles["bl01/sys/supervisor"].watcher
    assert MOTOR in fed and len(fed) == len(devices) - 1, set(devices) - fed
    assert overview.tiles[MOTOR].state.state == "ON"
    device, server = "bl01/mot/slit_v", "Motor/slit_v"
    seen: list[tuple[str, str]] = []
    tile = overview.tiles[device]
    overview.feed.watchers[0].changed.connect(
        lambda *_: seen.append((tile.state.state, tile.state.toolTip()))
    )
    report = json.loads(beamline.proxy(SUPERVISOR).Report)
    pid = next(r["pid"] for r in report["servers"] if r["server"] == server)
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(
        lambda: any("Motor/slit_v is RESTARTING" in tip for _s, tip in seen),
        timeout=TIMEOUT * 1000,
    )
    qtbot.waitUntil(lambda: tile.state.state == "ON", timeout=TIMEOUT * 1000)


def test_killed_server_shows_failed_then_recovered(gui, qtbot, beamline):
    sup = panel(gui, "Supervisor")
    overview = gui.getPanel("Overview").widget()
    server, device = "Motor/slit_v", "bl01/mot/slit_v"
    qtbot.waitUntil(lambda: sup.server_state(server) == "RUNNING", timeout=TIMEOUT * 1000)
    restarts = int(next(r for r in sup.rows if r["server"] == server)["restarts"])
    seen_server: list[str] = []
    sup.watcher.changed.connect(lambda *_: seen_server.append(sup.server_state(server)))

    report = json.loads(beamline.proxy(SUPERVISOR).Report)
    pid = next(r["pid"] for r in report["servers"] if r["server"] == server)
    os.kill(pid, signal.SIGKILL)

    def recovered():
        row = next(r for r in sup.rows if r["server"] == server)
        return row["state"] == "RUNNING" and int(row["restarts"]) == restarts + 1

    qtbot.waitUntil(recovered, timeout=60_000)
    assert any(s not in (None, "RUNNING") for s in seen_server), seen_server
    row = next(r for r in sup.rows if r["server"] == server)
    assert "SIGKILL" in row["last_cause"] or "signal 9" in row["last_cause"], row
    assert row["last_recovery"].endswith(" s")
    qtbot.waitUntil(lambda: overview.tiles[device].state.state == "ON", timeout=TIMEOUT * 1000)


def test_supervisor_panel_stops_and_starts_a_server(gui, qtbot):
    sup = panel(gui, "Supervisor")
    server = "Shutter/fe"
    qtbot.waitUntil(lambda: sup.server_state(server) == "RUNNING", timeout=TIMEOUT * 1000)
    row = next(i for i, r in enumerate(sup.rows) if r["server"] == server)
    sup.table.selectRow(row)
    qtbot.mouseClick(sup.buttons["StopServer"], _left())
    qtbot.waitUntil(lambda: sup.server_state(server) == "STOPPED", timeout=TIMEOUT * 1000)
    row = next(i for i, r in enumerate(sup.rows) if r["server"] == server)
    sup.table.selectRow(row)
    assert sup.selected_server() == server
    qtbot.mouseClick(sup.buttons["StartServer"], _left())
    try:
        qtbot.waitUntil(lambda: sup.server_state(server) == "RUNNING", timeout=60_000)
    except qtbot.TimeoutError:
        row = next(r for r in sup.rows if r["server"] == server)
        pytest.fail(f"{server} not RUNNING: {row}; panel says {sup.message.text()!r}")


def test_beamline_gui_command(beamline, tmp_path):
    """`beamline gui` without a display says what to do; with --screenshots
    it renders every panel offscreen and quits."""
    env = beamline.env()
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.pop("QT_QPA_PLATFORM", None)
    refused = beamline.cli("gui", check=False, env=env)
    assert refused.returncode != 0
    assert "no display" in refused.stderr and "--screenshots" in refused.stderr

    shots = tmp_path / "shots"
    done = beamline.cli("gui", "--screenshots", str(shots), "--settle", "3", env=env, timeout=120)
    printed = [line for line in done.stdout.splitlines() if line.endswith(".png")]
    assert (shots / "Overview.png").stat().st_size > 1000
    assert len(printed) == len(list(shots.glob("*.png"))) >= 15
    assert (beamline.run_dir / "gui").is_dir()
