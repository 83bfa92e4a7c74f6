"""Generations on disk: a sync writes its change as a new segment and links the rest; real FAISS, real MiniLM."""

import json
import os

import pytest

import bot.store
from bot.errors import KnowledgeBaseError
from conftest import clean_build, index_content, write

PAGES = {f"page{i}.md": f"# Page {i}\n\nItem {i} costs {i * 3} dollars and ships in {i} days." for i in range(8)}


def segments(gen):
    return json.loads((gen / "segments.json").read_text())["segments"]


def test_a_one_file_edit_writes_only_that_files_passages(make_kb, embeddings, tmp_path):
    kb = make_kb(PAGES)
    kb.sync()
    first = kb.store.current()
    (base,) = segments(first)
    write(kb.settings.kb / "page3.md", "# Page 3\n\nItem 3 now costs 99 dollars.")
    r = kb.sync()
    gen = kb.store.current()
    old, new = segments(gen)
    assert old["name"] == base["name"] and len(old["dead"]) == r.chunks_deleted == 1
    assert json.loads((gen / f"{new['name']}.json").read_text())["ids"] == [d.id for d in kb.view().docs[-1:]]
    for suffix in (".faiss", ".json"):  # the unchanged segment is the same file, not a copy
        assert os.stat(gen / f"{base['name']}{suffix}").st_ino == os.stat(first / f"{base['name']}{suffix}").st_ino
    expected = clean_build(kb.settings.kb, tmp_path / "clean", embeddings)
    assert index_content(kb) == expected
    assert index_content(make_kb()) == expected  # read back from disk: old segment minus its dead row, plus the new one


def test_removed_rows_past_a_quarter_compact_into_one_segment(make_kb, embeddings, tmp_path):
    kb = make_kb(PAGES)
    kb.sync()
    (kb.settings.kb / "page0.md").unlink()
    kb.sync()
    assert [len(s["dead"]) for s in segments(kb.store.current())] == [1]  # 1 of 8 rows: a delta
    for i in (1, 2):
        (kb.settings.kb / f"page{i}.md").unlink()
    kb.sync()
    (seg,) = segments(kb.store.current())  # 3 of 8 rows removed: rewritten whole
    assert seg["dead"] == [] and len(json.loads((kb.store.current() / f"{seg['name']}.json").read_text())["ids"]) == 5
    assert index_content(make_kb()) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)


def test_segments_do_not_pile_up(make_kb, monkeypatch):
    monkeypatch.setattr(bot.store, "MAX_SEGMENTS", 3)
    kb = make_kb(PAGES)
    kb.sync()
    counts = []
    for n in range(4):
        write(kb.settings.kb / f"new{n}.md", f"# New {n}\n\nNew item {n} costs {n} dollars.")
        kb.sync()
        counts.append(len(segments(kb.store.current())))
    assert counts == [2, 3, 1, 2]
    assert len(index_content(make_kb())) == 12


def test_without_hard_links_unchanged_segments_are_copied(make_kb, monkeypatch, embeddings, tmp_path):
    kb = make_kb(PAGES)
    kb.sync()
    monkeypatch.setattr(bot.store.os, "link", lambda *a: (_ for _ in ()).throw(OSError(95, "Operation not supported")))
    write(kb.settings.kb / "page5.md", "# Page 5\n\nItem 5 is discontinued.")
    kb.sync()
    assert all(p.stat().st_nlink == 1 for p in kb.store.current().glob("seg-*"))
    assert index_content(make_kb()) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)


@pytest.mark.parametrize("damage", ["truncated segment", "dead id it never held", "older format"])
def test_a_damaged_generation_says_so_and_the_next_sync_rebuilds_it(make_kb, embeddings, tmp_path, damage):
    kb = make_kb(PAGES)
    kb.sync()
    gen = kb.store.current()
    (seg,) = segments(gen)
    if damage == "truncated segment":
        (gen / f"{seg['name']}.json").write_text('{"ids": [')
    elif damage == "dead id it never held":
        (gen / "segments.json").write_text(json.dumps({"version": 2, "segments": [{**seg, "dead": ["nope"]}]}))
    else:  # a generation written by supportbot before segments
        for p in gen.glob("seg*"):
            p.unlink()
        (gen / "passages.json").write_text("{}")
    with pytest.raises(KnowledgeBaseError, match="older supportbot" if damage == "older format" else "damaged"):
        make_kb().view()
    kb._view = None
    make_kb().sync()
    assert index_content(make_kb()) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)


def test_a_segment_lost_from_the_live_generation_is_written_again_from_memory(make_kb, embeddings, tmp_path):
    kb = make_kb(PAGES)
    kb.sync()
    kb.view()
    (seg,) = segments(kb.store.current())
    (kb.store.current() / f"{seg['name']}.faiss").unlink()  # damage after the view was loaded
    write(kb.settings.kb / "page2.md", "# Page 2\n\nItem 2 is back in stock.")
    kb.sync()
    assert len(segments(kb.store.current())) == 1  # written whole, not linked to the lost file
    assert index_content(make_kb()) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)


def _edit_in_place(files):
    files["a.md"]["stat"][1] += 1  # the same dict and list objects, changed


@pytest.mark.parametrize("change", [
    lambda files: files.update({"b.md": {"sha256": "f" * 64, "chunks": 1}}),  # a file added
    lambda files: files.pop("a.md"),  # a file gone
    lambda files: files.update({"a.md": {**files["a.md"], "chunks": 7}}),  # an entry replaced
    _edit_in_place,  # an entry changed without being replaced: its cached text must not survive
    lambda files: files.update({"ünïcode/ñame \"quoted\".md": {"sha256": "0" * 64, "chunks": 2}}),
])
def test_manifest_encoder_writes_exactly_what_json_dumps_of_the_whole_would(change):
    files = {"z.md": {"sha256": "1" * 64, "chunks": 2, "stat": [10, 2**62, 2**62, 5]},
             "a.md": {"sha256": "2" * 64, "chunks": 3, "stat": [20, 2**61, 2**61, 6]}}
    encoder = bot.store.ManifestEncoder()

    def expected(manifest):
        whole = {"files": dict(sorted(manifest.files.items())), "signature": manifest.signature,
                 "version": bot.store.FORMAT_VERSION}
        return json.dumps(whole, ensure_ascii=False).encode()

    first = bot.store.Manifest("chunker-v1:900:150", files)
    assert encoder.encode(first) == expected(first)
    change(files)
    second = bot.store.Manifest("chunker-v1:800:100", files)
    assert encoder.encode(second) == expected(second)
    assert json.loads(encoder.encode(second))["files"] == files
