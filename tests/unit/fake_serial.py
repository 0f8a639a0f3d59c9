"""An in-memory, pyserial-like port for the line-based drivers' unit tests
(``LineClient`` and the motion, PLC, scaler and camera clients built on it)."""

from __future__ import annotations

import pytest

from tango_devices.drivers import line_client


class FakePort:
    """A pyserial-like port answering from a script: ``replies`` maps a request
    line to the raw bytes put in the input buffer (or an exception to raise).
    ``read`` returns what is buffered at once (nothing: a timeout); once the
    buffer is empty it raises ``read_error`` if one is set."""

    def __init__(self, replies: dict[str, bytes | Exception]):
        self.replies = replies
        self.buffer = b""
        self.written: list[str] = []
        self.is_open = False
        self.resets = 0
        self.read_error: Exception | None = None

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def reset_input_buffer(self) -> None:
        self.resets += 1
        self.buffer = b""

    def write(self, data: bytes) -> int:
        assert data.endswith(b"\r\n")
        line = data[:-2].decode()
        self.written.append(line)
        reply = self.replies.get(line, b"")
        if isinstance(reply, Exception):
            raise reply
        self.buffer += reply
        return len(data)

    def read_until(self, terminator: bytes = b"\n", size: int | None = None) -> bytes:
        index = self.buffer.find(terminator)
        end = len(self.buffer) if index < 0 else index + len(terminator)
        if size is not None:
            end = min(end, size)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def read(self, size: int = 1) -> bytes:
        if self.read_error is not None and not self.buffer:
            raise self.read_error
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def install(
    monkeypatch: pytest.MonkeyPatch,
    fake: FakePort,
    url: str,
    expect_timeout: float | None = None,
) -> FakePort:
    """Make the drivers open ``fake`` for ``url``; the drivers must ask for that
    URL, unopened (and with ``expect_timeout``, when given)."""

    def serial_for_url(url_: str, timeout: float, do_not_open: bool) -> FakePort:
        assert (url_, do_not_open) == (url, True)
        if expect_timeout is not None:
            assert timeout == expect_timeout
        return fake

    monkeypatch.setattr(line_client.serial, "serial_for_url", serial_for_url)
    return fake
