"""DataLogger: every change of every beamline device archived to HDF5 (Tango layer).

The logic is :class:`~tango_devices.logger.logger_logic.LoggerLogic` (queue,
writer thread, statistics) over an
:class:`~tango_devices.logger.store.ArchiveWriter`; the subscriptions are
:class:`~tango_devices.logger.tango_sources.LoggerSources`; queries are an
:class:`~tango_devices.logger.reader.ArchiveReader`. This file declares the
properties, the statistics attributes (with change events) and the commands,
each allowed where the logger's table (``logger/states.py``) allows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import tango
from tango import DevState
from tango.server import attribute, command, device_property

from tango_devices.common import lifecycle
from tango_devices.common.device_base import BeamlineDevice, run_server, table_checks, throw
from tango_devices.common.jsonargs import ArgumentError
from tango_devices.logger.logger_logic import LoggerConfig, LoggerLogic, NotStored, Stats
from tango_devices.logger.model import to_jsonable
from tango_devices.logger.reader import (
    QueryError,
    configuration_args,
    history_args,
    list_pattern,
)
from tango_devices.logger.selection import Selection
from tango_devices.logger.states import LOGGER_TABLE
from tango_devices.logger.store import ArchiveWriter, MiB, StoreError, WriterPolicy
from tango_devices.logger.tango_sources import LoggerSources, SourceSettings, decode_event

log = logging.getLogger(__name__)

#: statistics attribute -> (Stats field or callable, dtype, unit, description)
STATISTICS = {
    "EventsPerSecond": ("events_per_second", float, "1/s", "Events received per second (5 s)."),
    "EventsReceived": ("events_received", "int64", "", "Events received since start."),
    "EventsWritten": ("events_written", "int64", "", "Value rows made durable since start."),
    "EventsDropped": ("events_dropped", "int64", "", "Events dropped: the backlog was full."),
    "Backlog": ("backlog", "int64", "", "Events received and not written yet."),
    "WriteLatency": (
        "write_latency",
        float,
        "s",
        "Last flush: time from the reception of its oldest event to durable on disk.",
    ),
    "FlushDuration": ("flush_duration", float, "s", "Time to write and flush the last batch."),
    "LastFlush": ("last_flush", float, "s", "Wall time (epoch) of the last completed flush."),
    "CurrentFile": ("current_file", str, "", "The archive file being written."),
    "CurrentFileSize": ("current_file_size", "int64", "B", "Size of the current file."),
    "ArchiveSize": ("archive_size", "int64", "B", "Size of every archive file together."),
    "FileCount": ("file_count", "int64", "", "Number of archive files."),
    "ErrorCount": (
        "errors",
        "int64",
        "",
        "Write cycles that failed (a full disk included) and events that could not be "
        "decoded, since start.",
    ),
    "RowsLost": (
        "rows_lost",
        "int64",
        "",
        "Value rows that could not be written (a full disk, a failed write) since start; "
        "each interval is journalled as a gap.",
    ),
    "LastError": ("last_error", str, "", "The last write or decode error."),
    "ArchivedAttributes": ("attributes", "int64", "", "Attributes known to the archive."),
}
SOURCE_STATISTICS = ("DevicesConnected", "PolledAttributes", "DevicesUnreachable", "Report")


def _stat_attribute(name: str, field: str, dtype, unit: str, doc: str):
    def read(self):
        return getattr(self._stats, field)

    read.__name__ = name
    return attribute(
        fget=read,
        name=name,
        dtype="int64" if dtype == "int64" else dtype,
        unit=unit,
        description=doc,
    )


class DataLogger(BeamlineDevice):
    """Archives change/archive events, attribute configurations and properties
    of every selected device to HDF5; answers history and configuration queries."""

    Include = device_property(
        dtype=(str,),
        default_value=["bl01"],
        doc="Patterns domain[/family[/member[/attribute]]] of what to archive",
    )
    Exclude = device_property(dtype=(str,), default_value=[], doc="Patterns not to archive")
    Directory = device_property(
        dtype=str, default_value="", doc="Archive directory (empty: <run dir>/archive)"
    )
    FlushPeriod = device_property(dtype=float, default_value=1.0, doc="s between flushes")
    MaxFileSize = device_property(dtype=float, default_value=256.0, doc="MiB: rotate beyond")
    RotateDaily = device_property(dtype=bool, default_value=True, doc="New file at midnight")
    FallbackPollPeriod = device_property(
        dtype=float, default_value=1.0, doc="s: attributes without events are read this often"
    )
    PropertyPollPeriod = device_property(
        dtype=float,
        default_value=30.0,
        doc="s between unprompted reads of the properties in the database (a configuration "
        "event or a writable attribute's change prompts a read)",
    )
    PropertyReadsPerSecond = device_property(
        dtype=float,
        default_value=10.0,
        doc="devices whose properties are read a second, at most: with many devices "
        "PropertyPollPeriod grows to devices / PropertyReadsPerSecond",
    )
    DiscoveryPeriod = device_property(
        dtype=float, default_value=30.0, doc="s between reads of the device list"
    )
    RetryPeriod = device_property(
        dtype=float, default_value=2.0, doc="s between attempts to reach a device that is down"
    )
    MaxBacklog = device_property(
        dtype=int, default_value=2000000, doc="Events waiting to be written, at most"
    )
    MaxValueSize = device_property(
        dtype=int, default_value=65536, doc="Bytes: a larger (JSON-encoded) value is not stored"
    )
    MaxQueryPoints = device_property(
        dtype=int, default_value=100000, doc="Points GetHistory returns at most"
    )
    MinFreeSpace = device_property(
        dtype=float,
        default_value=4.0,
        doc="MiB kept free on the archive's file system: below it the logger stops "
        "writing (ALARM, rows counted as lost) until space returns",
    )

    for _name, (_field, _dtype, _unit, _doc) in STATISTICS.items():
        locals()[_name] = _stat_attribute(_name, _field, _dtype, _unit, _doc)
    del _name, _field, _dtype, _unit, _doc

    # ------------------------------------------------------------ life
    def init_device(self) -> None:
        BeamlineDevice.init_device(self)
        # Queries over many files can take seconds: they must not hold the
        # device's lock, or State reads (the supervisor's hang probe) would wait
        # and the logger would be killed as hung. Everything a request touches
        # is thread-safe (snapshots, the writer's lock).
        tango.Util.instance().set_serial_model(tango.SerialModel.NO_SYNC)
        self.set_state(DevState.INIT)
        self._stats = Stats()
        self._pushed: dict[str, object] = {}
        self.sources = None
        self.logic = None
        for name in [*STATISTICS, *SOURCE_STATISTICS]:
            self.set_change_event(name, True, False)
        _DEVICES[0] = self
        if lifecycle.test_hooks_enabled() and not getattr(self, "_logger_hooks", False):
            self._logger_hooks = True
            self.add_command(command(f=_test_kill_mid_write, doc_in=_test_kill_mid_write.__doc__))
        try:
            selection = Selection(self.Include, self.Exclude)
        except ValueError as exc:
            self.misconfigured(f"Include/Exclude: {exc}")
            return
        directory = self._directory()
        writer = ArchiveWriter(
            directory,
            WriterPolicy(
                max_file_size=int(self.MaxFileSize * MiB),
                rotate_daily=self.RotateDaily,
                schema_delay=max(2.0, self.FlushPeriod),
                max_value_bytes=self.MaxValueSize,
                min_free_bytes=int(max(0.0, self.MinFreeSpace) * MiB),
            ),
        )
        self.logic = LoggerLogic(
            writer,
            decode_event,
            LoggerConfig(flush_period=self.FlushPeriod, max_backlog=self.MaxBacklog),
            thread_context=tango.EnsureOmniThread,
        )
        self.init_state_events(self.logic.machine)
        self.logic.on_stats(self._publish)
        self.logic.status_extra = self._sources_status
        try:
            self.logic.start()
        except StoreError:
            return  # FAULT with the reason in the Status; Init retries
        self.sources = LoggerSources(
            self.logic,
            selection,
            SourceSettings(
                fallback_poll_period=self.FallbackPollPeriod,
                property_poll_period=self.PropertyPollPeriod,
                property_reads_per_second=self.PropertyReadsPerSecond,
                discovery_period=self.DiscoveryPeriod,
                retry_period=self.RetryPeriod,
            ),
            own_device=self.get_name(),
        )
        self.sources.start()

    def _directory(self) -> Path:
        if self.Directory:
            return Path(self.Directory).expanduser()
        base = lifecycle.run_dir()
        return (base / "archive") if base else Path.cwd() / "archive"

    def delete_device(self) -> None:
        lifecycle.mark_clean_exit(tango.Util.instance().get_ds_name())
        if self.sources is not None:
            self.sources.stop()
            self.sources = None
        if self.logic is not None:
            self.logic.stop()
            self.logic = None

    # ------------------------------------------------------ publishing
    def _sources_status(self) -> str:
        if self.sources is None:
            return ""
        up, total, down = self.sources.summary()
        text = f"{up}/{total} devices connected"
        if down:
            text += f"; not reachable: {', '.join(down[:5])}" + (" ..." if len(down) > 5 else "")
        return text

    def _publish(self, stats: Stats) -> None:
        """Writer thread, after every cycle: push the statistics that changed."""
        self._stats = dataclasses.replace(stats)
        values = {name: getattr(self._stats, spec[0]) for name, spec in STATISTICS.items()}
        if self.sources is not None:
            up, _total, down = self.sources.summary()
            values["DevicesConnected"] = up
            values["DevicesUnreachable"] = down
            values["PolledAttributes"] = self.sources.counts()[1]
        changed = {n: v for n, v in values.items() if self._pushed.get(n) != v}
        if not changed:
            return
        self._pushed.update(changed)
        with tango.AutoTangoMonitor(self):
            for name, value in changed.items():
                self.push(name, value)

    # ------------------------------------------------ source attributes
    @attribute(dtype=int, description="Devices the logger is subscribed to.")
    def DevicesConnected(self) -> int:
        return self.sources.summary()[0] if self.sources else 0

    @attribute(
        dtype=(str,), max_dim_x=1024, description="Selected devices that do not answer (retried)."
    )
    def DevicesUnreachable(self):
        return self.sources.summary()[2] if self.sources else []

    @attribute(dtype=int, description="Attributes without events, archived by reading them.")
    def PolledAttributes(self) -> int:
        return self.sources.counts()[1] if self.sources else 0

    @attribute(
        dtype=str,
        description="JSON: statistics, and per device how each attribute "
        "is archived (change, archive or poll).",
    )
    def Report(self) -> str:
        return json.dumps(
            {
                "statistics": to_jsonable(self._stats.as_dict()),
                "directory": str(self.logic.directory) if self.logic else None,
                "devices": self.sources.report() if self.sources else [],
            },
            indent=1,
        )

    # -------------------------------------------------------- commands
    # Every command is allowed where LOGGER_TABLE allows it (is_<command>_allowed).
    locals().update(table_checks(LOGGER_TABLE))

    def _query(self, name: str, fn):
        """Run a command on the logic: every failure a DevFailed of ours."""
        if self.logic is None:
            throw(
                "LOGGER_NOT_READY",
                f"the logger is not running ({self.get_status().strip()}); fix the cause, "
                "then Init",
                name,
            )
        try:
            return fn(self.logic)
        except ArgumentError as exc:
            throw("LOGGER_BAD_INPUT", str(exc), name)
        except QueryError as exc:
            throw("LOGGER_QUERY_ERROR", str(exc), name)
        except OSError as exc:
            throw("LOGGER_READ_ERROR", f"reading the archive failed: {exc}", name)
        except tango.DevFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - never PyDs_PythonError
            log.exception("%s failed", name)
            throw(
                "LOGGER_INTERNAL_ERROR",
                f"{name} failed: {type(exc).__name__}: {str(exc)[:500]} (the server's log "
                "has the traceback)",
                name,
            )

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='JSON {"attribute": "bl01/mot/sample_x/Position", "start": T, "end": T, '
        '"max_points": N}, or just the attribute\'s name; T: epoch s, ISO 8601, "now" or '
        '"-1h"; defaults: the last hour, 1000 points (0: up to MaxQueryPoints)',
        doc_out="JSON {attribute, count, returned, decimated, method, times, values, "
        "qualities, gaps, errors}",
    )
    def GetHistory(self, argin: str) -> str:
        def run(logic):
            name, start, end, points = history_args(argin, self.MaxQueryPoints, time.time())
            result = logic.reader.history(name, start, end, points)
            return json.dumps(result, allow_nan=False, default=_json_default)

        return self._query("GetHistory", run)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='JSON {"device": "bl01/mot/sample_x", "time": T} (T as for GetHistory; '
        "default now), or just a device name",
        doc_out="JSON {device, time, attributes: {name: {value, quality, time, config, "
        "properties}}, properties, logger_gap}",
    )
    def GetConfigurationAt(self, argin: str) -> str:
        def run(logic):
            device, t = configuration_args(argin, time.time())
            result = logic.reader.configuration_at(device, t)
            return json.dumps(result, allow_nan=False, default=_json_default)

        return self._query("GetConfigurationAt", run)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in="Shell pattern (* ? [...], at most 256 characters) on "
        "domain/family/member/attribute (empty: every attribute)",
        doc_out="JSON list of {attribute, kind, unit, first, last, rows}",
    )
    def ListArchived(self, pattern: str) -> str:
        def run(logic):
            items = logic.reader.list_attributes(list_pattern(pattern))
            return json.dumps(items, allow_nan=False, default=_json_default)

        return self._query("ListArchived", run)

    @command(dtype_out=float, doc_out="Wall time (epoch s) of the flush")
    def Flush(self) -> float:
        """Write and flush everything received so far, now; refused when it
        could not be written (a full disk)."""

        def run(logic):
            try:
                return logic.flush_now()
            except TimeoutError as exc:
                throw("LOGGER_TIMEOUT", str(exc), "Flush")
            except NotStored as exc:
                reason = "LOGGER_DISK_FULL" if exc.disk_full else "LOGGER_WRITE_ERROR"
                throw(reason, f"nothing was flushed: {exc}", "Flush")

        return self._query("Flush", run)

    @command
    def Rescan(self) -> None:
        """Read the device list from the database now (new devices are archived)."""
        if self.sources is not None:
            self._query("Rescan", lambda _logic: self.sources.rescan())


_DEVICES: list[DataLogger | None] = [None]  # the server's one DataLogger (test hook)


def _test_kill_mid_write(*_args) -> None:
    """Test hook (BEAMLINE_TEST_HOOKS=1 only): SIGKILL this server half-way
    through its next write, between two attributes, before the flush."""
    device = _DEVICES[0]
    if device is not None and device.logic is not None:
        device.logic.kill_mid_write()


_test_kill_mid_write.__name__ = "TestKillMidWrite"


def _json_default(value):
    converted = to_jsonable(value)
    if isinstance(converted, float) and not math.isfinite(converted):
        return None
    return converted


def main(args=None) -> None:
    run_server((DataLogger,), args=args)


if __name__ == "__main__":
    main()
