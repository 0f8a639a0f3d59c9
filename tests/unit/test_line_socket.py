"""LineClient over a real loopback TCP port (pyserial's socket:// handler),
whose reply lines it reads in chunks instead of pyserial's byte at a time: a
reply split over several packets, a reply and its payload in one packet, a
stale reply from an earlier request, a partial line at the timeout and a
peer that closes. The peer is a plain socket server in a thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tango_devices.drivers.errors import LinkError, ProtocolError
from tango_devices.drivers.line_client import LineClient


class Peer:
    """Answers each request line with what ``answer`` returns: a list of
    byte strings, each sent as its own packet (None: close the connection)."""

    def __init__(self, answer: Callable[[bytes], list[bytes] | None]) -> None:
        self.answer = answer
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                data = b""
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    while b"\r\n" in data:
                        line, data = data.split(b"\r\n", 1)
                        packets = self.answer(line)
                        if packets is None:
                            conn.shutdown(socket.SHUT_RDWR)
                            break
                        for packet in packets:
                            conn.sendall(packet)
                    else:
                        continue
                    break

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def peer() -> Iterator[Callable[..., Peer]]:
    made = []

    def make(answer):
        made.append(Peer(answer))
        return made[-1]

    yield make
    for p in made:
        p.close()


def echo_id(line: bytes) -> list[bytes] | None:
    if line == b"?ID":
        return [b"?ID SIM-1 1.0\r\n"]
    return None


def client(p: Peer, timeout: float = 0.5) -> LineClient:
    c = LineClient(f"socket://127.0.0.1:{p.port}", timeout=timeout)
    assert c.connect() == "SIM-1 1.0"
    return c


def test_a_reply_in_many_packets_and_two_requests_in_a_row(peer):
    def answer(line):
        if line == b"?POS":
            return [b"?P", b"OS 12", b"34\r", b"\n"]
        return echo_id(line)

    c = client(peer(answer))
    assert c.request("?POS") == "1234"
    assert c.request("?POS") == "1234"
    c.close()


def test_a_reply_and_its_payload_in_one_packet(peer):
    def answer(line):
        if line == b"?DATA":
            return [b"?DATA 5\r\nhello"]
        return echo_id(line)

    c = client(peer(answer))
    value, payload = c.query_with_payload("?DATA", int, lambda n: n)
    assert (value, payload) == (5, b"hello")
    assert c.request("?ID") == "SIM-1 1.0"  # nothing of the payload left behind
    c.close()


def test_a_stale_reply_is_discarded(peer):
    def answer(line):
        if line == b"?A":
            return [b"?A 1\r\n", b"?A 1\r\n"]  # a duplicate, as a late reply would be
        if line == b"?B":
            return [b"?B 2\r\n"]
        return echo_id(line)

    c = client(peer(answer))
    assert c.request("?A") == "1"
    # the duplicate ?A reply is read or dropped, never taken for ?B's
    assert c.request("?B") == "2"
    c.close()


def test_a_late_reply_to_the_last_request_is_skipped_not_taken_for_this_ones(peer):
    def answer(line):
        if line == b"?A":
            return [b"?A 1\r\n"]
        if line == b"?B":  # the late second ?A reply comes after the flush for ?B
            return [b"?A 1\r\n", b"?B 2\r\n"]
        if line == b"?C":  # a reply echoing neither: still refused
            return [b"?X 3\r\n"]
        return echo_id(line)

    c = client(peer(answer))
    assert c.request("?A") == "1"
    assert c.request("?B") == "2"
    with pytest.raises(ProtocolError, match="does not echo the request '[?]C'"):
        c.request("?C")
    c.close()


def test_a_partial_line_at_the_timeout_is_an_incomplete_reply(peer):
    def answer(line):
        if line == b"?SLOW":
            return [b"?SLOW 12"]  # never ends
        return echo_id(line)

    c = client(peer(answer), timeout=0.2)
    with pytest.raises(ProtocolError, match="incomplete reply .* within 0.2 s"):
        c.request("?SLOW")
    assert not c.connected


def test_a_peer_that_closes_is_a_link_error(peer):
    c = client(peer(echo_id))
    with pytest.raises(LinkError, match="connection closed by"):
        c.request("?BYE")
    assert not c.connected
