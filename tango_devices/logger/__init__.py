"""The data logger: every change of every beamline device archived to HDF5.

Pure parts (no tango import): :mod:`.model` (what is archived, encodings,
times), :mod:`.selection` (include/exclude patterns), :mod:`.seal`
(crash-left files made readable), :mod:`.store` (the HDF5 writer),
:mod:`.reader` (queries over the files), :mod:`.decimate`,
:mod:`.configuration` (a device's configuration at a time, diffs),
:mod:`.logger_logic` (queues, the writer thread, statistics) and
:mod:`.states`. Tango side: :mod:`.tango_sources` (subscriptions, polling,
the database) and :mod:`.device` (the thin DataLogger device).
"""
