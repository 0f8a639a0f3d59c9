"""A form per device: its attributes in a TaurusForm and its commands as
buttons, both state-aware.

The device publishes its own command table (``CommandStates``: command or
``write_<Attribute>`` -> the states that allow it); the panel enables a
button, or an attribute's write widget, only in those states, and updates
them on every State event. A device that does not answer shows why and the
panel fills itself in when it comes back.
"""

from __future__ import annotations

from taurus.external.qt import Qt
from taurus.qt.qtgui.container import TaurusWidget
from taurus.qt.qtgui.panel import TaurusForm

from taurus_gui import model
from taurus_gui.discovery import trl
from taurus_gui.widgets.common import (
    AttrWatcher,
    CommandRunner,
    MessageLine,
    StateLabel,
    connect_panel,
)

RETRY_MS = 3000


def _device_info(device: str):
    """(attribute names for the form, [(command, in_type_name)], command table)."""
    import tango

    proxy = tango.DeviceProxy(trl(device))
    proxy.set_timeout_millis(2000)
    attrs = [
        a.name
        for a in proxy.attribute_list_query()
        if a.name not in model.HIDDEN_ATTRIBUTES and a.data_format != tango.AttrDataFormat.IMAGE
    ]
    commands = [
        (c.cmd_name, str(c.in_type))
        for c in proxy.command_list_query()
        if c.cmd_name not in model.HIDDEN_COMMANDS
    ]
    table: dict[str, frozenset[str]] = {}
    if "CommandStates" in proxy.get_attribute_list():
        table = model.parse_command_states(proxy.read_attribute("CommandStates").value)
    return attrs, commands, table


class _InfoSignals(Qt.QObject):
    done = Qt.pyqtSignal(object)
    failed = Qt.pyqtSignal(str)


class _FetchInfo(Qt.QRunnable):
    """``_device_info`` off the GUI thread: a dead host must not freeze it."""

    def __init__(self, device: str):
        super().__init__()
        self.device = device
        self.signals = _InfoSignals()

    def run(self) -> None:
        import tango

        try:
            info = _device_info(self.device)
        except tango.DevFailed as exc:
            self.signals.failed.emit(str(exc.args[0].desc).strip())
        except Exception as exc:  # noqa: BLE001 - shown in the panel
            self.signals.failed.emit(str(exc))
        else:
            self.signals.done.emit(info)


def _convert(text: str, in_type: str):
    """A command argument typed in a line edit, as the command's input type."""
    if "Double" in in_type or "Float" in in_type:
        return float(text)
    if any(t in in_type for t in ("Long", "Short", "ULong", "UShort")):
        return int(text)
    if "Boolean" in in_type:
        return text.strip().lower() in ("1", "true", "yes", "on")
    return text


