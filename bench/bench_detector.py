"""Detector frames per second and MB/s delivered to one Tango client, against
the raw limit of the loopback path for frames of the same size, measured in
the same run.

Our path: the camera (simulated, 512x512 uint16) acquires continuously with a
0.1 ms exposure. Two clients, one after the other: one that reads the Image as
fast as it can (throughput), and one that reads it on each data-ready event
(what a display does; events are capped at MaxEventRate by design). Reference:
one thread sends 512 KiB blocks as fast as it can over a loopback TCP socket to
another (no Tango, no camera): the ceiling of the wire for this frame size.
"""

from __future__ import annotations

import socket
import threading
import time

from bench.common import beamline

SECONDS = 5.0


def loopback_frames_per_s(frame_bytes: int, seconds: float = 3.0) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()
    block = b"\0" * frame_bytes

    def send():
        conn, _ = server.accept()
        with conn:
            while not stop.is_set():
                try:
                    conn.sendall(block)
                except OSError:
                    return

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = 0
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as client:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n = client.recv_into(buf)
            if not n:
                break
            received += n
        elapsed = time.perf_counter() - t0
    stop.set()
    server.close()
    return received / frame_bytes / elapsed


def poll_client(cam, seconds: float) -> tuple[int, int, float]:
    """Read Image and FrameCounter in a loop; distinct frames and bytes received."""
    seen, nbytes = set(), 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        image = cam.Image
        counter = cam.FrameCounter
        if counter not in seen:
            seen.add(counter)
            nbytes += image.nbytes
    return len(seen), nbytes, time.perf_counter() - t0


def event_client(cam, seconds: float) -> tuple[int, int, float]:
    """Read Image on each data-ready event."""
    import tango

    ready = threading.Event()
    eid = cam.subscribe_event(
        "Image", tango.EventType.DATA_READY_EVENT, lambda ev: ev.err or ready.set()
    )
    seen, nbytes = set(), 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if not ready.wait(1.0):
            break
        ready.clear()
        image = cam.Image
        counter = cam.FrameCounter
        if counter not in seen:
            seen.add(counter)
            nbytes += image.nbytes
    elapsed = time.perf_counter() - t0
    cam.unsubscribe_event(eid)
    return len(seen), nbytes, elapsed


def run() -> dict:
    with beamline() as bench:
        cam = bench.proxy("bl01/det/cam1")
        cam.ExposureTime = 0.0001
        cam.AcquisitionMode = 2  # CONTINUOUS
        cam.Start()
        deadline = time.monotonic() + 10
        while cam.FrameCounter == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # a benchmark, not a test: wait for the first frame
        first = cam.FrameCounter
        t0 = time.perf_counter()
        polled = poll_client(cam, SECONDS)
        evented = event_client(cam, SECONDS)
        acquired_rate = (cam.FrameCounter - first) / (time.perf_counter() - t0)
        cam.Stop()
        frame_bytes = cam.Image.nbytes
    raw = loopback_frames_per_s(frame_bytes)
    mib = 2**20
    print(f"Detector frames delivered to one client (512x512 uint16, {frame_bytes / mib:.2f} MiB)")
    for label, (frames, nbytes, elapsed) in (
        ("Tango client reading as fast as it can", polled),
        ("Tango client on data-ready events     ", evented),
    ):
        print(f"  {label}: {frames / elapsed:7.1f} frames/s {nbytes / elapsed / mib:7.1f} MiB/s")
    raw_mib = raw * frame_bytes / mib
    print(f"  raw loopback TCP, same frame size      : {raw:7.1f} frames/s {raw_mib:7.1f} MiB/s")
    print(f"  the simulated camera itself            : {acquired_rate:7.1f} frames/s")
    ours = polled[0] / polled[2]
    print(f"  ratio (fastest client / raw loopback): {ours / raw:.3f}")
    return {"frames_per_s": ours, "raw_frames_per_s": raw, "camera_frames_per_s": acquired_rate}


if __name__ == "__main__":
    run()
