"""Pre-forked device servers: start cost and memory shared across 200 servers.

Every device server is its own OS process (a crash or a hang kills one device
only), and a Python device server spends ~0.4 CPU-second importing tango,
numpy and its own code, then keeps ~25 MiB of private memory for what it
imported. The fork server pays that once: it imports every device module of
the registry, freezes what it holds (``gc.freeze``: the collector never writes
to those pages, so they stay shared), and forks one child per server.

The server executables stay the entry points the Starter starts
(``Motor sample_x``): a small stub (:func:`launch`) hands its command line,
environment, working directory and standard streams to the fork server over a
Unix socket (``$BEAMLINE_FORKSERVER``) and exits once the child runs. The
child takes the stub's place exactly: its own session, the stub's streams
(the Starter's log file), environment and directory, and the stub's
``/proc/PID/cmdline`` and process name, so the Starter, ``beamline status``
and the supervisor see ``python3 .../Motor sample_x`` as before, and stop and
kill it as before. Without a fork server (none configured, not running, or it
refuses), the stub runs the server itself, as an ordinary process.

Only the fork server's children share its memory; the fork server itself
never runs a device, holds no thread and no Tango client, and a child that
crashes is reaped by it like any child.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import importlib
import json
import os
import signal
import socket
import sys
import traceback

from tango_devices.registry import SERVERS

SOCKET_ENV = "BEAMLINE_FORKSERVER"  # the socket's path; unset: no fork server
PAD = 1024  # bytes of padding in the fork server's command line: room for its children's
HANDOFF_TIMEOUT = 15.0  # s the stub waits for the fork server (then starts the server itself)
_MAX_MESSAGE = 1 << 20
PR_SET_NAME, PR_SET_MM, PR_SET_MM_ARG_END = 15, 35, 9  # <linux/prctl.h>


# --------------------------------------------------------------- the stub
def launch(server: str) -> int:
    """Entry point of the server executable ``server`` (``Motor``): hand the
    start to the fork server, or run the server in this process."""
    path = os.environ.get(SOCKET_ENV)
    if path and os.path.exists(path):
        try:
            _handoff(path)
            return 0
        except (OSError, ValueError) as exc:
            print(
                f"fork server {path} did not start {server} ({exc}): starting it in this process",
                file=sys.stderr,
                flush=True,
            )
    from tango_devices.relay import ports

    ports.enter(f"{server}/{sys.argv[1] if len(sys.argv) > 1 else ''}")
    module, func = SERVERS[server][1].split(":")
    return getattr(importlib.import_module(module), func)() or 0


def _handoff(path: str) -> int:
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    request = {
        "argv": sys.argv,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "cmdline": cmdline.decode("latin-1"),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(HANDOFF_TIMEOUT)
        sock.connect(path)
        socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
        reply = json.loads(sock.recv(4096) or b"{}")
    if "pid" not in reply:
        raise ValueError(reply.get("error", "no answer"))
    return int(reply["pid"])


# -------------------------------------------------------- the fork server
def serve(path: str) -> None:
    """Import every device module, then fork a child per request until SIGTERM."""
    # no BLAS thread pool: a process that forks must hold no thread, and a
    # device server does not need one
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import gc
    import threading

    for _target, entry in SERVERS.values():
        importlib.import_module(entry.split(":")[0])
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        raise SystemExit(f"fork server: imports started threads ({names}); refusing to fork")
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(tmp)
    listener.listen(1024)  # 200 servers may ask at once
    os.replace(tmp, path)
    print(f"fork server ready on {path} (pid {os.getpid()})", flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                _serve_one(conn, listener)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(path)
        listener.close()


#: child pid -> (its server, a copy of its stderr): how it ended goes to its log
_CHILDREN: dict[int, tuple[str, int]] = {}


def _reap(*_args) -> None:
    """Collect ended children; say in each one's own log how it ended (its
    parent is the fork server: nobody else can know its exit status)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        server, fd = _CHILDREN.pop(pid, ("?", -1))
        if fd < 0:
            continue
        if os.WIFSIGNALED(status):
            how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exit code {os.waitstatus_to_exitcode(status)}"
        with contextlib.suppress(OSError):
            os.write(fd, f"[fork server] {server} (pid {pid}) ended: {how}\n".encode())
        os.close(fd)


