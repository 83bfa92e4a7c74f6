"""Sync round trips on real files with the real MiniLM and real FAISS."""

import json
import os
import shutil
import threading
import time

import pytest

from bot.documents import rescan
from bot.errors import KnowledgeBaseError
from bot.retrieval import IndexView
from conftest import clean_build, index_content, write

A = "# Refunds\n\nRefunds take 5 business days.\n\n## Exceptions\n\nGift cards are refunded as a new gift card.\n"
B = "# Shipping\n\nStandard shipping costs $6.95 and takes 3 to 5 days.\n"
C = "Plain text about opening hours: 8:00 to 20:00 Eastern Time."


def sources(kb):
    return sorted(kb.view().sources().items())


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "full-scans"])
def test_add_edit_delete_rename_round_trip(make_kb, embeddings, tmp_path, monkeypatch, journal):
    import bot.journal
    import bot.knowledge

    if not journal:  # as on a system without inotify: every sync stats every file
        monkeypatch.setattr("bot.journal._LIBC", None)
    elif not bot.journal.usable(str(tmp_path)):
        pytest.skip("no inotify journal on this file system")
    narrowed = []
    monkeypatch.setattr(bot.knowledge, "rescan", lambda *a: narrowed.append(a[1]) or rescan(*a))
    kb = make_kb({"refunds.md": A, "sub/shipping.md": B, "hours.txt": C})
    r = kb.sync()
    assert sorted(r.added) == ["hours.txt", "refunds.md", "sub/shipping.md"]
    assert r.chunks_embedded == r.chunks_total == 4
    assert sources(kb) == [("hours.txt", 1), ("refunds.md", 2), ("sub/shipping.md", 1)]

    # unchanged: nothing read again, nothing embedded, no new generation
    kb.embeddings.embedded.clear()
    r = kb.sync()
    assert (r.unchanged, r.chunks_embedded, kb.embeddings.embedded) == (3, 0, [])

    # edit one section of one file: only the changed passage is embedded
    write(kb.settings.kb / "refunds.md", A.replace("5 business days", "7 business days"))
    r = kb.sync()
    assert r.changed == ["refunds.md"] and r.unchanged == 2
    assert kb.embeddings.embedded == ["Refunds\nRefunds take 7 business days."]
    if journal:  # the journal named the one file edited: no other was statted or read
        assert narrowed[-1] == {"refunds.md"} and r.files_read == 1
    assert (r.chunks_embedded, r.chunks_deleted, r.chunks_total) == (1, 1, 4)
    texts = [t for s, t in index_content(kb) if s == "refunds.md"]
    assert any("7 business days" in t for t in texts) and not any("5 business days" in t for t in texts)

    # delete: nothing of the file is left
    (kb.settings.kb / "hours.txt").unlink()
    r = kb.sync()
    assert r.deleted == ["hours.txt"] and r.chunks_deleted == 1
    assert "hours.txt" not in kb.view().sources()

    # rename: new path in, old path out, same count
    os.rename(kb.settings.kb / "sub/shipping.md", kb.settings.kb / "shipping-rates.md")
    r = kb.sync()
    assert r.added == ["shipping-rates.md"] and r.deleted == ["sub/shipping.md"]
    assert sources(kb) == [("refunds.md", 2), ("shipping-rates.md", 1)]

    # no duplicates anywhere, and the result equals a clean build of the folder
    view = kb.view()
    assert len(set(view.ids)) == len(view.ids) == len(view.vs.docstore._dict) == view.vs.index.ntotal
    assert index_content(kb) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)
    assert len(narrowed) == (4 if journal else 0)
    fresh = IndexView(view.vs, lexicon=kb._lexicon)  # the view each sync derived from the one before
    for query in ("refund gift card", "shipping rates", "opening hours"):
        assert view.bm25.top(query, 4) == fresh.bm25.top(query, 4)


def test_unchanged_files_are_not_read_and_same_size_edits_are_found(make_kb, monkeypatch):
    import bot.documents

    monkeypatch.setattr(bot.documents, "RACY_NS", -10**12)  # trust stats at once, not after 2 s
    kb = make_kb({"refunds.md": A, "sub/shipping.md": B, "hours.txt": C})
    assert kb.sync().files_read == 3
    r = kb.sync()
    assert (r.files_read, r.unchanged, r.changed) == (0, 3, [])
    time.sleep(0.05)  # past the file system's timestamp tick
    write(kb.settings.kb / "sub/shipping.md", B.replace("$6.95", "$7.95"))
    r = kb.sync()
    assert (r.files_read, r.changed, r.chunks_embedded) == (1, ["sub/shipping.md"], 1)
    assert any("$7.95" in t for _, t in index_content(kb))


