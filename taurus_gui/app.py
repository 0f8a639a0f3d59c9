"""Start the operator GUI (used by ``beamline gui`` and the tests).

The TaurusGui keeps its settings (perspectives, panel layout) in an ini file
that ``beamline gui`` puts in the run directory, never in ~/.config.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

CONF_DIR = Path(__file__).resolve().parent / "bl01"
FIRST_PANEL = "Overview"
SHOT_SIZE = (1200, 750)  # a panel's size in its screenshot


def needs_offscreen() -> bool:
    """True when no display is available and Qt has not been told what to use."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def make_gui(settings: Path | None = None, confname: Path = CONF_DIR, interactive: bool = True):
    """The TaurusApplication (created if there is none) and the TaurusGui.

    ``interactive=False`` (screenshots, tests): an unexpected exception is
    logged instead of shown in a modal dialog that nobody would close.
    """
    from taurus.external.qt import Qt
    from taurus.qt.qtgui.application import TaurusApplication
    from taurus.qt.qtgui.taurusgui import TaurusGui

    app = Qt.QApplication.instance()
    if app is None:
        app = TaurusApplication(cmd_line_parser=None, app_name="BL01", org_name="beamline-suite")
    if settings is not None:
        settings.parent.mkdir(parents=True, exist_ok=True)
    if not interactive:
        from taurus.core.util.log import LogExceptHook

        sys.excepthook = LogExceptHook()

    class BeamlineGui(TaurusGui):
        def showEvent(self, event):
            """Taurus' own closes the splash with QSplashScreen.finish(self),
            which waits until this window is exposed, for at most a second;
            Qt sends the show event before it shows the window, so that wait
            was the whole second on every start (measured). The splash is
            closed at once instead."""
            splash = self.splashScreen()
            if splash is not None and not event.spontaneous():
                splash.close()
            Qt.QMainWindow.showEvent(self, event)

    gui = BeamlineGui(
        None, confname=str(confname), settingsname=str(settings) if settings else None
    )
    # the layout is kept on close without asking; a non-interactive GUI keeps nothing
    gui.SAVE_SETTINGS_ON_CLOSE = interactive
    gui.setFocusToPanel(FIRST_PANEL)
    if not interactive:
        # Taurus starts its client-side polling (attributes without change
        # events) when TaurusApplication.exec_() runs; without an event loop
        # of its own the GUI must say it has started
        from taurus.taurusstatecontroller import application

        application.application_started()
    return app, gui


def panel_file_name(panel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", panel).strip("_") + ".png"


def save_screenshots(gui, out_dir: Path, panels: list[str] | None = None) -> list[Path]:
    """Raise every panel in turn and save what it shows as PNG."""
    from taurus.external.qt import Qt

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for name in panels or gui.getPanelNames():
        panel = gui.getPanel(name)
        if panel is None or panel.widget() is None:  # e.g. "Manual" without QtWebEngine
            continue
        gui.setFocusToPanel(name)
        # undocked at a readable size for the picture, then docked again
        floating = panel.isFloating()
        panel.setFloating(True)
        panel.resize(*SHOT_SIZE)
        for _ in range(5):
            Qt.QApplication.processEvents()
        path = out_dir / panel_file_name(name)
        if panel.widget().grab().save(str(path)):
            saved.append(path)
        panel.setFloating(floating)
    gui.setFocusToPanel(FIRST_PANEL)
    return saved


def show_every_panel(gui) -> None:
    """Raise every panel once (each makes its content then), and the first again."""
    from taurus.external.qt import Qt

    for name in gui.getPanelNames():
        gui.setFocusToPanel(name)
        Qt.QApplication.processEvents()
    gui.setFocusToPanel(FIRST_PANEL)


def wait_events(seconds: float) -> None:
    """Let the GUI run (events, timers) for ``seconds``."""
    from taurus.external.qt import Qt

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        Qt.QApplication.processEvents(Qt.QEventLoop.AllEvents, 50)
        time.sleep(0.01)


def run(settings: Path, screenshots: Path | None = None, settle: float = 5.0) -> NoReturn:
    """Show the GUI until it is closed; with ``screenshots``, save every
    panel after ``settle`` seconds and quit."""
    if screenshots is not None and needs_offscreen():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    app, gui = make_gui(settings, interactive=screenshots is None)
    gui.show()
    from taurus_gui.widgets.common import stop_all_watchers

    if screenshots is not None:
        show_every_panel(gui)  # what a panel shows is made when it is first shown
        wait_events(settle)
        for path in save_screenshots(gui, screenshots):
            print(path)
        stop_all_watchers()
        gui.close()
        leave(gui, 0)
    app.aboutToQuit.connect(stop_all_watchers)
    leave(gui, app.exec_())


def leave(gui, code: int) -> NoReturn:
    """End the GUI's process with ``code`` once its settings and output are
    written, without the interpreter's teardown.

    Python's teardown destroys the Qt widgets and the Tango proxies while
    cppTango's event threads still run; that crashes now and then
    (SIGSEGV after every screenshot had been saved, CI 2026-12-07; Taurus
    issues #709 and #1118 are of the same kind). Nothing is left to do by then
    that the user could lose: the settings are synced and the logs flushed
    here first.
    """
    import logging

    settings = gui.getQSettings() if hasattr(gui, "getQSettings") else None
    if settings is not None:
        settings.sync()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