def _serve_one(conn: socket.socket, listener: socket.socket) -> None:
    fds: list[int] = []
    try:
        conn.settimeout(HANDOFF_TIMEOUT)
        msg, fds, _flags, _addr = socket.recv_fds(conn, _MAX_MESSAGE, 3)
        request = json.loads(msg)
        server = os.path.basename(request["argv"][0])
        if server not in SERVERS or len(fds) != 3:
            raise ValueError(f"not a server of this suite: {server!r}")
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # SIGCHLD waits until the child is registered (it could end at once)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                _child(request, fds, ready_w, (conn, listener))
            _CHILDREN[pid] = (f"{server} {' '.join(request['argv'][1:2])}", os.dup(fds[2]))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            ok = ready.read(1) == b"1"  # the child looks like the stub now
        reply = {"pid": pid} if ok else {"error": f"child {pid} died while starting"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reply = {"error": str(exc)}
    finally:
        for fd in fds:
            os.close(fd)
    with contextlib.suppress(OSError):
        conn.send(json.dumps(reply).encode())


def _child(request: dict, fds: list[int], ready_w: int, sockets) -> None:
    """In the child: become the stub's process, then run the server. Never returns."""
    code = 1
    try:
        for sock in sockets:
            sock.close()
        for _server, fd in _CHILDREN.values():  # the other children's log copies
            with contextlib.suppress(OSError):
                os.close(fd)
        _CHILDREN.clear()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        # a crash from here on says where, in the server's own log
        faulthandler.enable(file=sys.stderr, all_threads=True)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        server = os.path.basename(sys.argv[0])
        set_process_title(request["cmdline"].encode("latin-1"), server)
        os.write(ready_w, b"1")
        os.close(ready_w)
        module, func = SERVERS[server][1].split(":")
        code = getattr(importlib.import_module(module), func)() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the child must never return to the fork server
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def set_process_title(cmdline: bytes, name: str) -> None:
    """Make ``/proc/self/cmdline`` read ``cmdline`` (NUL-separated arguments)
    and the process name (``comm``) ``name``, by writing over this process's
    own argument area (it must be long enough: the fork server is started
    with :data:`PAD` bytes of padding)."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48 and 49
    size = arg_end - arg_start
    if len(cmdline) > size:
        raise ValueError(f"command line of {len(cmdline)} bytes does not fit in {size}")
    ctypes.memmove(arg_start, cmdline + b"\0" * (size - len(cmdline)), size)
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    # the area's end at the command line's end, so that nothing follows it
    # (needs CAP_SYS_RESOURCE; without it the padding reads as empty arguments)
    prctl(PR_SET_MM, PR_SET_MM_ARG_END, arg_start + len(cmdline), 0, 0)
    title = ctypes.create_string_buffer(name.encode()[:15])
    prctl(PR_SET_NAME, ctypes.addressof(title), 0, 0, 0)


def main() -> None:
    """``beamline-forkserver --socket PATH [PADDING]`` (``beamline up`` starts
    it, with :data:`PAD` spaces of padding: room for its children's command
    lines; an option first, so that its own command line never reads as a
    server's)."""
    args = sys.argv[1:]
    if len(args) < 2 or args[0] != "--socket":
        raise SystemExit("usage: beamline-forkserver --socket PATH")
    serve(args[1])


def __getattr__(name: str):
    """``forkserver.Motor()`` launches the server ``Motor``: the console
    scripts of the server executables point here."""
    if name in SERVERS:
        return lambda: launch(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