def test_persists_across_restart_and_stores_no_pickle(make_kb):
    kb = make_kb({"refunds.md": A})
    kb.sync()
    again = make_kb()  # a new process would build exactly this
    hit = again.search("how long do refunds take?")
    assert hit.passages[0].source == "refunds.md" and hit.relevant
    gen = again.store.current()
    (seg,) = json.loads((gen / "segments.json").read_text())["segments"]
    assert sorted(p.name for p in gen.iterdir()) == sorted(
        ["files.json", "records.sqlite", "segments.json", f"{seg['name']}.faiss", f"{seg['name']}.json"])
    for path in gen.iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{path.name} looks like a pickle"
    json.loads((gen / f"{seg['name']}.json").read_text())  # plain JSON
    r = again.sync()
    assert r.unchanged == 1 and r.chunks_embedded == 0


def test_bad_files_skip_with_names_and_lose_nothing(make_kb):
    kb = make_kb({"refunds.md": A, "notes.md": B})
    kb.sync()
    folder = kb.settings.kb
    write(folder / "notes.md", b"\x00\x01binary now")  # was good, now unreadable: keep the old version
    write(folder / "empty.md", "")
    write(folder / "bad.pdf", b"%PDF-1.4 broken")
    write(folder / "image.png", b"\x89PNG")
    write(folder / "hours.txt", C)
    r = kb.sync()
    skipped = {s["file"]: s for s in r.skipped}
    assert set(skipped) == {"notes.md", "empty.md", "bad.pdf"}
    assert skipped["notes.md"]["kept_previous"] is True and "binary" in skipped["notes.md"]["reason"]
    assert r.ignored == ["image.png"] and r.added == ["hours.txt"]
    assert sources(kb) == [("hours.txt", 1), ("notes.md", 1), ("refunds.md", 2)]


def test_empty_or_missing_folder_never_wipes_the_index(make_kb):
    kb = make_kb({"refunds.md": A})
    kb.sync()
    (kb.settings.kb / "refunds.md").unlink()
    with pytest.raises(KnowledgeBaseError, match="no readable documents now; the index of 1 files was kept"):
        kb.sync()
    assert len(kb.view()) == 2
    shutil.rmtree(kb.settings.kb)
    with pytest.raises(KnowledgeBaseError, match="does not exist"):
        kb.sync()
    kb._view = None
    assert len(kb.view()) == 2  # reloaded from disk: still whole
    kb.settings.kb.mkdir()
    r = kb.sync(allow_empty=True)
    assert r.deleted == ["refunds.md"] and len(kb.view()) == 0


@pytest.mark.parametrize("crash_in", ["save_generation", "commit", "index"])
def test_crash_mid_sync_leaves_the_live_index_whole(make_kb, monkeypatch, embeddings, tmp_path, crash_in):
    kb = make_kb({"refunds.md": A, "shipping.md": B})
    kb.sync()
    before = index_content(kb)
    write(kb.settings.kb / "hours.txt", C)
    (kb.settings.kb / "shipping.md").unlink()

    import bot.knowledge
    import bot.store

    target = {"save_generation": (bot.knowledge, "save_generation"), "commit": (bot.store.IndexStore, "commit"),
              "index": (__import__("langchain_core.indexing", fromlist=["index"]), "index")}[crash_in]
    monkeypatch.setattr(*target, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("power cut")))
    with pytest.raises(RuntimeError, match="power cut"):
        kb.sync()
    monkeypatch.undo()
    assert index_content(make_kb()) == before  # a fresh reader sees the old generation, whole
    assert not list(kb.store.root.glob("tmp-*"))
    kb.sync()
    assert index_content(kb) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)


def test_disagreeing_records_and_vectors_are_repaired(make_kb, embeddings, tmp_path):
    import sqlite3

    kb = make_kb({"refunds.md": A, "shipping.md": B, "hours.txt": C})
    kb.sync()
    gen = kb.store.current()
    with sqlite3.connect(gen / "records.sqlite") as db:  # damage done outside a sync
        (key,) = db.execute("select key from upsertion_record where group_id = 'refunds.md' limit 1").fetchone()
        db.execute("delete from upsertion_record where key = ?", (key,))
    kb._view = None
    r = kb.sync()
    assert r.repaired == ["refunds.md"]
    assert index_content(kb) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)
    assert kb.sync().repaired == []


def test_records_are_checked_against_vectors_once_per_generation_read_from_disk(make_kb, monkeypatch):
    """A generation this process wrote agrees by construction: the next sync skips the check
    (7 ms at 1,000 files). One read from disk is checked by the sync after the read."""
    import bot.knowledge

    calls = []
    real = bot.knowledge.reconcile
    monkeypatch.setattr(bot.knowledge, "reconcile", lambda *a: calls.append(1) or real(*a))
    kb = make_kb({"refunds.md": A, "shipping.md": B})
    kb.sync()
    (kb.settings.kb / "hours.txt").write_text(C)
    assert kb.sync().added == ["hours.txt"] and calls == []
    kb._view = None
    kb.view()  # as a new process would
    (kb.settings.kb / "hours.txt").write_text(C + " Closed on holidays.")
    assert kb.sync().changed == ["hours.txt"] and calls == [1]


