"""TaurusGui configuration of the demo beamline BL01.

Open it with ``beamline gui`` (which sets TANGO_HOST to the running
beamline and keeps the GUI's settings in the run directory), or with
Taurus' own launcher: ``taurus gui taurus_gui/bl01``.

Panels (tabs), created in this order:

- Overview: every device's state along the beam, interlock, supervisor, queue
- Queue: the experiment queue, with its controls and history
- Supervisor: per server state, restarts, last failure, start/stop
- Camera: the detector's image with its ROI and statistics
- Counts, Pressure: trends (taurus_pyqtgraph)
- one form per device (named after the device), state-aware
- Sardana's macro executor, sequencer and door output (MACROSERVER_NAME)

The overview's layout along the beam is ``SECTIONS`` below; devices of the
database that no section names appear after them, grouped by class ("Motor
(160)"); a group of more than ``GRID_OVER`` devices is a grid of tiles, and
its devices' forms open on demand (a click on a tile) instead of as panels.
"""

from taurus.qt.qtgui.taurusgui.utils import PanelDescription

from taurus_gui.discovery import SARDANA_CLASSES, discover, trl
from taurus_gui.model import GRID_OVER, Section, layout

GUI_NAME = "BL01"
ORGANIZATION = "beamline-suite"
SINGLE_INSTANCE = False
MANUAL_URI = "https://taurus-scada.org"

SHUTTER = "bl01/shutter/fe"
GAUGE = "bl01/vac/gauge1"
SCALER = "bl01/ct/scaler"
CAMERA = "bl01/det/cam1"
SUPERVISOR = "bl01/sys/supervisor"
QUEUE = "bl01/sys/queue"

SECTIONS = [
    Section("Slits", ("bl01/mot/slit_h", "bl01/mot/slit_v")),
    Section("Mirror", ("bl01/mot/mirror_pitch",)),
    Section("Vacuum", (GAUGE, "bl01/vac/valve1"), "bad vacuum trips the shutter interlock"),
    Section("Shutter", (SHUTTER,)),
    Section("Sample", ("bl01/mot/sample_x", "bl01/mot/sample_y", SCALER)),
    Section("Detector", ("bl01/mot/det_z", CAMERA)),
    Section(
        "Control",
        (
            SUPERVISOR,
            "bl01/sys/supervisor-standby",
            "bl01/sys/logger",
            QUEUE,
            "bl01/sardana/pool",
            "bl01/sardana/macroserver",
            "bl01/sardana/door",
        ),
    ),
]

_found = discover("bl01")
_layout = layout(SECTIONS, _found.devices)  # the rest grouped by class

# Sardana's macro panels (macro executor, sequencer, door output) on the Door
if _found.macroserver:
    # Sardana's Taurus classes for the MacroServer and Door (macro lists, signals)
    from sardana.taurus.qt.qtcore.tango.sardana import registerExtensions

    registerExtensions()
    MACROSERVER_NAME = trl(_found.macroserver)
    DOOR_NAME = trl(_found.door) if _found.door else ""
    MACRO_PANELS = True


def _docked(*args, **kwargs) -> PanelDescription:
    """A panel docked as a tab of the main window (Taurus makes them floating
    windows by default: one window per device). A tab not shown makes its
    content when first shown."""
    return PanelDescription(*args, floating=False, **kwargs)


# TaurusGui creates panels sorted by variable name: the prefixes order the tabs
p00_overview = _docked(
    "Overview",
    classname="taurus_gui.widgets.overview:BeamlineOverview",
    model="overview",
    widget_properties={
        "sections": _layout.sections,
        "missing": _layout.missing,
        "error": _found.error,
        "shutter": SHUTTER if SHUTTER in _found.devices else "",
        "gauge": GAUGE if GAUGE in _found.devices else "",
        "supervisor": SUPERVISOR if SUPERVISOR in _found.devices else "",
        "feeds": sorted(d for d, c in _found.devices.items() if c == "Supervisor"),
        "queue": QUEUE if QUEUE in _found.devices else "",
        # the queue and supervisor have their own panels; Sardana's devices
        # are driven from its macro executor
        "panels": {
            QUEUE: "Queue",
            SUPERVISOR: "Supervisor",
            CAMERA: "Camera",
            **{d: "Macros" for d, c in _found.devices.items() if c in SARDANA_CLASSES},
        },
    },
)
p10_queue = _docked("Queue", classname="taurus_gui.widgets.queue_panel:QueuePanel", model=QUEUE)
p20_supervisor = _docked(
    "Supervisor", classname="taurus_gui.widgets.supervisor_panel:SupervisorPanel", model=SUPERVISOR
)
p30_camera = _docked(
    "Camera", classname="taurus_gui.widgets.camera_panel:CameraPanel", model=CAMERA
)
p40_counts = _docked(
    "Counts",
    classname="taurus_pyqtgraph:TaurusTrend",
    model=[trl(f"{SCALER}/i0"), trl(f"{SCALER}/diode"), trl(f"{CAMERA}/RoiSum")],
)
p41_pressure = _docked(
    "Pressure", classname="taurus_pyqtgraph:TaurusTrend", model=[trl(f"{GAUGE}/Pressure")]
)

# one state-aware form per device (Sardana's own devices have their panels;
# the devices of large groups get theirs on demand, from the overview)
for _i, _device in enumerate(
    d
    for s in _layout.sections
    if len(s.devices) <= GRID_OVER
    for d in s.devices
    if _found.devices[d] not in SARDANA_CLASSES
):
    globals()[f"p5{_i:02d}_device"] = _docked(
        _device, classname="taurus_gui.widgets.device_panel:DevicePanel", model=_device
    )
