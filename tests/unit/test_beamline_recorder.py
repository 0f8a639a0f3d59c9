"""The beamline's HDF5 scan recorder (sardana_macros/recorders/beamline_h5.py),
loaded the way the MacroServer loads it, on real HDF5 files: a continuous
scan that took a few of its points, padded by Sardana's own ScanData as
CTScan._fill_missing_records pads it, writes its NaN padding into image and
spectrum datasets as whole arrays (Sardana's recorder broadcasts one NaN element by
element: ~5 s per 512 x 512 point), and the other recorders get the records
as Sardana made them. docs/triggers.md ("The camera in continuous scans")."""

import math
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
from sardana.macroserver.scan.recorder import DataRecorder

PROJECT = Path(__file__).resolve().parents[2]
RECORDERS = PROJECT / "sardana_macros" / "recorders"
CONFIG = PROJECT / "db_config"
NAME = "BeamlineH5_FileRecorder"
IMAGE = (6, 4)  # a small camera: the padding's shape is the dataset's, whatever it is
SPECTRUM = (5,)
TAKEN, POINTS = 3, 8  # a scan of 8 points that took 3


class _MacroServer:
    """What Sardana's RecorderManager needs of its MacroServer: a name."""

    name = "test_ms"


def _manager(recorder_path):
    import taurus
    from sardana.macroserver.msrecordermanager import RecorderManager

    taurus.setLogLevel(taurus.Warning)
    ms = _MacroServer()
    manager = RecorderManager(ms, recorder_path=[str(p) for p in recorder_path])
    manager._test_ms = ms  # the manager holds its MacroServer by a weak reference
    return manager


def _file_recorder(manager, path):
    """The recorder Sardana's scans make for ``path`` when ScanRecorder is unset."""
    from sardana.macroserver.scan.recorder.storage import FileRecorder

    class Macro:
        def getMacroServer(self):
            return self

        recorder_manager = manager

    return FileRecorder(str(path), Macro())


@pytest.fixture(scope="module")
def manager():
    """A RecorderManager with the MacroServer's RecorderPath of db_config."""
    return _manager([RECORDERS])


@pytest.fixture(scope="module")
def recorder_class(manager):
    return manager.getRecorderClass(NAME)


# ------------------------------------------------------------ found as the MacroServer finds it
def test_the_macroserver_finds_the_recorder_and_takes_it_for_h5_files_without_ambiguity(
    manager, recorder_class, tmp_path
):
    from sardana.macroserver.msexception import UnknownRecorder
    from sardana.macroserver.recorders.h5storage import NXscanH5_FileRecorder
    from sardana.macroserver.scan.recorder import BaseFileRecorder

    assert issubclass(recorder_class, NXscanH5_FileRecorder)
    assert recorder_class.formats == NXscanH5_FileRecorder.formats == {"h5": ".h5"}
    # ScanRecorder unset: gscan asks Sardana's FileRecorder() for the file's
    # extension (one class, or AmbiguousRecorderError); the RecorderPath's
    # recorder takes precedence over Sardana's own for .h5, nothing else changes
    assert type(_file_recorder(manager, tmp_path / "scan.h5")) is recorder_class
    assert type(_file_recorder(manager, tmp_path / "scan.dat")).__name__ == "SPEC_FileRecorder"
    h5 = manager.getRecorderClasses(filter=BaseFileRecorder, extension=".h5")
    assert list(h5.values()) == [recorder_class]
    # without the beamline's RecorderPath: Sardana's own, as before
    alone = _manager([])
    assert type(_file_recorder(alone, tmp_path / "scan.h5")).__name__ == "NXscanH5_FileRecorder"
    with pytest.raises(UnknownRecorder, match=NAME):
        alone.getRecorderClass(NAME)


