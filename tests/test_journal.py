"""The folder journal (real inotify) and the narrowed scan it drives: after any sequence of edits,
`rescan` must return what a full `scan_folder` of the folder returns."""

import os
import random
import shutil
import tempfile

import pytest

from bot import journal as journal_module
from bot.documents import rescan, scan_folder
from bot.journal import FolderJournal

MB = 2**20
EXTS = [".md", ".txt"]

# inotify is Linux only, and followed here only on a local file system
pytestmark = pytest.mark.skipif(not journal_module.usable(tempfile.gettempdir()), reason="no inotify journal here")


def started(root) -> tuple[FolderJournal, object]:
    journal = FolderJournal()
    journal.restart(str(root))
    return journal, scan_folder(root, EXTS, MB, None, journal.watch)


def known_of(scan) -> dict:
    """The file list a sync would keep after indexing `scan`: each file's sha256 and trusted stat."""
    return {rel: {"sha256": e.sha256, "stat": scan.trusted_stat(rel)} for rel, e in scan.entries.items()}


def outcome(scan) -> tuple:
    """All a sync uses of a scan; not whether a file was read (a full scan re-reads recent files)."""
    return ({rel: e.sha256 for rel, e in scan.entries.items()}, list(scan.entries), list(scan.stats.items()),
            scan.ignored, [(s.rel, s.reason, s.keep_previous) for s in scan.skipped], scan.order)


def test_edits_are_named_and_hidden_names_left_out(tmp_path):
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# A")
    (root / "sub" / "b.md").write_text("# B")
    journal, _ = started(root)
    assert journal.changes() == set() and journal.pending() is False
    (root / "sub" / "b.md").write_text("# B, edited")
    (root / ".a.md.swp").write_text("editor state")
    (root / "c.txt").write_text("new")
    os.rename(root / "a.md", root / "sub" / "a.md")
    assert journal.pending() is True
    assert journal.changes() == {"sub/b.md", "c.txt", "a.md", "sub/a.md"}
    assert journal.changes() == set()


@pytest.mark.parametrize("folder_change", ["create", "remove", "rename", "chmod"])
def test_a_folder_change_asks_for_a_full_scan(tmp_path, folder_change):
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    journal, _ = started(root)
    {"create": lambda: (root / "new").mkdir(),
     "remove": lambda: shutil.rmtree(root / "sub"),
     "rename": lambda: os.rename(root / "sub", root / "moved"),
     "chmod": lambda: os.chmod(root / "sub", 0o700)}[folder_change]()
    assert journal.pending() is None and journal.changes() is None
    journal, _ = started(root)  # the full scan that follows watches the folders anew
    (root / ".cache").mkdir()  # a hidden folder is never walked: no reason to scan in full
    os.rmdir(root / ".cache")
    assert journal.changes() == set()
    (root / "visible").mkdir()
    assert journal.changes() is None


def test_an_overflowing_queue_asks_for_a_full_scan(tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    journal, _ = started(root)
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}")
    for i in range(limit + 10):  # distinct names: the kernel merges only identical consecutive events
        (root / f"f{i}.txt").touch()
    assert journal.changes() is None


def test_without_inotify_the_journal_never_vouches(monkeypatch, tmp_path):
    monkeypatch.setattr(journal_module, "_LIBC", None)
    journal = FolderJournal()
    journal.restart(str(tmp_path))
    journal.watch(str(tmp_path), "")
    assert not journal_module.usable(str(tmp_path)) and journal.changes() is None and journal.pending() is None


def test_closing_releases_the_descriptor(tmp_path):
    journal, _ = started(tmp_path)
    fd = journal._fd
    os.fstat(fd)
    journal.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    assert journal.changes() is None


