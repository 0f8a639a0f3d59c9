"""Errors shared by every protocol driver (no ``tango`` import).

Split by what the caller should do about them:

- :class:`LinkError`: the link is down or silent; the driver has closed it,
  reconnect.
- :class:`ProtocolError`: the reply is not a valid reply to the request
  (garbage, cut short, wrong echo); the driver has closed the link too, since
  the byte stream can no longer be trusted.
- :class:`ControllerRejected`: the hardware understood and refused; the link
  is fine and stays open.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base class of every driver error."""


class LinkError(DriverError):
    """Cannot open the port, the connection was lost, or no reply in time."""


class ProtocolError(DriverError):
    """The reply is garbage, cut short, unparsable or does not echo the request."""


class ControllerRejected(DriverError):  # noqa: N818 - name is the public API
    """The hardware answered with an error: ``code`` and ``text``."""

    def __init__(self, code: int, text: str, request: str | None = None):
        self.code = code
        self.text = text
        self.request = request
        where = f" {request}" if request else ""
        super().__init__(f"controller refused{where}: {text} (error {code})")
