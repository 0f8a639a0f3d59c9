"""The experiment queue (``bl01/sys/queue``): the items with add, remove and
move; start, stop, pause, resume and abort; the running item with its
progress, BlockedBy, the last error and the history.

Every edit is a command of the queue device; the table only ever shows what
the device published (its ``Items`` change events), so what the operator
sees is what the queue holds. A refused edit shows the queue's reason and
changes nothing.
"""

from __future__ import annotations

import json

from taurus.external.qt import Qt

from taurus_gui import model
from taurus_gui.widgets.common import AttrWatcher, CommandRunner, MessageLine, connect_panel

QUEUE_COLUMNS = ("macro", "repeat", "meta", "uid")
HISTORY_COLUMNS = ("outcome", "macro", "repetitions", "started", "ended", "error")
OUTCOME_COLOURS = {
    "finished": "#d0ffd0",
    "failed": "#ffd0d0",
    "lost": "#ffd0d0",
    "unknown": "#ffd0ff",
    "stopped": "#ffffc0",
    "aborted": "#ffffc0",
}
HISTORY_LIMIT = 200
#: the queue command behind each button: the button is enabled exactly where
#: the queue's own table (its CommandStates) allows that command
BUTTON_COMMANDS = {
    "start": "Start",
    "stop": "Stop",
    "stop_cancel": "StopCancel",
    "pause": "Pause",
    "pause_deferred": "Pause",
    "resume": "Resume",
    "abort": "AbortMacro",
    "add": "Add",
    "remove": "Remove",
    "up": "Move",
    "down": "Move",
    "clear": "Clear",
}


def _table(columns) -> Qt.QTableWidget:
    table = Qt.QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels([c.capitalize() for c in columns])
    table.setEditTriggers(Qt.QAbstractItemView.NoEditTriggers)
    table.setSelectionBehavior(Qt.QAbstractItemView.SelectRows)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setStretchLastSection(True)
    return table