def test_db_config_selects_the_recorder_for_every_scan_file(tmp_path):
    from beamline import config as cfg

    c = cfg.load(CONFIG, run_dir=tmp_path)
    ms = c.tango["servers"]["Sardana"]["bl01"]["MacroServer"]["bl01/sardana/macroserver"]
    assert ms["properties"]["RecorderPath"] == [str(RECORDERS)]
    (env,) = c.sardana_env
    # no ScanRecorder: the recorder path alone makes ours the .h5 recorder
    # (test_the_macroserver_finds_the_recorder... checks it through Sardana's own
    # FileRecorder), and a ScanRecorder applied before Sardana restarted with
    # the path would leave scans with no file
    assert "ScanRecorder" not in env.variables
    assert all(f.endswith(".h5") for f in env.variables["ScanFile"])


# ------------------------------------------------------------ a short scan's padding
class _Capture(DataRecorder):
    """A second recorder (as the JSON and output recorders are): the records
    it is given, as it is given them."""

    def __init__(self):
        super().__init__()
        self.records = []

    def _writeRecord(self, record):
        self.records.append((record, dict(record.data)))


def _writes(monkeypatch):
    """Every value written into a dataset of the measurement: (dataset
    name, the value's shape, its dtype)."""
    original = h5py.Dataset.__setitem__
    log = []

    def spy(self, key, value):
        if "/measurement/" in self.name:
            log.append((self.name.rsplit("/", 1)[-1], np.shape(value), np.asarray(value).dtype))
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", spy)
    return log


def _short_scan(recorder_class, path, monkeypatch):
    """A continuous scan of POINTS points that took TAKEN, through
    Sardana's ScanData as the scan drives it: the points taken arrive as
    value buffers (addData), the scan pads the rest (initRecords, as
    CTScan._fill_missing_records does) and ends the record list."""
    from sardana.macroserver.scan import ColumnDesc
    from sardana.macroserver.scan.recorder import DataHandler
    from sardana.macroserver.scan.scandata import ScanData, ScanDataEnvironment

    rng = np.random.default_rng(7)
    images = rng.random((TAKEN, *IMAGE))
    spectra = rng.random((TAKEN, *SPECTRUM)).astype("float32")
    i0 = [11.0, 12.0, 13.0]
    now = datetime.now()
    env = ScanDataEnvironment(
        {
            "serialno": 7,
            "title": "ascanct sample_x 0 1 7 0.01",
            "user": "test",
            "starttime": now,
            "scanstarttime": now,
            "labels": ["point_nb", "i0", "spectrum", "cam1_image"],
            "datadesc": [
                ColumnDesc(name="point_nb", label="#Pt No", dtype="int64"),
                ColumnDesc(name="i0", label="i0", dtype="float64", shape=()),
                ColumnDesc(name="spectrum", label="spectrum", dtype="float32", shape=SPECTRUM),
                ColumnDesc(name="cam1_image", label="cam1_image", dtype="float64", shape=IMAGE),
            ],
        }
    )
    handler = DataHandler()
    recorder = recorder_class(filename=str(path))
    capture = _Capture()
    handler.addRecorder(recorder)
    handler.addRecorder(capture)
    data = ScanData(environment=env, data_handler=handler)
    log = _writes(monkeypatch)
    data.start()
    index = list(range(TAKEN))
    data.addData({"label": "point_nb", "index": index, "value": index})
    data.addData({"label": "i0", "index": index, "value": i0})
    data.addData({"label": "spectrum", "index": index, "value": list(spectra)})
    data.addData({"label": "cam1_image", "index": index, "value": list(images)})
    assert len(capture.records) == TAKEN  # the points taken, written as they came
    data.initRecords(POINTS - len(data.records))  # the padding (CTScan._fill_missing_records)
    data.endRecords()
    env["endtime"] = datetime.now()
    data.end()
    monkeypatch.undo()
    return {"log": log, "capture": capture, "images": images, "spectra": spectra, "i0": i0}