def test_searches_keep_answering_while_a_sync_runs(make_kb):
    kb = make_kb({"refunds.md": A})
    kb.sync()
    for i in range(40):
        write(kb.settings.kb / f"bulk/{i}.md", f"# Topic {i}\n\nFiller text number {i} about warehouses.")
    errors, answers = [], []

    def searcher():
        while not done.is_set():
            try:
                answers.append(kb.search("how long do refunds take").passages[0].source)
            except Exception as err:  # noqa: BLE001 - any error fails the test below
                errors.append(err)

    done = threading.Event()
    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    kb.sync()
    done.set()
    for t in threads:
        t.join()
    assert not errors and answers and set(answers) == {"refunds.md"}
    assert len(kb.view().sources()) == 41


def test_watcher_picks_up_edits_within_seconds(make_kb):
    kb = make_kb({"refunds.md": A}, watch_seconds=0.2)
    kb.sync()
    kb.start_watching()
    try:
        write(kb.settings.kb / "promo.md", "# Promotions\n\nThe spring sale code SPRING25 gives 25% off.")
        deadline = time.monotonic() + 20
        while "promo.md" not in kb.view().sources() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kb.search("spring sale code").passages[0].source == "promo.md"
        (kb.settings.kb / "promo.md").unlink()
        deadline = time.monotonic() + 20
        while "promo.md" in kb.view().sources() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "promo.md" not in kb.view().sources()
    finally:
        kb.stop_watching()


def inotify_fds() -> int:
    def target(fd: str) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # closed since the listing (the listing's own descriptor, for one)
            return ""

    return sum(target(fd) == "anon_inode:inotify" for fd in os.listdir("/proc/self/fd"))


def test_close_gives_back_the_journal_and_keeps_the_index(make_kb):
    """A process that opens many knowledge bases (the eval, a test run) must not run out of inotify
    instances (128 a user by default); a closed one still answers, and syncs with full scans."""
    before = inotify_fds()
    with make_kb({"refunds.md": A}, watch_seconds=0.2) as kb:
        kb.sync()
        kb.start_watching()
        assert inotify_fds() == before + 1
    assert inotify_fds() == before and kb._watcher is None
    assert kb.search("refund").passages[0].source == "refunds.md"
    write(kb.settings.kb / "shipping.md", B)
    assert kb.is_stale()
    assert kb.sync().added == ["shipping.md"]
    assert inotify_fds() == before + 1  # the full scan opened a new journal
    kb.close()
    kb.close()  # twice is harmless
    assert inotify_fds() == before


def test_chunker_change_rebuilds_and_rebuild_flag(make_kb):
    kb = make_kb({"refunds.md": A})
    kb.sync()
    smaller = make_kb(chunk_chars=40, chunk_overlap=0)
    r = smaller.sync()
    assert r.added == ["refunds.md"] and r.chunks_total > 2
    r = smaller.sync(rebuild=True)
    assert r.added == ["refunds.md"] and r.chunks_embedded == r.chunks_total


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "stat-walk"])
def test_sync_and_watcher_see_the_folder_the_same_way(make_kb, tmp_path, monkeypatch, journal):
    if not journal:  # staleness by comparing the folder's stats with the last sync's
        monkeypatch.setattr("bot.journal._LIBC", None)
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "secret.md", "# Secret\n\nNot for the index.")
    kb = make_kb({"refunds.md": A, "big.md": "# Big\n\n" + "x" * 2_000_000}, max_file_mb=1)
    os.symlink(outside / "secret.md", kb.settings.kb / "leak.md")
    os.symlink(outside, kb.settings.kb / "linked-folder")
    kb.sync()
    assert not kb.is_stale()  # else the watcher would re-sync on every poll
    write(kb.settings.kb / "refunds.md", A + "\nMore.")
    assert kb.is_stale()
    kb.sync()  # narrowed to refunds.md where the journal works: its stats must still be the whole folder's
    assert not kb.is_stale() and kb.fingerprint() == kb._synced_fingerprint


@pytest.mark.slow  # 11 s: a second copy of the model, and 24 passages embedded twice
def test_the_sync_benchmark_reports_every_figure(monkeypatch, capsys):
    """bench/sync.py on a small folder (the README quotes it at 1,000 files): it must keep running."""
    import importlib.util
    import json

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_sync", REPO / "bench" / "sync.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr("sys.argv", ["sync.py", "--files", "12", "--repeats", "3", "--json"])
    bench.main()
    report = json.loads(capsys.readouterr().out)
    assert report["full_build"]["passages_embedded"] == 24  # 2 sections a page
    assert report["no_change"]["passages_embedded"] == 0
    edited = report["one_file_edited"]
    assert edited["passages_embedded"] == 2 and len(edited["ratios"]) == 3
    assert edited["ratio_to_embedding_alone"] == edited["ratios"][1] > 0
    assert report["one_file_deleted"]["passages_deleted"] == 2
    assert report["ingestion"]["paired_batches"] == 1 and report["ingestion"]["sentence_transformers_passages_per_s"] > 0
