"""The camera (``bl01/det/cam1``): the newest image with its ROI drawn on
it, the ROI statistics, and Snap/Start/Stop.

The detector announces new frames with data-ready events at a bounded rate
(and pushes ``FrameCounter``); the panel reads the image once per
announcement, in a worker thread, and skips frames while a read is still
under way: the newest frame wins and the display never falls behind.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from taurus.external.qt import Qt

from taurus_gui import model
from taurus_gui.discovery import trl
from taurus_gui.widgets.common import MessageLine, StateLabel, connect_panel


class _ImageSignals(Qt.QObject):
    image = Qt.pyqtSignal(object, int)
    error = Qt.pyqtSignal(str)


class _ReadImage(Qt.QRunnable):
    def __init__(self, device: str, counter: int):
        super().__init__()
        self.device, self.counter = device, counter
        self.signals = _ImageSignals()

    def run(self) -> None:
        import tango

        try:
            proxy = tango.DeviceProxy(trl(self.device))
            proxy.set_timeout_millis(3000)
            image = proxy.read_attribute("Image").value
            self.signals.image.emit(np.asarray(image), self.counter)
        except tango.DevFailed as exc:
            self.signals.error.emit(f"Image: {exc.args[0].desc.strip()}")


class CameraPanel(Qt.QWidget):
    """``setModel("bl01/det/cam1")``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.device = ""
        self.frames_shown = 0
        self.shown_counter = -1
        self._reading = False
        self._wanted = -1
        self._pool = Qt.QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        layout = Qt.QVBoxLayout(self)
        top = Qt.QHBoxLayout()
        self.state = StateLabel()
        top.addWidget(self.state)
        self.stats: dict[str, Qt.QLabel] = {}
        for name in ("FrameCounter", "RoiSum", "CentroidX", "CentroidY"):
            label = Qt.QLabel("...")
            self.stats[name] = label
            top.addWidget(Qt.QLabel(f"{name}:"))
            top.addWidget(label)
        top.addStretch(1)
        layout.addLayout(top)
        self.view = pg.ImageView()
        self.view.ui.roiBtn.hide()
        self.view.ui.menuBtn.hide()
        self.roi_box = pg.RectROI([0, 0], [1, 1], pen=pg.mkPen("r", width=2), movable=False)
        self.view.getView().addItem(self.roi_box)
        layout.addWidget(self.view, 1)
        buttons = Qt.QHBoxLayout()
        self.buttons: dict[str, Qt.QPushButton] = {}
        for command in ("Snap", "Start", "Stop"):
            button = Qt.QPushButton(command)
            button.setObjectName(f"camera_{command}")
            button.clicked.connect(lambda _=False, c=command: self._command(c))
            buttons.addWidget(button)
            self.buttons[command] = button
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.message = MessageLine()
        layout.addWidget(self.message)

    def setModel(self, model_name, **kwargs) -> None:
        connect_panel(
            self, model_name, ["State", "FrameCounter", "RoiSum", "CentroidX", "CentroidY", "Roi"]
        )

    def getModel(self, **kwargs):
        return self.device

    def _on_value(self, name: str, value) -> None:
        if name == "State":
            self.state.set_state(model.state_name(value))
        elif name == "Roi":
            x, y, w, h = (int(v) for v in list(value)[:4])
            self.roi_box.setPos([x, y], finish=False)
            self.roi_box.setSize([max(w, 1), max(h, 1)], finish=False)
        elif name in self.stats:
            fmt = "{:d}" if name == "FrameCounter" else "{:.6g}"
            try:
                self.stats[name].setText(fmt.format(value))
            except (TypeError, ValueError):
                self.stats[name].setText(str(value))
            if name == "FrameCounter":
                self.request_image(int(value))

    def _on_failed(self, name: str, text: str) -> None:
        if name == "State":
            self.state.set_state("UNKNOWN", text)
            self.message.error(f"{self.device} does not answer: {text}")

    def request_image(self, counter: int) -> None:
        """Read the image for ``counter`` unless a read is under way (then the
        newest counter is read when it ends)."""
        if counter == self.shown_counter:
            return
        if counter == 0:  # the detector has taken no frame since it started
            self.message.info("No frame yet: press Snap for one, Start for a live view.")
            return
        self._wanted = counter
        if self._reading or counter < 0:
            return
        self._reading = True
        job = _ReadImage(self.device, counter)
        job.signals.image.connect(self._show)
        job.signals.error.connect(self._read_failed)
        self._pool.start(job)

    def _show(self, image, counter: int) -> None:
        self._reading = False
        if image.ndim == 2 and image.size:
            # pyqtgraph's axis order is (x, y): transpose the (rows, columns) array
            self.view.setImage(image.T, autoRange=self.frames_shown == 0, autoLevels=True)
            self.frames_shown += 1
            self.shown_counter = counter
        if self._wanted != counter:
            self.request_image(self._wanted)

    def _read_failed(self, text: str) -> None:
        self._reading = False
        self.message.error(text)

    def _command(self, command: str) -> None:
        self.message.info(f"{command}: sent")
        self.runner.call(command)
