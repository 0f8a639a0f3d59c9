"""Making an HDF5 file left by a killed SWMR writer readable by everyone (no tango).

The logger writes its active file in HDF5's SWMR mode (single writer,
multiple readers): HDF5 orders every write so that the file on disk is
consistent at every instant, which is what makes a kill -9 harmless. A
writer that never closed its file leaves the *file consistency flags* of the
superblock set, though: SWMR readers (``h5py.File(path, "r", swmr=True)``)
open it, a plain ``h5py.File(path)`` refuses it ("file is already open for
write (may use <h5clear file> to clear file consistency flags)").

:func:`seal` does what ``h5clear -s`` does, without needing the HDF5 tools:
it clears the flags and recomputes the superblock's checksum (Jenkins'
lookup3, as HDF5 does). It works on a copy and renames it over the original,
so a reader never sees a half-written superblock and a crash during the seal
leaves the original untouched (and the ``*.tmp`` copy is removed next time).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' hashlittle (lookup3.c), HDF5's metadata checksum."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M
    i = 0
    while length > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _M
        a = (a - c) & _M
        a ^= _rot(c, 4)
        c = (c + b) & _M
        b = (b - a) & _M
        b ^= _rot(a, 6)
        a = (a + c) & _M
        c = (c - b) & _M
        c ^= _rot(b, 8)
        b = (b + a) & _M
        a = (a - c) & _M
        a ^= _rot(c, 16)
        c = (c + b) & _M
        b = (b - a) & _M
        b ^= _rot(a, 19)
        a = (a + c) & _M
        c = (c - b) & _M
        c ^= _rot(b, 4)
        b = (b + a) & _M
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = data[i:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    c ^= b
    c = (c - _rot(b, 14)) & _M
    a ^= c
    a = (a - _rot(c, 11)) & _M
    b ^= a
    b = (b - _rot(a, 25)) & _M
    c ^= b
    c = (c - _rot(b, 16)) & _M
    a ^= c
    a = (a - _rot(c, 4)) & _M
    b ^= a
    b = (b - _rot(a, 14)) & _M
    c ^= b
    c = (c - _rot(b, 24)) & _M
    return c


def _superblock(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(48)


def _size(version: int) -> int:
    # signature, version, sizes of offsets and lengths, flags, 4 addresses, checksum
    return 8 + 1 + 1 + 1 + 1 + 4 * 8 + 4 if version in (2, 3) else 0


def consistency_flags(path: str | Path) -> int:
    """The superblock's file consistency flags (0: closed cleanly or never SWMR)."""
    sb = _superblock(Path(path))
    if len(sb) < 12 or sb[:8] != SIGNATURE:
        raise ValueError(f"{path} is not an HDF5 file (no signature at offset 0)")
    if sb[8] not in (2, 3):
        return 0  # superblock v0/v1: flags are not used by the library
    return sb[11]


def is_sealed(path: str | Path) -> bool:
    return consistency_flags(path) == 0


def sealed_superblock(sb: bytes) -> bytes:
    """The 48-byte v2/v3 superblock with its flags cleared and the checksum redone."""
    if sb[:8] != SIGNATURE or sb[8] not in (2, 3) or len(sb) < _size(sb[8]):
        raise ValueError("not a version 2/3 HDF5 superblock")
    if sb[9] != 8 or sb[10] != 8:
        raise ValueError("only 8-byte offsets and lengths are supported")
    out = bytearray(sb[:48])
    out[11] = 0
    stored = struct.unpack("<I", bytes(sb[44:48]))[0]
    if stored != lookup3(bytes(sb[:44])):
        raise ValueError("the superblock checksum does not match: not touching it")
    out[44:48] = struct.pack("<I", lookup3(bytes(out[:44])))
    return bytes(out)


def seal(path: str | Path) -> bool:
    """Clear the consistency flags of ``path`` (copy, patch, fsync, rename).

    Returns False if it was sealed already. The caller checks first that the
    file opens as a SWMR reader: sealing cannot repair a broken file.
    """
    path = Path(path)
    sb = _superblock(path)
    if consistency_flags(path) == 0:
        return False
    patched = sealed_superblock(sb)
    tmp = path.with_name(path.name + ".sealing.tmp")
    shutil.copyfile(path, tmp)
    with open(tmp, "r+b") as f:
        f.write(patched)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
