"""The operator GUI's time to open on the running beamline ($TANGO_HOST):
from nothing to the overview showing every device's state (offscreen).
Prints one JSON line. Run by `bench scale` in a process of its own (the GUI's
configuration discovers the beamline once per process)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    t0 = time.perf_counter()
    from taurus.external.qt import Qt

    from taurus_gui import app as gui_app
    from taurus_gui.widgets.common import stop_all_watchers

    with tempfile.TemporaryDirectory() as tmp:
        app, gui = gui_app.make_gui(Path(tmp) / "gui.ini", interactive=False)
        gui.show()
        t_window = time.perf_counter() - t0
        overview = gui.getPanel("Overview").widget()
        deadline = time.monotonic() + timeout
        while True:
            app.processEvents(Qt.QEventLoop.AllEvents, 50)
            unknown = [d for d, t in overview.tiles.items() if t.state.state == "UNKNOWN"]
            if not unknown or time.monotonic() > deadline:
                break
        t_states = time.perf_counter() - t0
        out = {
            "window_s": round(t_window, 2),
            "all_states_s": round(t_states, 2),
            "tiles": len(overview.tiles),
            "without_state": len(unknown),
            "panels": len(gui.getPanelNames()),
        }
        stop_all_watchers()
        gui.close()
    print(json.dumps(out), flush=True)
    os._exit(0)  # Taurus' and Sardana's threads need not be waited for


if __name__ == "__main__":
    main()
