"""Folder -> readable sources. Every bad file becomes a `Skipped` with a reason, never an exception.

Two phases keep a sync proportional to the change: `scan_folder` only stats, and reads and hashes
the bytes of files whose stat changed; `read_source` (decode, HTML, PDF) runs for new or changed
files alone.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)

# A stat taken this close to a later edit may not show that edit (timestamps are coarse): such a
# stat is not trusted next time, and the file is hashed again (git's "racily clean" rule).
RACY_NS = 2 * 10**9


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must stay equal for a file's bytes to count as unchanged without reading them.

    ctime is in it because nothing a user runs can set it back: restoring an old mtime after an
    edit (`touch -d`, some editors and sync tools) still moves ctime.
    """
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class FileEntry(NamedTuple):  # a tuple, not a frozen dataclass: a third of the cost, once per file per scan
    rel: str  # POSIX path relative to the knowledge-base folder: the `source` of its passages
    path: str  # a plain string: a Path per file cost 20 ms a scan at 1,000 files
    sha256: str
    data: bytes | None = None  # None: unchanged by its stat, not read


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str
    # True when the file is there but could not be read this time: its last good version stays
    # indexed (nothing indexed before is lost). False for files that are gone or empty.
    keep_previous: bool = True


@dataclass
class FolderScan:
    entries: dict[str, FileEntry] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # other file types, noted once
    stats: dict[str, tuple] = field(default_factory=dict)  # rel -> stat_key, as in folder_stats
    started_ns: int = 0  # wall clock when the scan began: stats changed after it minus RACY_NS are not trusted
    order: list[str] = field(default_factory=list)  # every file seen, indexable or not, in walk order
    # symlinks and files with other hard links: an edit through another name shows in no folder
    # watch (`bot.journal`), so `rescan` looks at these every time
    volatile: set[str] = field(default_factory=set)

    def skip(self, rel: str, reason: str, keep_previous: bool = True) -> None:
        log.warning("skipped %s: %s", rel, reason)
        self.skipped.append(Skipped(rel, reason, keep_previous))

    def forget_bytes(self) -> None:
        for rel, entry in self.entries.items():
            if entry.data is not None:
                self.entries[rel] = entry._replace(data=None)

    def trusted_stat(self, rel: str) -> list[int] | None:
        """The file's stat if a later scan may trust it instead of hashing (None: too recent)."""
        key = self.stats.get(rel)
        if key is None or max(key[1], key[2]) >= self.started_ns - RACY_NS:
            return None
        return list(key)


@dataclass(frozen=True)
class Source:
    """A readable document: Markdown-ish text (headings as '#') or, for PDFs, one text per page."""

    rel: str
    title: str
    text: str = ""
    pages: tuple[str, ...] = ()


def _suffixes(extensions: list[str]) -> tuple[str, ...]:
    # for str.endswith (a tenth of splitext's cost); "md" means ".md", never "readmd"
    return tuple("." + e.lower().lstrip(".") for e in extensions)


def walk_folder(root: Path, extensions: list[str], enter: Callable[[str, str], None] | None = None):
    """Yield (relative POSIX path, os.DirEntry, indexable?) for every file under `root`.

    Subfolders are included; hidden entries and symlinked folders are left out. The one walker
    behind both the sync's scan and the watcher's cheap stat check, so the two always agree.
    Plain strings and DirEntry, not pathlib: at 1,000 files pathlib cost 30 ms a walk.
    `enter(folder, prefix)` is called before each folder is listed (a journal starts watching it).
    """
    exts = _suffixes(extensions)

    def walk(folder: str, prefix: str):
        if enter is not None:
            enter(folder, prefix)
        with os.scandir(folder) as it:
            listing = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        folders = []
        for e in listing:
            if e.is_dir():
                if not e.is_symlink():
                    folders.append(e)
            else:
                yield prefix + e.name, e, e.name.lower().endswith(exts)
        for e in folders:
            yield from walk(e.path, prefix + e.name + "/")

    yield from walk(str(root), "")


def folder_stats(root: Path, extensions: list[str]) -> dict[str, tuple]:
    """`stat_key` of each indexable file, by stat alone: what the watcher compares between polls."""
    root = root.resolve()
    stats: dict[str, tuple] = {}
    try:
        for rel, entry, indexable in walk_folder(root, extensions):
            if indexable and _outside_target(root, entry) is None:
                try:
                    stats[rel] = stat_key(entry.stat())
                except OSError:
                    continue
    except OSError:
        return {}  # a missing or unreadable folder: the sync itself says so, clearly
    return stats


