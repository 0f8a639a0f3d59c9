"""The beamline's HDF5 scan recorder: Sardana's NXscanH5_FileRecorder, with
NaN padding of images written as whole arrays.

Sardana's continuous scans write NaN for a channel a record has no value for
(``ScanData.initRecord``): the last points of an aborted scan, every point
after a camera stopped delivering frames, every point of a scan that ended
short of its length (``CTScan._fill_missing_records``). For a 2D (or 1D)
channel Sardana 3.7's ``NXscanH5_FileRecorder._writeRecord`` writes that
scalar as ``_ds[recordno, ...] = numpy.array([nan])``, which h5py broadcasts
element by element: ~5 s of MacroServer CPU per 512 x 512 point, over an
hour for a 1000-point camera scan that lost its camera early. Here a scalar value
for a dataset whose points are arrays is written as one array of the point's
shape and the dataset's dtype holding that value (the same value Sardana's
broadcast writes: ~2 ms per point). Everything else is Sardana's: the file
layout, the other datasets, the records the other recorders get (the record
is not changed: the file gets a copy of it).

The MacroServer finds this module on its ``RecorderPath``
(db_config/sardana/bl01.yaml: ``recorder_path``). The class keeps Sardana's
``formats`` ({"h5": ".h5"}): Sardana's recorder manager gives a recorder of a
directory on the RecorderPath precedence over its own recorders of the same
format (``RecorderManager._addRecorderToMap``), so every ``.h5`` scan file
gets this recorder (no ``ScanRecorder`` needed; a user's ``ScanRecorder``
still chooses), never an AmbiguousRecorderError.
docs/triggers.md ("The camera in continuous scans").
"""

import copy

import numpy
from sardana.macroserver.recorders.h5storage import NXscanH5_FileRecorder

__all__ = ["BeamlineH5_FileRecorder"]


class BeamlineH5_FileRecorder(NXscanH5_FileRecorder):  # noqa: N801 (Sardana's naming)
    """NXscanH5_FileRecorder that writes a scalar (the NaN padding of points a
    scan did not take) into a spectrum or image dataset as one whole array."""

    def _writeRecord(self, record):
        if self.filename is None:
            return super()._writeRecord(record)
        padded = None
        for dd in self.datadesc:
            if not dd.shape or dd.name not in record.data:
                continue
            value = record.data[dd.name]
            whole = self.whole_point(value, dd.shape, dd.dtype)
            if whole is not None:
                if padded is None:
                    padded = dict(record.data)
                padded[dd.name] = whole
        if padded is not None:
            record = copy.copy(record)  # the other recorders keep theirs
            record.data = padded
        return super()._writeRecord(record)

    @staticmethod
    def whole_point(value, shape, dtype):
        """One point of a dataset of point ``shape`` and ``dtype`` filled with
        the scalar ``value`` as Sardana's recorder would write it; None when
        ``value`` is not a scalar (an image, a value reference, None) or
        cannot be converted (Sardana's own write then says why)."""
        if value is None or isinstance(value, str | bytes) or numpy.ndim(value) != 0:
            return None
        try:
            # the conversion Sardana's _writeRecord makes before it broadcasts
            item = numpy.array([value], dtype=dtype)[0]
        except (TypeError, ValueError, OverflowError):
            return None
        return numpy.full(tuple(shape), item, dtype=dtype)
