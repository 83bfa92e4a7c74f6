"""Reading files: formats, and every kind of bad file from the issue, each with a named reason."""

import os
import time

import pytest

from bot.chunking import ChunkParams, split_source
from bot.documents import RACY_NS, FolderScan, Skipped, Source, _scan_file, read_source, scan_folder

MB = 2**20


def minimal_pdf(text: str) -> bytes:
    """A valid one-page PDF with `text`, built by hand (no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


def scan_one(tmp_path, name, content, max_bytes=10 * MB):
    root = tmp_path / "kb"
    root.mkdir(exist_ok=True)
    (root / name).write_bytes(content)
    scan = scan_folder(root, [".md", ".txt", ".html", ".pdf"], max_bytes)
    if name in scan.entries:
        return read_source(scan.entries[name])
    return next(s for s in scan.skipped if s.rel == name)


@pytest.mark.parametrize(
    "name, content, reason, keep_previous",
    [
        ("empty.md", b"", "empty file", False),
        ("blank.txt", b"  \n\n ", "empty file", False),
        ("binary.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary content", True),
        ("corrupt.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog garbage", "corrupt or unreadable PDF", True),
        ("big.md", b"# Big\n" + b"x" * (50 * MB), "over the 10 MB limit", True),
    ],
    ids=["empty", "blank", "binary-named-md", "corrupt-pdf", "50MB"],
)
def test_bad_files_are_skipped_with_a_reason(tmp_path, name, content, reason, keep_previous):
    result = scan_one(tmp_path, name, content)
    assert isinstance(result, Skipped)
    assert reason in result.reason
    assert result.keep_previous is keep_previous


def test_invalid_utf8_is_read_with_replacement(tmp_path, caplog):
    result = scan_one(tmp_path, "latin.md", "# Prices\n\nCaf\xe9 costs 3 euros.".encode("latin-1"))
    assert isinstance(result, Source)
    assert "Caf\ufffd costs 3 euros" in result.text
    assert "invalid UTF-8" in caplog.text


@pytest.mark.parametrize("name", ["esc.md", "esc.txt", "esc.html"])
def test_terminal_escapes_and_bidi_overrides_are_removed(tmp_path, name):
    body = "Plus costs \x1b[31m$4.99\x1b[0m\x07 a month.\u202e gnissim\x9b\tTabs and\nlines stay."
    result = scan_one(tmp_path, name, (f"<p>{body}</p>" if name.endswith("html") else body).encode())
    assert isinstance(result, Source)
    assert not any(c in result.text for c in "\x1b\x07\u202e\x9b")
    assert "Plus costs [31m$4.99[0m a month." in result.text and "Tabs and" in result.text


def test_symlink_outside_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    root = tmp_path / "kb"
    root.mkdir()
    (root / "inside.md").write_text("# Inside\n\nFine.")
    os.symlink(secret, root / "leak.txt")
    os.symlink(root / "inside.md", root / "alias.md")  # a link inside the folder is fine
    scan = scan_folder(root, [".md", ".txt"], MB)
    assert set(scan.entries) == {"inside.md", "alias.md"}
    (skip,) = scan.skipped
    assert skip.rel == "leak.txt" and "outside the knowledge base" in skip.reason


def test_a_fifo_named_like_a_document_is_skipped_not_read(tmp_path):
    import threading

    root = tmp_path / "kb"
    root.mkdir()
    (root / "a.md").write_text("# A\n\nText.")
    os.mkfifo(root / "pipe.md")  # opening it to read would wait for a writer forever
    result = []
    scanning = threading.Thread(target=lambda: result.append(scan_folder(root, [".md"], MB)), daemon=True)
    scanning.start()
    scanning.join(timeout=20)
    assert result, "the scan blocked on the FIFO"
    assert list(result[0].entries) == ["a.md"]
    assert [(s.rel, s.reason, s.keep_previous) for s in result[0].skipped] == [("pipe.md", "not a regular file", False)]


def test_file_deleted_while_scanning(tmp_path):
    (tmp_path / "gone.md").write_text("# Gone\n\nSoon.")
    (entry,) = os.scandir(tmp_path)  # listed by the walk, then deleted before its stat
    os.remove(entry.path)
    scan = FolderScan()
    _scan_file(scan, tmp_path, entry, "gone.md", MB, None)
    assert scan.skipped[0].reason == "deleted while it was being read"
    assert scan.skipped[0].keep_previous is False


def test_a_file_with_its_known_stat_is_not_read_and_any_edit_is(tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    (root / "a.md").write_text("# A\n\nPlus costs $5.")
    first = scan_folder(root, [".md"], MB)
    known = {"a.md": {"sha256": "sha-from-the-last-sync", "stat": list(first.stats["a.md"])}}
    again = scan_folder(root, [".md"], MB, known)
    assert again.entries["a.md"].data is None and again.entries["a.md"].sha256 == "sha-from-the-last-sync"
    assert read_source(again.entries["a.md"]).text == "# A\n\nPlus costs $5."  # still readable on demand

    time.sleep(0.05)  # past the file system's timestamp tick (the racy case is covered by trusted_stat)
    st = (root / "a.md").stat()
    (root / "a.md").write_text("# A\n\nPlus costs $7.")  # same size
    os.utime(root / "a.md", ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime put back
    edited = scan_folder(root, [".md"], MB, known)
    assert edited.entries["a.md"].data == b"# A\n\nPlus costs $7."  # ctime moved: read and hashed again
    assert edited.entries["a.md"].sha256 != "sha-from-the-last-sync"


@pytest.mark.parametrize("changed_ago_s, trusted", [(60, True), (RACY_NS / 1e9 + 1, True), (RACY_NS / 1e9 - 0.5, False), (0, False)])
def test_only_stats_older_than_the_racy_window_are_trusted(changed_ago_s, trusted):
    now = 10**18
    changed = now - int(changed_ago_s * 1e9)
    scan = FolderScan(stats={"a.md": (10, changed, changed, 7)}, started_ns=now)
    assert (scan.trusted_stat("a.md") == [10, changed, changed, 7]) is trusted


def test_other_types_and_hidden_files_are_ignored(tmp_path):
    root = tmp_path / "kb"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "x.md").write_text("# no")
    (root / "notes.docx").write_bytes(b"PK")
    (root / ".draft.md").write_text("# no")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "a.md").write_text("# A\n\nText.")
    scan = scan_folder(root, [".md"], MB)
    assert list(scan.entries) == ["sub/deeper/a.md"]
    assert scan.ignored == ["notes.docx"]


def test_extensions_match_the_whole_suffix_in_any_case(tmp_path):
    # "md" in the settings means ".md": a file named "readmd" or "x.amd" is not Markdown
    for name in ("a.md", "B.MD", "c.Txt", "readmd", "x.amd", "notes.md.bak"):
        (tmp_path / name).write_text("# A\n\nText.")
    scan = scan_folder(tmp_path, ["md", ".TXT"], MB)
    assert sorted(scan.entries) == ["B.MD", "a.md", "c.Txt"]
    assert sorted(scan.ignored) == ["notes.md.bak", "readmd", "x.amd"]


def test_pdf_pages_and_html_headings(tmp_path):
    pdf = scan_one(tmp_path, "guide.pdf", minimal_pdf("Refunds take 5 business days."))
    assert isinstance(pdf, Source) and "Refunds take 5 business days." in pdf.pages[0]
    (chunk,) = split_source(pdf, ChunkParams())
    assert chunk.metadata["section"] == "Page 1"

    html = b"""<html><head><title>Shipping FAQ</title><script>alert('x')</script></head><body>
    <h1>Shipping FAQ</h1><p>We ship worldwide.</p><h2>Costs</h2><p>Standard costs $5.</p>
    <ul><li>Express costs $15.</li></ul><style>p{}</style></body></html>"""
    src = scan_one(tmp_path, "faq.html", html)
    assert src.title == "Shipping FAQ" and "alert" not in src.text
    chunks = split_source(src, ChunkParams())
    assert [c.metadata["section"] for c in chunks] == ["", "Costs"]
    assert "Express costs $15." in chunks[1].page_content
