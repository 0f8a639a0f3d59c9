"""Detector: a 2D camera (Tango layer only).

The image is an image attribute; a data-ready event announces each new frame
(at most MaxEventRate per second, the newest frame wins) and the region of
interest statistics (RoiSum, CentroidX, CentroidY) are pushed as change
events at the same bounded rate.
"""

from __future__ import annotations

import time

import numpy as np
import tango
from tango import DevState
from tango.server import attribute, command, device_property

from tango_devices.common.device_base import (
    BeamlineDevice,
    component_attribute,
    component_command,
    run_server,
)
from tango_devices.detector.detector_logic import (
    AcquisitionMode,
    DetectorConfig,
    DetectorLogic,
    TriggerMode,
)

MAX_SIZE = 4096


class Detector(BeamlineDevice):
    """A 2D camera: Snap, Start, Stop; the image, a frame counter, ROI statistics."""

    #: change events pushed by the kernel when they change (frames and ROI: by _publish)
    EVENTED = (
        "ExposureTime",
        "AcquisitionMode",
        "NumberOfFrames",
        "TriggerMode",
        "FirstFrame",
        "MissedTriggers",
        "Roi",
        "Width",
        "Height",
    )

    Port = device_property(
        dtype=str, mandatory=True, doc="pyserial URL of the camera, e.g. socket://cam1.bl01:9104"
    )
    Timeout = device_property(dtype=float, default_value=1.0, doc="Per-request timeout (s)")
    PollPeriod = device_property(dtype=float, default_value=0.1, doc="Poll period when idle (s)")
    ReconnectPeriod = device_property(
        dtype=float, default_value=1.0, doc="Retry period while the camera is unreachable (s)"
    )
    MaxEventRate = device_property(
        dtype=float, default_value=20.0, doc="Most data-ready and ROI events per second"
    )

    def init_device(self) -> None:
        super().init_device()
        self.set_state(DevState.INIT)
        self._last_event = 0.0
        self._last_counter = -1
        self.set_data_ready_event("Image", True)
        for name in ("FrameCounter", "RoiSum", "CentroidX", "CentroidY", "BufferedFrames"):
            self.set_change_event(name, True, False)
        config = DetectorConfig(
            url=self.Port,
            timeout=self.Timeout,
            poll_period=self.PollPeriod,
            reconnect_period=self.ReconnectPeriod,
        )

        def make() -> DetectorLogic:
            logic = DetectorLogic(config, thread_context=tango.EnsureOmniThread)
            logic.add_value_listener(self._publish)
            return logic

        self.start_logic(make, wait=min(1.0, 2 * self.Timeout))

    def _publish(self) -> None:
        """A new frame (or a new ROI): events at a bounded rate, newest frame wins."""
        with tango.AutoTangoMonitor(self):
            logic = self.logic
            now = time.monotonic()
            counter = logic.frame_counter
            final = not logic.acquiring
            if not final and now - self._last_event < 1.0 / max(self.MaxEventRate, 0.1):
                return
            self._last_event = now
            if counter != self._last_counter:
                self._last_counter = counter
                try:
                    self.push_data_ready_event("Image", counter)
                except tango.DevFailed as exc:
                    self.debug_stream(f"data-ready event not sent: {exc.args[0].desc}")
                self.push("FrameCounter", counter)
            buffered = logic.buffer_value("count")
            if buffered is not None:
                self.push("BufferedFrames", buffered)
            stats = logic.stats
            if stats is not None:
                self.push("RoiSum", stats.total)
                self.push("CentroidX", stats.centroid_x)
                self.push("CentroidY", stats.centroid_y)

    # ------------------------------------------------------------ attributes
    @attribute(
        dtype=((np.uint16,),),
        max_dim_x=MAX_SIZE,
        max_dim_y=MAX_SIZE,
        description="The newest frame (uint16). A data-ready event announces each new one.",
    )
    def Image(self):
        return self.value_or_fail(self.need_logic("read_Image").image, "Image")

    FrameCounter = component_attribute(
        "FrameCounter",
        "frame_counter",
        dtype=int,
        description="Counter of the newest frame (as counted by the camera).",
    )

    ExposureTime = component_attribute(
        "ExposureTime",
        "exposure",
        "set_exposure",
        dtype=float,
        persist=True,
        unit="s",
        format="%8.4f",
        min_value="0.0001",
        max_value="60",
        description="Exposure time of each frame. Kept in the database.",
    )

    AcquisitionMode = component_attribute(
        "AcquisitionMode",
        "mode",
        "set_mode",
        dtype=AcquisitionMode,
        persist=True,
        description="What Start does: SINGLE frame, MULTIPLE (NumberOfFrames) or CONTINUOUS "
        "until Stop. Kept in the database.",
    )

    NumberOfFrames = component_attribute(
        "NumberOfFrames",
        "frames",
        "set_frames",
        dtype=int,
        persist=True,
        min_value="1",
        description="Frames per Start in MULTIPLE mode. Kept in the database.",
    )

    TriggerMode = component_attribute(
        "TriggerMode",
        "trigger",
        "set_trigger",
        dtype=TriggerMode,
        persist=True,
        description="INTERNAL: frames timed by the camera; EXTERNAL: Start arms the camera and "
        "each pulse on its trigger input (the timing unit) takes one frame, buffered and "
        "numbered (ReadFrame). Snap is always INTERNAL. Kept in the database.",
    )

    BufferedFrames = component_attribute(
        "BufferedFrames",
        lambda logic: logic.buffer_value("count"),
        dtype=int,
        description="External trigger: frames buffered, numbered FirstFrame .. "
        "FirstFrame + BufferedFrames - 1.",
    )

    FirstFrame = component_attribute(
        "FirstFrame",
        lambda logic: logic.buffer_value("first"),
        dtype=int,
        description="External trigger: the number of the oldest buffered frame (the next "
        "frame's number when none is).",
    )

    MissedTriggers = component_attribute(
        "MissedTriggers",
        lambda logic: logic.buffer_value("missed"),
        dtype=int,
        description="External trigger: pulses that came while the camera was still busy "
        "with the previous frame (no frame taken).",
    )

    Roi = component_attribute(
        "Roi",
        lambda logic: logic.roi and list(logic.roi),
        "set_roi",
        persist=True,
        dtype=(int,),
        max_dim_x=4,
        description="Region of interest [x, y, width, height] in pixels. Kept in the database.",
    )

    RoiSum = component_attribute(
        "RoiSum",
        lambda logic: logic.stats and logic.stats.total,
        dtype=float,
        format="%.6g",
        unit="counts",
        description="Sum of the ROI pixels.",
    )

    CentroidX = component_attribute(
        "CentroidX",
        lambda logic: logic.stats and logic.stats.centroid_x,
        dtype=float,
        format="%8.2f",
        unit="px",
        description="Intensity centroid x in the ROI.",
    )

    CentroidY = component_attribute(
        "CentroidY",
        lambda logic: logic.stats and logic.stats.centroid_y,
        dtype=float,
        format="%8.2f",
        unit="px",
        description="Intensity centroid y in the ROI.",
    )

    Width = component_attribute(
        "Width",
        lambda logic: logic.size and logic.size[0],
        dtype=int,
        unit="px",
        description="Image width.",
    )

    Height = component_attribute(
        "Height",
        lambda logic: logic.size and logic.size[1],
        dtype=int,
        unit="px",
        description="Image height.",
    )

    # -------------------------------------------------------------- commands
    Snap = component_command(
        "Snap", "snap", "Acquire one frame with the current exposure, whatever the mode."
    )

    Start = component_command("Start", "start", "Start acquiring in the current AcquisitionMode.")

    Stop = component_command("Stop", "stop", "Stop acquiring.")

    def is_ReadFrame_allowed(self) -> bool:
        return self.check("ReadFrame")

    @command(
        dtype_in=np.int64,
        doc_in="the frame's number (FirstFrame .. FirstFrame + BufferedFrames - 1)",
        dtype_out=(np.uint16,),
        doc_out="its pixels, row by row: Height rows of Width",
    )
    def ReadFrame(self, number: int) -> np.ndarray:
        """A frame of an external-trigger acquisition, by its number."""
        pixels = self.run("ReadFrame", self.need_logic("ReadFrame").read_frame, int(number))
        return pixels.ravel()


def main(args=None) -> None:
    run_server((Detector,), args=args)


if __name__ == "__main__":
    main()