def walk_key(rel: str) -> tuple:
    """Sort key of `walk_folder`'s order: in each folder its files by name, then its subfolders."""
    *folders, name = rel.split("/")
    return (*((1, f) for f in folders), (0, name))


def scan_folder(root: Path, extensions: list[str], max_bytes: int, known: dict[str, dict] | None = None,
                enter: Callable[[str, str], None] | None = None) -> FolderScan:
    """Stat every indexable file under `root` (see `walk_folder`), and read and hash the changed ones.

    `known` is the last sync's file list (rel -> {"sha256", "stat"}): a file whose stat equals its
    trusted `stat` there keeps that sha256 unread. Without it, every file is read and hashed.
    """
    scan = FolderScan(started_ns=time.time_ns())
    root = root.resolve()
    known = known or {}
    for rel, entry, indexable in walk_folder(root, extensions, enter):
        scan.order.append(rel)
        if indexable:
            _scan_file(scan, root, entry, rel, max_bytes, known.get(rel))
        else:
            scan.ignored.append(rel)
    if scan.ignored:
        log.info("ignored %d file(s) of other types, e.g. %s", len(scan.ignored), scan.ignored[0])
    return scan


def rescan(prev: FolderScan, changed: set[str], root: Path, extensions: list[str], max_bytes: int,
           known: dict[str, dict] | None = None) -> FolderScan | None:
    """What `scan_folder(root, extensions, max_bytes, known)` would return now, given the previous
    scan and the names changed since (from `bot.journal`), without statting every file.

    Looked at again: the changed names, the files skipped or volatile last time, and any file
    that `known` does not hold with the sha256 seen last time. The rest keep their entry, unread.
    None where only a full scan can tell (a changed name is now a folder, cannot be statted, or is
    a new hard link to a file).
    """
    scan = FolderScan(started_ns=time.time_ns())
    root = root.resolve()
    known = known or {}
    exts = _suffixes(extensions)
    recheck = changed | prev.volatile | {s.rel for s in prev.skipped}
    order = prev.order
    if not changed.issubset(prev.stats.keys()):  # stats has most names: the full set only when needed
        seen = set(order)
        if not changed.issubset(seen):
            order = sorted(seen | changed, key=walk_key)
    ignored = set(prev.ignored)
    for rel in order:
        if rel not in recheck:
            old = prev.entries.get(rel)
            if old is not None and (known.get(rel) or {}).get("sha256") == old.sha256:
                scan.entries[rel] = old if old.data is None else FileEntry(rel, old.path, old.sha256)
                scan.stats[rel] = prev.stats[rel]
                scan.order.append(rel)
                continue
            if rel in ignored:
                scan.ignored.append(rel)
                scan.order.append(rel)
                continue
        path = os.path.join(root, rel)
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            continue  # gone: removed, or renamed (the new name is among the changed)
        except OSError:
            return None
        if stat.S_ISDIR(lst.st_mode):
            return None
        if stat.S_ISLNK(lst.st_mode) and os.path.isdir(path):
            continue  # a symlinked folder, left out as by the walk
        scan.order.append(rel)
        if rel.lower().endswith(exts):
            _scan_file(scan, root, _Found(path, lst), rel, max_bytes, known.get(rel))
            if rel in scan.volatile and rel not in prev.volatile and not stat.S_ISLNK(lst.st_mode):
                return None  # a new hard link: its other name here, unchanged to the journal, moved too
        else:
            scan.ignored.append(rel)
    return scan


class _Found:
    """The parts of an `os.DirEntry` that `_scan_file` uses, for a file found by name."""

    __slots__ = ("path", "_lstat")

    def __init__(self, path: str, lstat: os.stat_result):
        self.path, self._lstat = path, lstat

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self._lstat.st_mode)

    def stat(self) -> os.stat_result:
        return os.stat(self.path) if self.is_symlink() else self._lstat


def _outside_target(root: Path, entry: os.DirEntry) -> Path | None:
    """The target of a symlink that leaves `root`, else None."""
    if entry.is_symlink():
        target = Path(entry.path).resolve()
        if not target.is_relative_to(root):
            return target
    return None