def test_a_short_scan_pads_images_and_spectra_with_whole_nan_arrays(
    recorder_class, tmp_path, monkeypatch
):
    path = tmp_path / "scan.h5"
    scan = _short_scan(recorder_class, path, monkeypatch)

    # every point of an image or spectrum dataset was written as one whole
    # point of the dataset's shape and dtype: the padding too, never a scalar
    # for h5py to broadcast
    written = {}
    for name, shape, dtype in scan["log"]:
        written.setdefault(name, []).append((shape, dtype.name))
    assert written["cam1_image"] == [(IMAGE, "float64")] * POINTS
    assert written["spectrum"] == [(SPECTRUM, "float32")] * POINTS
    # scalar datasets as Sardana writes them
    assert written["i0"] == [((1,), "float64")] * POINTS

    # the file holds the points taken and NaN for the rest
    with h5py.File(path, "r") as f:
        entry = f["entry7"]
        assert entry["end_time"][()]  # the entry was ended
        m = entry["measurement"]
        image, spectrum, i0 = m["cam1_image"], m["spectrum"], m["i0"]
        assert (image.shape, image.dtype) == ((POINTS, *IMAGE), np.float64)
        assert (spectrum.shape, spectrum.dtype) == ((POINTS, *SPECTRUM), np.float32)
        assert (i0.shape, i0.dtype) == ((POINTS,), np.float64)
        np.testing.assert_array_equal(image[:TAKEN], scan["images"])
        np.testing.assert_array_equal(spectrum[:TAKEN], scan["spectra"])
        assert list(i0[:TAKEN]) == scan["i0"]
        assert np.isnan(image[TAKEN:]).all() and np.isnan(spectrum[TAKEN:]).all()
        assert np.isnan(i0[TAKEN:]).all()
        assert list(m["Pt_No"][:TAKEN]) == list(range(TAKEN))

    # the other recorders got the records as Sardana made them: a NaN per
    # channel of each padded point, not arrays; the records were not changed
    capture = scan["capture"]
    assert [r.recordno for r, _ in capture.records] == list(range(POINTS))
    for record, seen in capture.records[TAKEN:]:
        for label in ("i0", "spectrum", "cam1_image"):
            value = seen[label]
            assert isinstance(value, float) and math.isnan(value), (label, value)
            assert record.data[label] is value


def test_sardanas_recorder_broadcasts_the_padding_which_is_why_ours_exists(tmp_path, monkeypatch):
    """Sardana 3.7's NXscanH5_FileRecorder hands h5py a one-element array for
    each padded image (the ~5 s per 512 x 512 point): when Sardana writes
    whole arrays itself this fails, and the beamline's recorder can go."""
    from sardana.macroserver.recorders.h5storage import NXscanH5_FileRecorder

    scan = _short_scan(NXscanH5_FileRecorder, tmp_path / "scan.h5", monkeypatch)
    images = [shape for name, shape, _ in scan["log"] if name == "cam1_image"]
    assert images == [IMAGE] * TAKEN + [(1,)] * (POINTS - TAKEN)


@pytest.mark.parametrize(
    "value, shape, dtype, expected",
    [
        (float("nan"), (2, 3), "float64", np.full((2, 3), np.nan)),
        (np.float64("nan"), (4,), "float32", np.full((4,), np.nan, dtype="float32")),
        (7, (2, 2), "int32", np.full((2, 2), 7, dtype="int32")),
        (1.5, (3,), "float64", np.full((3,), 1.5)),
    ],
)
def test_whole_point_is_the_value_sardana_would_broadcast(
    recorder_class, value, shape, dtype, expected
):
    point = recorder_class.whole_point(value, shape, dtype)
    assert point.shape == shape and point.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(point, expected)


@pytest.mark.parametrize(
    "value, dtype",
    [
        (None, "float64"),  # Sardana writes zeros itself
        (np.zeros((2, 3)), "float64"),  # an image: Sardana's write
        ("h5file:///data/cam.h5::/data", "float64"),  # a value reference
        (float("nan"), "int32"),  # no NaN in integers: Sardana's own error
    ],
)
def test_whole_point_leaves_everything_else_to_sardana(recorder_class, value, dtype):
    assert recorder_class.whole_point(value, (2, 3), dtype) is None