class DevicePanel(TaurusWidget):
    """``setModel("bl01/mot/slit_h")``: header (name, state, status), the
    form, the command buttons and a message line."""

    def __init__(self, parent=None, designMode=False):
        super().__init__(parent, designMode=designMode)
        self.device = ""
        self.state = "UNKNOWN"
        self.table: dict[str, frozenset[str]] = {}
        self.buttons: dict[str, Qt.QPushButton] = {}
        self.arguments: dict[str, Qt.QLineEdit] = {}
        self.form: TaurusForm | None = None
        self.watcher: AttrWatcher | None = None
        self.runner: CommandRunner | None = None
        self._fetching = False
        self._started = False  # watching and asking the device: once first on screen
        self._pending_attrs: list[str] | None = None  # the form, built once first shown
        self._fetch_pool = Qt.QThreadPool(self)
        self._fetch_pool.setMaxThreadCount(1)

        layout = Qt.QVBoxLayout(self)
        header = Qt.QHBoxLayout()
        self.title = Qt.QLabel("")
        self.title.setStyleSheet("font-weight: bold; font-size: 12pt;")
        self.state_label = StateLabel()
        header.addWidget(self.title)
        header.addStretch(1)
        header.addWidget(self.state_label)
        layout.addLayout(header)
        self.status = Qt.QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.body = Qt.QVBoxLayout()
        layout.addLayout(self.body, 1)
        self.command_box = Qt.QGroupBox("Commands")
        self.command_grid = Qt.QGridLayout(self.command_box)
        layout.addWidget(self.command_box)
        self.message = MessageLine()
        layout.addWidget(self.message)
        self._retry = Qt.QTimer(self)
        self._retry.setInterval(RETRY_MS)
        self._retry.timeout.connect(self._build)

    # Taurus calls setModel with the PanelDescription's model
    def setModel(self, model_name, **kwargs):
        # watched and asked once first on screen: a GUI with 200 devices
        # opens without 200 watcher threads and requests
        self.title.setText(connect_panel(self, model_name, ["State", "Status"], start=False))
        self.runner.finished.connect(lambda cmd, _r: self.message.info(f"{cmd}: done"))
        self._started = False
        if not self.visibleRegion().isEmpty():
            self._start()

    def _start(self) -> None:
        if self._started or self.watcher is None:
            return
        self._started = True
        self.watcher.start()
        self._build()

    def getModel(self, **kwargs):
        return self.device

    # --------------------------------------------------------------- build
    def _build(self) -> None:
        """Ask the device (in a worker thread) for its attributes, commands
        and table; if it does not answer, say so and try again a little later."""
        if self._fetching or not self.device:
            return
        self._fetching = True
        job = _FetchInfo(self.device)
        job.signals.done.connect(self._built)
        job.signals.failed.connect(self._build_failed)
        self._fetch_pool.start(job)

    def _build_failed(self, text: str) -> None:
        self._fetching = False
        self.status.setText(f"{self.device} does not answer: {text}")
        self._retry.start()

    def _built(self, info) -> None:
        self._fetching = False
        attrs, commands, table = info
        self._retry.stop()
        self.table = table
        self._pending_attrs = list(attrs)
        if not self.visibleRegion().isEmpty():
            self._fill_form()
        self._make_buttons(commands)
        self._apply_state()

    def _fill_form(self) -> None:
        """The device's attributes in a TaurusForm: made when the panel is
        first on screen, not when the GUI opens (a form per device, each
        subscribing to every attribute, was half of the GUI's opening time
        with 100 devices). A tab behind another counts as visible to Qt: what
        says it is on screen is that it is painted."""
        attrs, self._pending_attrs = self._pending_attrs, None
        if attrs is None:
            return
        if self.form is None:
            self.form = TaurusForm(self)
            self.form.setWithButtons(False)
            self.body.addWidget(self.form)
        self.form.setModel([trl(f"{self.device}/{a}") for a in attrs])

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if not self._started:
            Qt.QTimer.singleShot(0, self._start)  # not while painting
        if self._pending_attrs is not None:
            Qt.QTimer.singleShot(0, self._fill_form)

    def _make_buttons(self, commands) -> None:
        while self.command_grid.count():
            item = self.command_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.buttons.clear()
        self.arguments.clear()
        row = col = 0
        for name, in_type in commands:
            button = Qt.QPushButton(name)
            button.setObjectName(f"cmd_{name}")
            self.buttons[name] = button
            if in_type == "DevVoid":
                button.clicked.connect(lambda _=False, n=name: self._run(n, None, "DevVoid"))
                self.command_grid.addWidget(button, row, col)
                col += 1
            else:
                edit = Qt.QLineEdit()
                edit.setPlaceholderText(in_type.replace("Dev", "").lower())
                edit.setObjectName(f"arg_{name}")
                self.arguments[name] = edit
                button.clicked.connect(
                    lambda _=False, n=name, e=edit, t=in_type: self._run(n, e.text(), t)
                )
                edit.returnPressed.connect(button.click)
                if col:
                    row, col = row + 1, 0
                self.command_grid.addWidget(button, row, 0)
                self.command_grid.addWidget(edit, row, 1, 1, 3)
                row += 1
                continue
            if col == 4:
                row, col = row + 1, 0
        self.command_box.setVisible(bool(commands))

    def _run(self, name: str, text: str | None, in_type: str) -> None:
        arg = None
        if in_type != "DevVoid":
            try:
                arg = _convert(text or "", in_type)
            except ValueError:
                self.message.error(f"{name}: {text!r} is not a {in_type.replace('Dev', '')}")
                return
        self.message.info(f"{name}: sent")
        self.runner.call(name, arg)

    # -------------------------------------------------------------- state
    def _on_value(self, name: str, value) -> None:
        if name == "State":
            self.state = model.state_name(value)
            self.state_label.set_state(self.state)
            if self.form is None and not self._retry.isActive():
                self._build()
            self._apply_state()
        elif name == "Status":
            self.status.setText(str(value).strip())

    def _on_failed(self, name: str, text: str) -> None:
        if name == "State":
            self.state = "UNKNOWN"
            self.state_label.set_state("UNKNOWN", text)
            self.status.setText(f"{self.device} does not answer: {text}")
            self._apply_state()

    def _apply_state(self) -> None:
        answering = self.state != "UNKNOWN"
        for name, button in self.buttons.items():
            enabled = answering and model.command_enabled(name, self.state, self.table)
            button.setEnabled(enabled)
            if name in self.arguments:
                self.arguments[name].setEnabled(enabled)
            allowed = self.table.get(name)
            if allowed is not None and not enabled:
                button.setToolTip(f"{name} is allowed in: {', '.join(sorted(allowed))}")
            else:
                button.setToolTip("")
        if self.form is None:
            return
        for item in self.form.getItems():
            attr = str(item.getModelName()).rsplit("/", 1)[-1]
            writer = item.writeWidget()
            if writer is not None:
                writer.setEnabled(answering and model.write_enabled(attr, self.state, self.table))

    def enabled_commands(self) -> list[str]:
        """The commands whose button is enabled now (for tests and tooltips)."""
        return sorted(n for n, b in self.buttons.items() if b.isEnabled())