def _scan_file(scan: FolderScan, root: Path, entry: os.DirEntry, rel: str, max_bytes: int, known: dict | None) -> None:
    path = entry.path
    try:
        target = _outside_target(root, entry)
        if target is not None:
            return scan.skip(rel, f"symlink to {target}, outside the knowledge base", keep_previous=False)
        st = entry.stat()
        scan.stats[rel] = key = stat_key(st)  # taken before reading: a later edit shows next time
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever; a device never ends
            return scan.skip(rel, "not a regular file", keep_previous=False)
        if st.st_nlink > 1 or entry.is_symlink():
            scan.volatile.add(rel)
        if st.st_size > max_bytes:
            return scan.skip(rel, f"{st.st_size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit")
        if known and known.get("stat") == list(key):
            scan.entries[rel] = FileEntry(rel, path, known["sha256"])
            return
        with open(path, "rb") as fh:  # read once: hash and parse the same bytes
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        return scan.skip(rel, "deleted while it was being read", keep_previous=False)
    except OSError as err:
        return scan.skip(rel, f"cannot be read ({err.strerror or err})")
    scan.entries[rel] = FileEntry(rel, path, hashlib.sha256(data).hexdigest(), data)


# Terminal escapes, other C0/C1 controls and bidi overrides: invisible on the page, but they
# reach `supportbot search` output in a terminal, and reorder text a person reviews.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def read_source(entry: FileEntry) -> Source | Skipped:
    """Parse one file. Returns `Skipped` with a reason the user can act on."""
    if entry.data is None:  # trusted by its stat at scan time; needed after all (a repair)
        try:
            with open(entry.path, "rb") as fh:
                entry = FileEntry(entry.rel, entry.path, entry.sha256, fh.read())
        except OSError as err:
            return Skipped(entry.rel, f"cannot be read ({err.strerror or err})")
    suffix = os.path.splitext(entry.path)[1].lower()
    if not entry.data.strip():
        return Skipped(entry.rel, "empty file", keep_previous=False)
    if suffix == ".pdf":
        return _read_pdf(entry)
    if b"\x00" in entry.data[:8192]:
        return Skipped(entry.rel, f"binary content in a {suffix} file")
    try:
        text = entry.data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        log.warning("%s: invalid UTF-8 at byte %d; undecodable bytes replaced", entry.rel, err.start)
        text = entry.data.decode("utf-8", errors="replace")
    text = _CONTROL.sub("", text)
    if suffix in {".html", ".htm"}:
        return _from_html(entry.rel, text)
    return Source(entry.rel, _markdown_title(text) or _title_from_name(entry.rel), text=text)


def _title_from_name(rel: str) -> str:
    stem = Path(rel).stem.replace("_", " ").replace("-", " ").strip()
    return stem[:1].upper() + stem[1:]


_H1 = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)


def _markdown_title(text: str) -> str:
    m = _H1.search(text)
    return m.group(1).strip() if m else ""


def _from_html(rel: str, html: str) -> Source:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, features="html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        if tag.name != "head":
            tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    lines = []
    body = soup.body or soup
    for el in body.find_all(["h1", "h2", "h3", "h4", "p", "li", "td", "pre", "blockquote", "dt", "dd"]):
        if el.find_parent(["p", "li", "td", "pre", "blockquote", "dd"]) is not None:
            continue  # counted with its parent
        text = " ".join(el.get_text(" ", strip=True).split())
        if not text:
            continue
        if el.name in {"h1", "h2", "h3", "h4"}:
            lines.append(f"\n{'#' * int(el.name[1])} {text}\n")
        else:
            lines.append(("- " if el.name == "li" else "") + text + "\n")
    text = "\n".join(lines).strip() or " ".join(body.get_text(" ", strip=True).split())
    return Source(rel, title or _markdown_title(text) or _title_from_name(rel), text=text)


def _read_pdf(entry: FileEntry) -> Source | Skipped:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(entry.data))
        if reader.is_encrypted:
            return Skipped(entry.rel, "encrypted PDF")
        pages = tuple(" ".join(_CONTROL.sub("", p.extract_text() or "").split()) for p in reader.pages)
        title = (reader.metadata.title if reader.metadata else None) or _title_from_name(entry.rel)
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as err:
        return Skipped(entry.rel, f"corrupt or unreadable PDF ({type(err).__name__}: {err})")
    if not any(pages):
        return Skipped(entry.rel, "PDF without extractable text (scanned? run OCR first)")
    return Source(entry.rel, str(title), pages=pages)
