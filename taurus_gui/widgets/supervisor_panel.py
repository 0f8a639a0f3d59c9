"""The supervisor (``bl01/sys/supervisor``): per server its state, pid,
restarts, uptime, last failure cause and recovery time, with start, stop and
restart buttons. Fed by the supervisor's ``Report`` change events."""

from __future__ import annotations

from taurus.external.qt import Qt

from taurus_gui import model
from taurus_gui.widgets.common import (
    AttrWatcher,
    CommandRunner,
    MessageLine,
    StateLabel,
    connect_panel,
)

COLUMNS = ("server", "state", "pid", "restarts", "uptime", "last_cause", "last_recovery")
HEADERS = ("Server", "State", "PID", "Restarts", "Uptime", "Last failure", "Last recovery")


class SupervisorPanel(Qt.QWidget):
    """``setModel("bl01/sys/supervisor")``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.device = ""
        self.rows: list[dict[str, str]] = []
        self.runner: CommandRunner | None = None
        self.watcher: AttrWatcher | None = None
        layout = Qt.QVBoxLayout(self)
        top = Qt.QHBoxLayout()
        self.state = StateLabel()
        self.summary = Qt.QLabel("")
        self.summary.setWordWrap(True)
        top.addWidget(self.state)
        top.addWidget(self.summary, 1)
        layout.addLayout(top)
        self.table = Qt.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(HEADERS))
        self.table.setEditTriggers(Qt.QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(Qt.QAbstractItemView.SelectRows)
        self.table.setSelectionMode(Qt.QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table, 1)
        buttons = Qt.QHBoxLayout()
        self.buttons: dict[str, Qt.QPushButton] = {}
        for command, text in (
            ("StartServer", "Start"),
            ("StopServer", "Stop"),
            ("RestartServer", "Restart"),
        ):
            button = Qt.QPushButton(text)
            button.setObjectName(f"supervisor_{command}")
            button.clicked.connect(lambda _=False, c=command: self._act(c))
            buttons.addWidget(button)
            self.buttons[command] = button
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.message = MessageLine()
        layout.addWidget(self.message)

    def setModel(self, model_name, **kwargs) -> None:
        connect_panel(self, model_name, ["State", "Summary", "Report"])

    def getModel(self, **kwargs):
        return self.device

    def _on_value(self, name: str, value) -> None:
        if name == "State":
            self.state.set_state(model.state_name(value))
        elif name == "Summary":
            self.summary.setText(str(value))
        elif name == "Report":
            self._fill(model.supervisor_rows(str(value)))

    def _on_failed(self, name: str, text: str) -> None:
        if name == "State":
            self.state.set_state("UNKNOWN", text)
            self.summary.setText(f"the supervisor does not answer: {text}")

    def _fill(self, rows: list[dict[str, str]]) -> None:
        selected = self.selected_server()
        self.rows = rows
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(COLUMNS):
                item = Qt.QTableWidgetItem(row[key])
                if key == "state":
                    bg, fg = model.SERVER_COLOURS.get(row[key], ("#808080", "white"))
                    item.setBackground(Qt.QColor(bg))
                    item.setForeground(Qt.QColor(fg))
                self.table.setItem(r, c, item)
            if row["server"] == selected:
                self.table.selectRow(r)
        self.table.resizeColumnsToContents()

    def server_state(self, server: str) -> str | None:
        for row in self.rows:
            if row["server"] == server:
                return row["state"]
        return None

    def selected_server(self) -> str | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows:
            return None
        r = min(rows)
        return self.rows[r]["server"] if r < len(self.rows) else None

    def _act(self, command: str) -> None:
        server = self.selected_server()
        if server is None:
            self.message.error(f"{command}: select a server first")
            return
        self.message.info(f"{command} {server}: sent")
        self.runner.call(command, server, lambda _r: self.message.info(f"{command} {server}: done"))
