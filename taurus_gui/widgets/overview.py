"""Beamline overview: every device's state at a glance, laid out along the
beam, with the interlock, the supervisor's health and the queue.

A click on a device opens (raises) its panel in the TaurusGui.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from taurus.external.qt import Qt

from taurus_gui import model
from taurus_gui.widgets.common import AttrWatcher, StateLabel

GRID_OVER = model.GRID_OVER
GRID_COLUMNS = 8


class DeviceTile(Qt.QFrame):
    """The device's short name (a button opening its panel) over its state."""

    clicked = Qt.pyqtSignal(str)

    def __init__(self, device: str, parent=None, watch: bool = True):
        super().__init__(parent)
        self.device = device
        self.watcher: AttrWatcher | None = None
        self.setFrameShape(Qt.QFrame.StyledPanel)
        layout = Qt.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.button = Qt.QPushButton(device.split("/", 1)[-1])
        self.button.setToolTip(f"{device}: open its panel")
        self.button.setFlat(True)
        self.button.clicked.connect(lambda: self.clicked.emit(self.device))
        self.state = StateLabel()
        layout.addWidget(self.button)
        layout.addWidget(self.state)
        if watch:
            self.watch()

    def watch(self) -> None:
        """Follow the device's State itself (a tile no supervisor feeds)."""
        if self.watcher is not None:
            return
        self.watcher = AttrWatcher(self.device, ["State"], self)
        self.watcher.changed.connect(lambda _n, v: self.state.set_state(model.state_name(v)))
        self.watcher.failed.connect(lambda _n, text: self.state.set_state("UNKNOWN", text))
        self.watcher.start()

    def fed(self, state: str, why: str) -> None:
        """The State a supervisor's probes saw ('' and why when none)."""
        if state:
            self.state.set_state(state)
        else:
            self.state.set_state("UNKNOWN", f"{why} (as the supervisor sees it)")


class StatesFeed(Qt.QObject):
    """The tiles of large groups fed from the supervisors' ``DeviceStates``
    (each supervised device's State as its probes saw it, pushed when one
    changes): one subscription per supervisor instead of one per device,
    and no device read every few seconds by every open GUI. A tile that no
    supervisor feeds, once each has answered, follows its device itself."""

    def __init__(self, supervisors: Sequence[str], tiles: dict[str, DeviceTile], parent=None):
        super().__init__(parent)
        self.tiles = tiles
        self.pending = set(supervisors)  # not answered yet
        self.covered: dict[str, str] = {}  # device -> the supervisor feeding it
        self.watchers = []
        for supervisor in supervisors:
            watcher = AttrWatcher(supervisor, ["DeviceStates"], self)
            watcher.changed.connect(lambda _n, v, s=supervisor: self._states(s, v))
            watcher.failed.connect(lambda _n, t, s=supervisor: self._failed(s, t))
            self.watchers.append(watcher.start())
        if not supervisors:
            self._answered("")

    def _states(self, supervisor: str, text: str) -> None:
        try:
            states = json.loads(text)
        except ValueError:
            states = {}
        for device, entry in states.items():
            try:
                state, why = entry
            except (TypeError, ValueError):
                continue
            tile = self.tiles.get(device)
            if tile is not None and tile.watcher is None:
                tile.fed(state, why)
                self.covered[device] = supervisor
        self._answered(supervisor)

    def _failed(self, supervisor: str, text: str) -> None:
        """A supervisor that does not answer: its tiles say so (its standby
        restarts it within about a second)."""
        for device, source in self.covered.items():
            if source == supervisor:
                self.tiles[device].fed("", f"{supervisor} does not answer: {text}")
        self._answered(supervisor)

    def _answered(self, supervisor: str) -> None:
        """Once every supervisor has answered (or failed), the tiles none
        feeds watch their devices themselves."""
        if not self.pending:
            return
        self.pending.discard(supervisor)
        if not self.pending:
            for device, tile in self.tiles.items():
                if device not in self.covered:
                    tile.watch()


class ValueLine(Qt.QWidget):
    """``label: value`` fed by one attribute; red text while it cannot be read."""

    def __init__(
        self,
        label: str,
        device: str,
        attribute: str,
        fmt: str | Callable[[Any], str] = "{}",
        parent=None,
    ):
        super().__init__(parent)
        self.fmt = fmt
        layout = Qt.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(Qt.QLabel(f"{label}:"))
        self.value = Qt.QLabel("...")
        self.value.setTextInteractionFlags(Qt.Qt.TextSelectableByMouse)
        layout.addWidget(self.value, 1)
        self.watcher = AttrWatcher(device, [attribute], self)
        self.watcher.changed.connect(self._show)
        self.watcher.failed.connect(self._fail)
        self.watcher.start()

    def _show(self, _name: str, value) -> None:
        try:
            text = self.fmt(value) if callable(self.fmt) else self.fmt.format(value)
        except (ValueError, TypeError):
            text = str(value)
        self.value.setStyleSheet("")
        self.value.setText(text)

    def _fail(self, _name: str, text: str) -> None:
        self.value.setStyleSheet("color: #c00000;")
        self.value.setText(f"not available ({text})")


