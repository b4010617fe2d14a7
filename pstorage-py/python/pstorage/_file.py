"""``pstorage.File``: an open cluster file as a Python binary raw file."""

from __future__ import annotations

import errno
import io
import os
from typing import Any, Optional

from . import _errors
from ._pstorage import RawFile, StatResult

__all__ = ["File"]

# The most one read() without a size asks the cluster for at a time.
_READALL_PIECE = 16 << 20


class File(io.RawIOBase):
    """An open file in the cluster, returned by :meth:`pstorage.Cluster.open`.

    A complete ``io.RawIOBase``: ``read``, ``readinto``, ``readall``,
    ``write``, ``seek``, ``tell``, ``truncate``, ``flush``, ``close``, the
    ``readable``/``writable``/``seekable`` queries and the context manager;
    wrap it in ``io.BufferedReader``/``io.BufferedWriter`` for small reads and
    writes, use it with ``shutil.copyfileobj`` or a ``hashlib`` loop as is.
    :meth:`pread` and :meth:`pwrite` do positioned I/O without moving the
    position.

    Every call that waits for the network releases the GIL, so threads
    working on different files (or on one file with pread/pwrite) run in
    parallel. The position is not locked: threads sharing one ``File``
    should use pread/pwrite.

    A write returns when every replica has the data; ``flush()`` makes it
    durable and commits the size to the metadata server; ``close()`` flushes
    and releases the lease (a write lease is exclusive: nobody else can open
    the file until it is released).
    """

    def __init__(
        self, raw: RawFile, mode: str, *, readable: bool, writable: bool, append: bool
    ) -> None:
        super().__init__()
        self._raw = raw
        self._mode = mode
        self._readable = readable
        self._writable = writable
        self._append = append
        self._pos = raw.size() if append else 0

    # -- identity ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The path the file was opened by."""
        return self._raw.path

    @property
    def mode(self) -> str:
        """The mode it was opened with, normalized like ``io.FileIO.mode``."""
        return self._mode

    @property
    def size(self) -> int:
        """The size as this handle sees it, including unflushed writes."""
        return self._raw.size()

    def stat(self) -> StatResult:
        """The file's attributes from the metadata server, with this handle's size."""
        self._check_open()
        return self._raw.stat()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pos={self._pos}"
        return f"<pstorage.File name={self.name!r} mode={self._mode!r} {state}>"

    # -- io.RawIOBase -----------------------------------------------------

    def readable(self) -> bool:
        self._check_open()
        return self._readable

    def writable(self) -> bool:
        self._check_open()
        return self._writable

    def seekable(self) -> bool:
        self._check_open()
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        """Reads up to ``size`` bytes (all up to the end if negative or None);
        ``b""`` only at the end of the file."""
        self._check_readable()
        if size is None or size < 0:
            return self.readall()
        data = self._raw.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        """Reads from the position to the end of the file."""
        self._check_readable()
        pieces = []
        while True:
            want = max(self._raw.size() - self._pos, 0)
            data = self._raw.pread(min(want, _READALL_PIECE) or 1, self._pos)
            if not data:
                break
            pieces.append(data)
            self._pos += len(data)
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        """Reads into a writable bytes-like object; returns the count, 0 at
        the end of the file."""
        self._check_readable()
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self._raw.pread(len(target), self._pos)
            target[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, data: Any) -> int:
        """Writes all of a bytes-like object at the position (at the end in
        append mode); returns its length once every replica has it."""
        self._check_writable()
        payload = _as_bytes(data)
        if self._append:
            self._pos = self._raw.size()
        written = self._raw.pwrite(payload, self._pos)
        self._pos += written
        return written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Moves the position (``SEEK_SET``, ``SEEK_CUR``, ``SEEK_END``);
        returns it. Beyond the end is allowed (a later write leaves zeros)."""
        self._check_open()
        offset = int(offset)
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._raw.size() + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise _errors.InvalidArgument(
                errno.EINVAL, f"seek of {self.name} to {pos}: the position must not be negative"
            )
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def truncate(self, size: Optional[int] = None) -> int:
        """Sets the size (default: the position); the position stays."""
        self._check_writable()
        size = self._pos if size is None else int(size)
        if size < 0:
            raise _errors.InvalidArgument(
                errno.EINVAL, f"truncate of {self.name} to {size}: the size must not be negative"
            )
        self._raw.truncate(size)
        return size

    def flush(self) -> None:
        """Makes the writes so far durable on every replica and commits the
        size to the metadata server (nothing to do for a read-only file)."""
        self._check_open()
        if self._writable:
            self._raw.flush()

    def close(self) -> None:
        """Flushes and releases the lease; closing again does nothing. The
        lease is released even if the flush fails (its error is raised)."""
        if self.closed:
            return
        try:
            super().close()  # flush(), then marks the file closed
        finally:
            self._raw.close()

    # -- positioned I/O ---------------------------------------------------

    def pread(self, size: int, offset: int) -> bytes:
        """Reads up to ``size`` bytes at ``offset`` without moving the position."""
        self._check_readable()
        _check_range(self.name, size, offset)
        return self._raw.pread(size, offset)

    def pwrite(self, data: Any, offset: int) -> int:
        """Writes all of ``data`` at ``offset`` without moving the position;
        returns its length. Ignores append mode, like ``os.pwrite``."""
        self._check_writable()
        _check_range(self.name, 0, offset)
        return self._raw.pwrite(_as_bytes(data), offset)

    # -- checks -----------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _check_readable(self) -> None:
        self._check_open()
        if not self._readable:
            raise io.UnsupportedOperation(f"{self.name} is not open for reading (mode {self._mode!r})")

    def _check_writable(self) -> None:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation(f"{self.name} is not open for writing (mode {self._mode!r})")


def _as_bytes(data: Any) -> bytes:
    """``data`` as ``bytes``: as is if it already is, else one copy."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError("a bytes-like object is required, not 'str'")
    with memoryview(data) as view:
        return view.tobytes()


def _check_range(name: str, size: int, offset: int) -> None:
    if size < 0 or offset < 0:
        raise _errors.InvalidArgument(
            errno.EINVAL,
            f"{name}: size ({size}) and offset ({offset}) must not be negative",
        )
