"""The index in PostgreSQL + pgvector (bot/pgstore.py) on a real server (bot/pgserver.py), with the
real MiniLM: every promise of `sync`, two bot processes on one database, the sync lock, readers
during a sync, and the server going away and coming back.

Needs the engines extra (`pip install -e '.[engines]'`): without it these skip, except in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from bot.config import Settings
from bot.errors import KnowledgeBaseError
from conftest import REPO, CountingEmbeddings, clean_build, free_port, index_content, write

pytestmark = [pytest.mark.engines, pytest.mark.slow]

A = "# Refunds\n\nRefunds take 5 business days.\n\n## Exceptions\n\nGift cards are refunded as a new gift card.\n"
B = "# Shipping\n\nStandard shipping costs $6.95 and takes 3 to 5 days.\n"
C = "Plain text about opening hours: 8:00 to 20:00 Eastern Time."


def kb_settings(folder, data, url, table, **store) -> Settings:
    settings = Settings(kb=folder, data_dir=data)
    settings.store.url, settings.store.table = url, table
    for key, value in store.items():
        setattr(settings.store, key, value)
    return settings.validate()


@pytest.fixture
def make_pg(tmp_path, embeddings, postgres):
    """make_pg(files, folder="kb", **store) -> PGKnowledgeBase over tmp_path/folder; every one made
    in a test shares one fresh table (so two of them are two bot processes on one index)."""
    from bot.pgstore import PGKnowledgeBase

    table, made = f"t_{uuid.uuid4().hex[:12]}", []

    def make(files=None, folder="kb", url=None, **store):
        kb_dir = tmp_path / folder
        kb_dir.mkdir(exist_ok=True)
        for rel, content in (files or {}).items():
            write(kb_dir / rel, content)
        settings = kb_settings(kb_dir, tmp_path / "data", url or postgres.url, table, **store)
        made.append(PGKnowledgeBase(settings, CountingEmbeddings(embeddings)))
        return made[-1]

    yield make
    for kb in made:
        kb.close()


def sources(kb):
    return sorted(kb.view().sources().items())


def conninfo(pg) -> str:
    return f"host=127.0.0.1 port={pg.port} user=postgres dbname=supportbot"


def test_add_edit_delete_rename_match_a_clean_build(make_pg, embeddings, tmp_path):
    kb = make_pg({"refunds.md": A, "sub/shipping.md": B, "hours.txt": C})
    r = kb.sync()
    assert sorted(r.added) == ["hours.txt", "refunds.md", "sub/shipping.md"]
    assert r.chunks_embedded == r.chunks_total == 4
    assert sources(kb) == [("hours.txt", 1), ("refunds.md", 2), ("sub/shipping.md", 1)]

    # unchanged: nothing embedded, no new generation
    kb.embeddings.embedded.clear()
    again = kb.sync()
    assert (again.unchanged, again.chunks_embedded, kb.embeddings.embedded) == (3, 0, [])
    assert again.generation == r.generation

    # edit one section of one file: only the changed passage is embedded
    write(kb.settings.kb / "refunds.md", A.replace("5 business days", "7 business days"))
    r = kb.sync()
    assert r.changed == ["refunds.md"] and r.unchanged == 2
    assert kb.embeddings.embedded == ["Refunds\nRefunds take 7 business days."]
    assert (r.chunks_embedded, r.chunks_deleted, r.chunks_total) == (1, 1, 4)
    found = kb.search("how long do refunds take")
    assert found.relevant and "7 business days" in found.passages[0].text
    assert not any("5 business days" in p.text for p in found.passages)

    (kb.settings.kb / "hours.txt").unlink()
    r = kb.sync()
    assert r.deleted == ["hours.txt"] and r.chunks_deleted == 1 and "hours.txt" not in kb.view().sources()

    os.rename(kb.settings.kb / "sub/shipping.md", kb.settings.kb / "shipping-rates.md")
    r = kb.sync()
    assert r.added == ["shipping-rates.md"] and r.deleted == ["sub/shipping.md"]
    assert sources(kb) == [("refunds.md", 2), ("shipping-rates.md", 1)]

    view = kb.view()
    assert len(set(view.ids)) == len(view.ids) == 3
    assert index_content(kb) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)  # what FAISS builds


def test_bad_files_keep_their_last_version_and_an_empty_folder_never_wipes(make_pg):
    kb = make_pg({"refunds.md": A, "notes.md": B})
    kb.sync()
    folder = kb.settings.kb
    write(folder / "notes.md", b"\x00\x01binary now")
    write(folder / "empty.md", "")
    write(folder / "hours.txt", C)
    r = kb.sync()
    skipped = {s["file"]: s for s in r.skipped}
    assert set(skipped) == {"notes.md", "empty.md"} and skipped["notes.md"]["kept_previous"] is True
    assert sources(kb) == [("hours.txt", 1), ("notes.md", 1), ("refunds.md", 2)]

    for name in ("refunds.md", "notes.md", "empty.md", "hours.txt"):
        (folder / name).unlink()
    with pytest.raises(KnowledgeBaseError, match="no readable documents now; the index of 3 files was kept"):
        kb.sync()
    assert len(kb.view()) == 4
    r = kb.sync(allow_empty=True)
    assert sorted(r.deleted) == ["hours.txt", "notes.md", "refunds.md"] and len(kb.view()) == 0


def test_cost_is_proportional_to_the_change(make_pg):
    files = {f"topics/{i:02d}.md": f"# Topic {i}\n\nWarehouse {i} ships parcels on weekday {i}." for i in range(30)}
    kb = make_pg(files)
    assert kb.sync().chunks_embedded == 30
    kb.embeddings.embedded.clear()
    write(kb.settings.kb / "topics/07.md", "# Topic 7\n\nWarehouse 7 ships parcels on Sundays now.")
    r = kb.sync()
    assert r.changed == ["topics/07.md"] and r.unchanged == 29 and r.chunks_embedded == 1
    assert kb.embeddings.embedded == ["Topic 7\nWarehouse 7 ships parcels on Sundays now."]
    assert "Sundays" in kb.search("which warehouse ships on sundays").passages[0].text
    rebuilt = kb.sync(rebuild=True)  # the one way to embed everything again
    assert rebuilt.chunks_total == 30 and len(kb.embeddings.embedded) == 31


def test_two_processes_share_one_index(make_pg, postgres, tmp_path):
    first = make_pg({"refunds.md": A, "shipping.md": B})
    second = make_pg()  # another bot process on the same folder and database
    first.sync()
    assert second.search("shipping cost").passages[0].source == "shipping.md"
    write(second.settings.kb / "shipping.md", B.replace("$6.95", "$8.50"))
    r = second.sync()
    assert r.changed == ["shipping.md"]
    assert "$8.50" in first.search("how much is standard shipping").passages[0].text  # no sync of its own
    assert first.view().generation == r.generation
    first.embeddings.embedded.clear()
    assert first.sync().chunks_embedded == 0 and first.embeddings.embedded == []

    # a real second process: the command line, on the same table
    env = {**os.environ, "SUPPORTBOT_STORE_URL": postgres.url, "SUPPORTBOT_STORE_TABLE": first.settings.store.table}
    out = subprocess.run([sys.executable, "-m", "bot.cli", "search", "how much is standard shipping", "--no-sync",
                          "--json", "--kb", str(first.settings.kb), "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert out.returncode == 0, out.stderr
    assert "$8.50" in json.loads(out.stdout)["passages"][0]["text"]


def test_one_syncer_at_a_time(make_pg, postgres):
    import psycopg

    from bot.pgindex import lock_key

    kb = make_pg({"refunds.md": A})
    kb.store.connect()
    done = []
    with psycopg.connect(conninfo(postgres), autocommit=True) as other:  # another process's sync, holding the lock
        key = lock_key(f"supportbot:{kb.settings.store.table}")
        other.execute("SELECT pg_advisory_lock(%s)", (key,))
        waiting = threading.Thread(target=lambda: done.append(kb.sync()))
        waiting.start()
        time.sleep(1.5)
        assert waiting.is_alive() and not done
        other.execute("SELECT pg_advisory_unlock(%s)", (key,))
        waiting.join(60)
        assert done and done[0].added == ["refunds.md"]

        other.execute("SELECT pg_advisory_lock(%s)", (key,))
        impatient = make_pg(lock_seconds=0.3)
        with pytest.raises(KnowledgeBaseError, match="another sync has held the lock"):
            impatient.sync()

    # two syncs at once, from two processes: one does the work, the other finds nothing left
    write(kb.settings.kb / "hours.txt", C)
    both, errors = [], []
    twins = [kb, make_pg()]

    def run(k):
        try:
            both.append(k.sync())
        except Exception as err:  # noqa: BLE001 - failed below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(k,)) for k in twins]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(len(r.added) for r in both) == [0, 1]
    assert sources(kb) == [("hours.txt", 1), ("refunds.md", 2)]


def page(i: int, version: str) -> str:
    return f"# Warehouse {i}\n\nWarehouse {i} shipping policy, {version} edition: parcels leave on day {i}."


def test_readers_never_see_a_half_done_sync(make_pg):
    """Plain index() into PGVectorStore adds before it deletes: searches during a sync saw a file's
    old and new passages together. Here each search sees one generation, whole."""
    n = 24
    writer = make_pg({f"w{i:02d}.md": page(i, "alpha") for i in range(n)})
    writer.sync()
    reader = make_pg()
    for i in range(n):
        write(writer.settings.kb / f"w{i:02d}.md", page(i, "omega"))
    seen, bad, errors = [], [], []
    done = threading.Event()

    def read():
        while not done.is_set():
            try:
                result = reader.search("warehouse shipping policy edition parcels", k=8)
                versions = {"alpha" if "alpha" in p.text else "omega" for p in result.passages}
                keys = [p.source for p in result.passages]
                view = reader.view()
                view_versions = {"alpha" if "alpha" in d.page_content else "omega" for d in view.docs}
            except Exception as err:  # noqa: BLE001 - failed below
                errors.append(err)
                return
            seen.append(versions)
            if len(versions) != 1 or len(set(keys)) != len(keys) or len(keys) != 8 or len(view) != n \
                    or len(view_versions) != 1:
                bad.append((versions, keys, len(view), view_versions))

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    writer.sync()
    time.sleep(0.3)
    done.set()
    for t in threads:
        t.join(30)
    assert not errors and not bad
    assert {"alpha"} in seen and {"omega"} in seen and len(seen) > 10


@pytest.mark.parametrize("dies_in", ["embedding", "publish"])
def test_a_sync_that_dies_midway_leaves_the_live_index_whole(make_pg, embeddings, tmp_path, monkeypatch, dies_in):
    kb = make_pg({"refunds.md": A, "shipping.md": B})
    kb.sync()
    before = index_content(kb)
    write(kb.settings.kb / "hours.txt", C)
    write(kb.settings.kb / "refunds.md", A.replace("5 business", "9 business"))
    (kb.settings.kb / "shipping.md").unlink()
    boom = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("power cut"))  # noqa: E731
    if dies_in == "embedding":
        monkeypatch.setattr(kb.embeddings, "embed_documents", boom)
    else:
        monkeypatch.setattr(type(kb.store), "publish", boom)
    with pytest.raises(RuntimeError, match="power cut"):
        kb.sync()
    monkeypatch.undo()
    assert index_content(make_pg()) == before  # another process sees the old generation, whole
    r = kb.sync()
    assert index_content(kb) == clean_build(kb.settings.kb, tmp_path / "clean", embeddings)
    assert r.chunks_total == 3 and kb.sync().repaired == []


def test_the_database_going_away_and_coming_back(engines_extra, embeddings, tiny_base, tmp_path):
    """A short message (never a trace) while PostgreSQL is down; answers resume by themselves."""
    from bot.app import build_bot
    from bot.pgserver import LocalPostgres
    from conftest import load_tiny
    from ui.format import customer_error
    from ui.page import ChatPage

    kb_dir = tmp_path / "kb"
    write(kb_dir / "refunds.md", A)
    with LocalPostgres() as pg:
        settings = kb_settings(kb_dir, tmp_path / "data", pg.url, "supportbot")
        settings.model.name, settings.model.max_new_tokens = str(tiny_base), 8
        settings.adapters_dir = tmp_path / "adapters"
        settings.adapters_dir.mkdir()
        bot = build_bot(settings, embeddings, loaded=load_tiny(tiny_base))
        page = ChatPage(bot)
        kb = bot.kb
        try:
            kb.sync()
            assert kb.search("how long do refunds take").relevant and len(kb.view()) == 2
            pg.stop()
            with pytest.raises(KnowledgeBaseError, match="cannot be reached right now") as caught:
                kb.search("how long do refunds take")
            assert f"127.0.0.1:{pg.port}" in caught.value.hint
            assert customer_error(caught.value) == ("⚠️ The knowledge base's database cannot be reached right now. "
                                                    "Try again in a minute.")
            *_, (shown, _) = page.respond("How long do refunds take?", [])
            assert "cannot be reached right now" in shown[-1]["content"]
            assert len(kb.view()) == 2  # the last passages read: small talk and the team page go on
            with pytest.raises(KnowledgeBaseError, match="cannot be reached"):
                kb.sync()
            pg.start()
            assert kb.search("how long do refunds take").relevant  # the same objects, no restart
            *_, (shown, _) = page.respond("How long do refunds take?", [])
            assert "cannot be reached" not in shown[-1]["content"]
            write(kb_dir / "hours.txt", C)
            assert kb.sync().added == ["hours.txt"]
        finally:
            kb.close()


def test_the_command_line_says_what_to_do_when_the_database_is_down(engines_extra, tmp_path, capsys, monkeypatch):
    from bot.cli import main

    write(tmp_path / "kb" / "refunds.md", A)
    monkeypatch.setenv("SUPPORTBOT_STORE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/supportbot")
    assert main(["sync", "--kb", str(tmp_path / "kb"), "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "error: the knowledge base's database cannot be reached right now\n  -> try again in a minute; is " \
           "PostgreSQL at 127.0.0.1:" in err
    assert "Traceback" not in err