class BeamlineOverview(Qt.QWidget):
    """Set ``sections`` (a list of :class:`taurus_gui.model.Section`) and the
    names of the devices of the status lines; then ``setModel`` builds it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.sections: Sequence[model.Section] = ()
        self.shutter = ""
        self.gauge = ""
        self.supervisor = ""
        # the supervisors whose DeviceStates feed the tiles of large groups
        # (none: every tile watches its device)
        self.feeds: Sequence[str] = ()
        self.feed: StatesFeed | None = None
        self.queue = ""
        self.tiles: dict[str, DeviceTile] = {}
        self.missing: list[str] = []
        self.error = ""  # why the database could not be asked (empty: it answered)
        # device -> panel to raise when its tile is clicked (default: the
        # panel named after the device)
        self.panels: dict[str, str] = {}
        self.forms: dict[str, Qt.QWidget] = {}  # forms opened on demand (no panel)
        outer = Qt.QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = Qt.QScrollArea()
        scroll.setWidgetResizable(True)
        outer.addWidget(scroll)
        content = Qt.QWidget()
        scroll.setWidget(content)
        self._layout = Qt.QVBoxLayout(content)

    def setModel(self, _model=None, **kwargs) -> None:
        self.build()

    def getModel(self, **kwargs):
        return ""

    def build(self) -> None:
        along = [s for s in self.sections if len(s.devices) <= GRID_OVER]
        grids = [s for s in self.sections if len(s.devices) > GRID_OVER]
        beam = Qt.QHBoxLayout()
        beam.addWidget(_arrow_label("source"))
        for index, section in enumerate(along):
            if index:
                beam.addWidget(_arrow_label(""))
            box = self._box(section)
            column = Qt.QVBoxLayout(box)
            for device in section.devices:
                column.addWidget(self._tile(device, box))
            column.addStretch(1)
            beam.addWidget(box)
        beam.addStretch(1)
        self._layout.addLayout(beam)
        # the large groups (a beamline's 160 motors) below, in rows of tiles,
        # fed by the supervisors
        fed: dict[str, DeviceTile] = {}
        for section in grids:
            box = self._box(section)
            grid = Qt.QGridLayout(box)
            for i, device in enumerate(section.devices):
                tile = self._tile(device, box, watch=not self.feeds)
                fed[device] = tile
                grid.addWidget(tile, i // GRID_COLUMNS, i % GRID_COLUMNS)
            self._layout.addWidget(box)
        if fed and self.feeds:
            self.feed = StatesFeed(self.feeds, fed, self)

        status = Qt.QGroupBox("Interlocks and health")
        lines = Qt.QVBoxLayout(status)
        if self.shutter:
            lines.addWidget(
                ValueLine("Shutter interlock", self.shutter, "Interlock", model.interlock_text)
            )
            lines.addWidget(
                ValueLine("Interlock reason", self.shutter, "InterlockReason", model.or_none)
            )
        if self.gauge:
            lines.addWidget(ValueLine("Pressure", self.gauge, "Pressure", "{:.3g} mbar"))
        if self.supervisor:
            lines.addWidget(ValueLine("Supervisor", self.supervisor, "Summary"))
        if self.queue:
            lines.addWidget(ValueLine("Queue", self.queue, "QueueState"))
            lines.addWidget(ValueLine("Queue blocked by", self.queue, "BlockedBy", model.or_none))
        if self.error:
            problem = Qt.QLabel(
                f"The Tango database did not answer when the GUI started: {self.error}. "
                "Start the beamline (beamline up) or check TANGO_HOST, then reopen the GUI."
            )
            problem.setWordWrap(True)
            problem.setStyleSheet("color: #c00000;")
            lines.addWidget(problem)
        if self.missing:
            note = Qt.QLabel("Not in the database: " + ", ".join(self.missing))
            note.setStyleSheet("color: #a06000;")
            lines.addWidget(note)
        self._layout.addWidget(status)
        self._layout.addStretch(1)

    def _box(self, section: model.Section) -> Qt.QGroupBox:
        box = Qt.QGroupBox(section.title)
        if section.note:
            box.setToolTip(section.note)
        return box

    def _tile(self, device: str, parent: Qt.QWidget, watch: bool = True) -> DeviceTile:
        tile = DeviceTile(device, parent, watch)
        tile.clicked.connect(self.open_panel)
        self.tiles[device] = tile
        return tile

    def open_panel(self, device: str) -> None:
        """Raise the device's panel (panels are named after their device,
        unless ``panels`` names another one); a device without a panel (one
        of a large group) gets its form in a window of its own, made on the
        first click."""
        # the TaurusGui: an ancestor (also while this panel floats)
        holder = self.parent()
        while holder is not None and not hasattr(holder, "setFocusToPanel"):
            holder = holder.parent()
        name = self.panels.get(device, device)
        if holder is not None and name in holder.getPanelNames():
            holder.setFocusToPanel(name)
            return
        form = self.forms.get(device)
        if form is None:
            from taurus_gui.widgets.device_panel import DevicePanel

            form = DevicePanel()
            form.setWindowTitle(device)
            form.setModel(device)
            self.forms[device] = form
        form.show()
        form.raise_()


def _arrow_label(text: str) -> Qt.QLabel:
    label = Qt.QLabel(f"{text}\n\u2192" if text else "\u2192")
    label.setAlignment(Qt.Qt.AlignCenter)
    label.setStyleSheet("font-size: 16pt; color: #606060;")
    return label