class QueuePanel(Qt.QWidget):
    """``setModel("bl01/sys/queue")``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.device = ""
        self.rows: list[dict[str, str]] = []
        self.runner: CommandRunner | None = None
        self.watcher: AttrWatcher | None = None
        self.commands: dict[str, frozenset[str]] = {}  # the queue's CommandStates
        self.queue_state: str | None = None

        layout = Qt.QVBoxLayout(self)
        top = Qt.QHBoxLayout()
        self.state = Qt.QLabel("state: ?")
        self.state.setStyleSheet("font-weight: bold;")
        top.addWidget(self.state)
        self.length = Qt.QLabel("")
        top.addWidget(self.length)
        top.addStretch(1)
        layout.addLayout(top)

        self.running = Qt.QLabel("nothing running")
        self.progress = Qt.QProgressBar()
        self.progress.setRange(0, 100)
        running_row = Qt.QHBoxLayout()
        running_row.addWidget(Qt.QLabel("Running:"))
        running_row.addWidget(self.running, 2)
        running_row.addWidget(self.progress, 1)
        layout.addLayout(running_row)
        self.blocked = Qt.QLabel("")
        self.blocked.setWordWrap(True)
        self.blocked.setStyleSheet("color: #a06000;")
        layout.addWidget(self.blocked)
        self.last_error = Qt.QLabel("")
        self.last_error.setWordWrap(True)
        self.last_error.setStyleSheet("color: #c00000;")
        layout.addWidget(self.last_error)

        # run control
        controls = Qt.QHBoxLayout()
        self.buttons: dict[str, Qt.QPushButton] = {}
        self.tips: dict[str, str] = {}
        for key, text, tip in (
            ("start", "Start", "run the queue"),
            ("stop", "Stop", "stop after the current item"),
            ("stop_cancel", "Cancel stop", "keep running after the current item"),
            ("pause", "Pause", "pause the running macro now"),
            ("pause_deferred", "Pause after item", "pause after the current item"),
            ("resume", "Resume", "resume a paused queue"),
            ("abort", "Abort macro", "abort the running macro (release, restart Sardana if stuck)"),
        ):
            button = Qt.QPushButton(text)
            button.setObjectName(f"queue_{key}")
            button.setToolTip(tip)
            self.tips[key] = tip
            controls.addWidget(button)
            self.buttons[key] = button
        controls.addStretch(1)
        layout.addLayout(controls)

        # the items
        self.table = _table(QUEUE_COLUMNS)
        layout.addWidget(self.table, 3)

        edit_row = Qt.QHBoxLayout()
        self.macro_line = Qt.QLineEdit()
        self.macro_line.setObjectName("queue_macro_line")
        self.macro_line.setPlaceholderText("macro and parameters, e.g. ascan sample_x 0 1 10 0.1")
        self.repeat = Qt.QSpinBox()
        self.repeat.setRange(1, 10000)
        self.repeat.setPrefix("x")
        self.position = Qt.QComboBox()
        self.position.addItems(["back", "front", "after selected"])
        edit_row.addWidget(self.macro_line, 3)
        edit_row.addWidget(self.repeat)
        edit_row.addWidget(self.position)
        for key, text in (
            ("add", "Add"),
            ("remove", "Remove selected"),
            ("up", "Up"),
            ("down", "Down"),
            ("clear", "Clear"),
        ):
            button = Qt.QPushButton(text)
            button.setObjectName(f"queue_{key}")
            edit_row.addWidget(button)
            self.buttons[key] = button
        layout.addLayout(edit_row)
        self.message = MessageLine()
        layout.addWidget(self.message)

        history_head = Qt.QHBoxLayout()
        history_head.addWidget(Qt.QLabel("History (newest first)"))
        history_head.addStretch(1)
        refresh = Qt.QPushButton("Refresh")
        refresh.setObjectName("queue_history_refresh")
        history_head.addWidget(refresh)
        layout.addLayout(history_head)
        self.history = _table(HISTORY_COLUMNS)
        layout.addWidget(self.history, 2)

        b = self.buttons
        b["start"].clicked.connect(lambda: self._call("Start"))
        b["stop"].clicked.connect(lambda: self._call("Stop"))
        b["stop_cancel"].clicked.connect(lambda: self._call("StopCancel"))
        b["pause"].clicked.connect(lambda: self._call("Pause", ""))
        b["pause_deferred"].clicked.connect(lambda: self._call("Pause", '{"deferred": true}'))
        b["resume"].clicked.connect(lambda: self._call("Resume"))
        b["abort"].clicked.connect(lambda: self._call("AbortMacro", '{"timeout": 3}'))
        b["add"].clicked.connect(self.add_item)
        self.macro_line.returnPressed.connect(self.add_item)
        b["remove"].clicked.connect(self.remove_selected)
        b["up"].clicked.connect(lambda: self.move_selected(-1))
        b["down"].clicked.connect(lambda: self.move_selected(+1))
        b["clear"].clicked.connect(self.clear)
        refresh.clicked.connect(self.refresh_history)

    # ----------------------------------------------------------------- model
    def setModel(self, model_name, **kwargs) -> None:
        connect_panel(
            self,
            model_name,
            [
                "QueueState",
                "QueueLength",
                "RunningItem",
                "BlockedBy",
                "LastError",
                "Items",
                "CommandStates",
            ],
        )
        self.refresh_history()

    def getModel(self, **kwargs):
        return self.device

    def _on_value(self, name: str, value) -> None:
        if name == "QueueState":
            self.state.setText(f"state: {value}")
            self._enable(str(value))
        elif name == "CommandStates":
            try:
                self.commands = model.parse_command_states(str(value))
            except ValueError as exc:
                self.message.error(f"CommandStates: {exc}")
                self.commands = {}
            self._enable(self.queue_state)
        elif name == "QueueLength":
            self.length.setText(f"{value} queued")
        elif name == "RunningItem":
            text, percent = model.running_summary(str(value))
            self.running.setText(text)
            self.progress.setValue(percent)
            if not value:
                self.refresh_history()  # an item ended
        elif name == "BlockedBy":
            self.blocked.setText(f"Blocked by: {value}" if value else "")
        elif name == "LastError":
            self.last_error.setText(f"Last error: {value}" if value else "")
        elif name == "Items":
            self._fill(model.queue_rows(str(value)))

    def _on_failed(self, name: str, text: str) -> None:
        if name == "QueueState":
            self.state.setText(f"state: queue not answering ({text})")
            self._enable(None)

    def _enable(self, state: str | None) -> None:
        """Each button enabled where the queue's table allows its command in
        the queue's state (``QueueState``); nothing while the queue does not
        answer or its table is not known yet."""
        self.queue_state = state
        for key, command in BUTTON_COMMANDS.items():
            button = self.buttons[key]
            enabled = bool(self.commands) and model.command_enabled(command, state, self.commands)
            button.setEnabled(enabled)
            tip = self.tips.get(key, "")
            allowed = self.commands.get(command)
            if allowed is not None and not enabled:
                where = f"{command} is allowed in: {', '.join(sorted(allowed)).lower()}"
                tip = f"{tip} ({where})" if tip else where
            button.setToolTip(tip)

    def _fill(self, rows: list[dict[str, str]]) -> None:
        selected = self.selected_uids()
        self.rows = rows
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(QUEUE_COLUMNS):
                self.table.setItem(r, c, Qt.QTableWidgetItem(row[key]))
            if row["uid"] in selected:
                self.table.selectRow(r)
        self.table.resizeColumnsToContents()

    # --------------------------------------------------------------- actions
    def _call(self, command: str, arg=None, done=None) -> None:
        if self.runner is None:
            return
        self.message.info(f"{command}: sent")

        def ok(result, _c=command):
            self.message.info(f"{_c}: done")
            if done is not None:
                done(result)

        self.runner.call(command, arg, ok)

    def selected_uids(self) -> list[str]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [self.rows[r]["uid"] for r in rows if r < len(self.rows)]

    def add_item(self) -> None:
        try:
            spec = model.parse_macro_line(self.macro_line.text())
        except ValueError as exc:
            self.message.error(f"Add: {exc}")
            return
        if self.repeat.value() > 1:
            spec["repeat"] = self.repeat.value()
        where = self.position.currentText()
        if where == "after selected":
            uids = self.selected_uids()
            if not uids:
                self.message.error("Add: select the item to add after, or choose back/front")
                return
            spec["position"] = {"after": uids[-1]}
        else:
            spec["position"] = where
        self._call("Add", json.dumps(spec), lambda _r: self.macro_line.clear())

    def remove_selected(self) -> None:
        uids = self.selected_uids()
        if not uids:
            self.message.error("Remove: select one or more items first")
            return
        self._call("Remove", json.dumps({"uids": uids}))

    def move_selected(self, step: int) -> None:
        uids = self.selected_uids()
        if len(uids) != 1:
            self.message.error("Move: select exactly one item")
            return
        index = next(i for i, r in enumerate(self.rows) if r["uid"] == uids[0])
        target = index + step
        if not 0 <= target < len(self.rows):
            self.message.error("Move: the item is already at that end")
            return
        # the queue's positions are insertion points counted with the item
        # still in place: one down is "before the item after the next one"
        position: int | str = target + 1 if step > 0 else target
        if step > 0 and target == len(self.rows) - 1:
            position = "back"
        self._call("Move", json.dumps({"uid": uids[0], "position": position}))

    def clear(self) -> None:
        self._call("Clear")

    def refresh_history(self) -> None:
        if self.runner is None:
            return
        self.runner.call("History", json.dumps({"limit": HISTORY_LIMIT}), self._fill_history)

    def _fill_history(self, result) -> None:
        rows = model.history_rows(result if isinstance(result, str) else "")
        self.history.setRowCount(len(rows))
        for r, row in enumerate(rows):
            colour = OUTCOME_COLOURS.get(row["outcome"])
            for c, key in enumerate(HISTORY_COLUMNS):
                item = Qt.QTableWidgetItem(row[key])
                if colour and key == "outcome":
                    item.setBackground(Qt.QColor(colour))
                self.history.setItem(r, c, item)
        self.history.resizeColumnsToContents()
