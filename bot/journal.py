"""Which files under the knowledge-base folder changed since the last scan, as the kernel saw it.

A sync's scan stats every file: 8-13 ms at 1,000 files, the largest part of a one-file sync after
the embedding. While a process keeps its `KnowledgeBase` (the server, the watcher, a benchmark),
Linux inotify can name the changed files instead, as git's fsmonitor does; `documents.rescan`
then looks at those alone. Only on local file systems: an edit made on another machine to a
network share shows in no watch here.

The journal only ever narrows a scan it can vouch for. It answers None, and the caller scans in
full (which starts a fresh journal), before its first scan and after anything it cannot follow:
a folder created, removed or renamed, an event queue overflow, a watch it could not add (the
per-user inotify limits), a system without inotify, a network file system. Edits that no folder watch sees (through a
symlink or another hard link) are covered by `FolderScan.volatile`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import struct
import sys
import threading
import weakref

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_ISDIR = 0x1000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
LOST = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF  # the watch no longer covers the folder
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()

# Where every change is made through this kernel, so its watches see them all. A network or FUSE
# file system (NFS, SMB, sshfs, a Docker Desktop share) changes under us unseen: scan in full there.
LOCAL_FILESYSTEMS = frozenset("ext2 ext3 ext4 xfs btrfs tmpfs overlay zfs f2fs jfs reiserfs bcachefs ramfs".split())


def filesystem_type(path: str, mountinfo: str) -> str:
    """The type of the file system holding `path`, from /proc/self/mountinfo's text ("" if none)."""
    best, kind = -1, ""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])  # "\040" is a space
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the deepest mount wins; of equal ones, the later
            best, kind = len(point), rest.split()[0]
    return kind


def usable(folder: str) -> bool:
    """Whether a journal can follow `folder`: inotify here, and a local file system under it."""
    return _LIBC is not None and _local(folder)


def _local(folder: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            return filesystem_type(folder, fh.read()) in LOCAL_FILESYSTEMS
    except OSError:
        return False


class FolderJournal:
    """Names changed under one folder since the last `changes()`, from folder watches that a full
    scan sets up as it walks (`restart()` before it, `watch` as each folder is entered)."""

    def __init__(self) -> None:
        self._fd = -1
        self._close: weakref.finalize | None = None
        self._prefixes: dict[int, str] = {}  # watch descriptor -> its folder's path relative to the root, with "/"
        self._changed: set[str] = set()
        self._complete = False  # every folder watched, and nothing missed since
        self._lock = threading.Lock()  # the sync and the watcher's staleness check may both read events

    def restart(self, root: str) -> None:
        """Forget everything and open a fresh watch on `root`'s file system if it is a local one;
        a full scan follows and calls `watch` for each folder."""
        with self._lock:
            self._reset()
            if not usable(root):
                return
            fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:  # EMFILE: max_user_instances (often 128) inotify instances open already
                log.debug("no folder journal (%s): every sync stats every file", os.strerror(ctypes.get_errno()))
                return
            self._fd, self._complete = fd, True
            self._close = weakref.finalize(self, os.close, fd)

    def watch(self, folder: str, prefix: str) -> None:
        """Start watching `folder`, whose files are named `prefix + name` relative to the root."""
        with self._lock:
            if self._fd < 0:
                return
            wd = _LIBC.inotify_add_watch(self._fd, os.fsencode(folder), WATCH_MASK)
            if wd < 0:  # ENOSPC: max_user_watches reached; this folder's edits would go unseen
                log.debug("cannot watch %s (%s): the next sync scans in full", folder, os.strerror(ctypes.get_errno()))
                self._complete = False
            else:
                self._prefixes[wd] = prefix

    def changes(self) -> set[str] | None:
        """The names changed since the last call (relative to the root), or None: scan in full."""
        with self._lock:
            self._drain()
            if not self._complete:
                return None
            changed, self._changed = self._changed, set()
            return changed

    def pending(self) -> bool | None:
        """Whether anything changed since the last `changes()`; None when the journal cannot tell."""
        with self._lock:
            self._drain()
            return bool(self._changed) if self._complete else None

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        if self._close is not None:
            self._close()  # closes the descriptor once, here or when the journal is collected
        self._fd, self._close, self._prefixes, self._changed, self._complete = -1, None, {}, set(), False

    def _drain(self) -> None:
        while self._fd >= 0 and self._complete:
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError as err:
                log.debug("folder journal failed (%s): the next sync scans in full", err)
                self._complete = False
                return
            offset = 0
            while offset < len(buf):
                wd, mask, _, size = _EVENT.unpack_from(buf, offset)
                name = buf[offset + _EVENT.size:offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                if mask & LOST or (mask & IN_ISDIR and not name.startswith(b".")) or wd not in self._prefixes:
                    self._complete = False  # a folder came, went or moved: prefixes no longer hold
                elif name and not name.startswith(b"."):  # hidden names are never indexed
                    self._changed.add(self._prefixes[wd] + os.fsdecode(name))