def _edit(rng: random.Random, root, step: int) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    folders = [root, root / "sub", root / "sub" / "deep"]
    kind = rng.choice(["add", "add", "edit", "edit", "same", "delete", "rename", "ignored", "big", "chmod", "touch",
                       "link", "save"])
    target = rng.choice(files) if files else None
    if kind == "add" or target is None:
        (rng.choice(folders) / f"n{step}{rng.choice(['.md', '.txt'])}").write_text(f"# New {step}\n\nText {rng.random()}")
    elif kind == "edit":
        target.write_text(f"# Edited {step}\n\n{rng.random()}")
    elif kind == "same" and os.access(target, os.R_OK):
        target.write_bytes(target.read_bytes())  # rewritten as it was: read again, same sha256
    elif kind == "delete":
        target.unlink()
    elif kind == "rename":
        os.replace(target, rng.choice(folders) / f"r{step}{target.suffix}")
    elif kind == "ignored":
        (rng.choice(folders) / f"notes{step}.docx").write_bytes(b"PK")
    elif kind == "big":
        target.write_bytes(b"x" * (MB + 1))  # over the limit: skipped, kept
    elif kind == "chmod":
        target.chmod(0o200 if target.stat().st_mode & 0o400 else 0o644)  # unreadable (but to root), and back
    elif kind == "touch":
        os.utime(target)
    elif kind == "save":  # as editors save: a hidden temporary file renamed over the document
        temporary = target.parent / f".{target.name}.{step}.tmp"
        temporary.write_text(f"# Saved {step}\n\n{rng.random()}")
        os.replace(temporary, target)
    elif kind == "link":  # a second name for a file: edits through one show only as the other's stat
        other = rng.choice(folders) / f"l{step}.md"
        os.link(target, other)
        with open(other, "a") as fh:
            fh.write(" more")


@pytest.mark.parametrize("seed", range(4))
def test_rescan_equals_a_full_scan_after_random_edits(tmp_path, seed):
    rng = random.Random(seed)
    root = tmp_path / "kb"
    (root / "sub" / "deep").mkdir(parents=True)
    for i in range(12):
        (root / ("sub" if i % 3 else "") / f"p{i}.md").write_text(f"# Page {i}\n\nText {i}.")
    journal, scan = started(root)
    narrowed_scans = 0
    for step in range(40):
        for k in range(rng.randint(1, 3)):
            _edit(rng, root, 10 * step + k)
        known = known_of(scan)
        changed = journal.changes()
        assert changed is not None, "only files changed: the journal can vouch"
        narrowed = rescan(scan, changed, root, EXTS, MB, known)
        if narrowed is None:  # a new hard link: scan in full, as the knowledge base does
            journal.restart(str(root))
            scan = scan_folder(root, EXTS, MB, known, journal.watch)
            continue
        narrowed_scans += 1
        assert outcome(narrowed) == outcome(scan_folder(root, EXTS, MB, known)), (seed, step)
        assert all(e.data is not None for rel, e in narrowed.entries.items() if known.get(rel, {}).get("sha256") != e.sha256)
        scan = narrowed
    assert narrowed_scans >= 20  # the rest: new hard links


def test_a_name_that_became_a_folder_needs_a_full_scan(tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    (root / "a.md").write_text("# A")
    journal, scan = started(root)
    (root / "a.md").unlink()
    (root / "a.md").mkdir()
    assert rescan(scan, {"a.md"}, root, EXTS, MB, known_of(scan)) is None


MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 253:1 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /srv/kb rw - nfs4 server:/kb rw
41 40 0:51 / /srv/kb/local\040copy rw - tmpfs tmpfs rw
42 27 0:52 / /srv/kbx rw - fuse.sshfs host:/x rw
43 27 0:53 / /srv/kbx rw - ext4 /dev/vdb rw
"""


@pytest.mark.parametrize("path, kind", [
    ("/", "ext4"), ("/home/a/kb", "ext4"), ("/srv/kb", "nfs4"), ("/srv/kb/sub/x", "nfs4"),
    ("/srv/kb/local copy/x", "tmpfs"), ("/srv/kbx/a", "ext4"),  # mounted over: the later mount wins
    ("/srv/kbxy", "ext4"), ("/proc/self", "proc"),
])
def test_the_file_system_of_a_path_is_its_deepest_mount(path, kind):
    assert journal_module.filesystem_type(path, MOUNTINFO) == kind


def test_on_a_network_file_system_the_journal_never_vouches(monkeypatch, tmp_path):
    monkeypatch.setattr(journal_module, "filesystem_type", lambda path, mountinfo: "nfs4")
    journal, _ = started(tmp_path)
    assert journal.changes() is None and journal.pending() is None
    monkeypatch.undo()
    journal, _ = started(tmp_path)  # this machine's own disk
    assert journal.changes() == set()
