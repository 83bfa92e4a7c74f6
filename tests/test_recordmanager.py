"""The sqlite3 record manager against LangChain's SQLRecordManager: same answers, same file."""

import sqlite3
import time

import pytest
from langchain_classic.indexes import SQLRecordManager
from langchain_core.documents import Document
from langchain_core.indexing import InMemoryRecordManager, index
from langchain_core.vectorstores import InMemoryVectorStore
from sqlalchemy import create_engine

from bot.recordmanager import CHUNK, SqliteRecordManager

NS = "supportbot/faiss"


def library(path):
    rm = SQLRecordManager(NS, engine=create_engine(f"sqlite:///{path}"))
    rm.create_schema()
    return rm


def ours(path):
    rm = SqliteRecordManager(NS, path)
    rm.create_schema()
    return rm


def fill(rm):
    rm.update([f"k{i}" for i in range(30)], group_ids=["a.md"] * 20 + ["b.md"] * 10)
    time.sleep(0.01)  # the database clock counts milliseconds
    middle = rm.get_time()
    time.sleep(0.01)
    rm.update(["k0", "k25", "new"], group_ids=["b.md", "b.md", None])  # k0 moves to b.md
    rm.delete_keys(["k1", "k2", "absent"])
    return middle


QUESTIONS = [  # (name, question): asked of a manager after `fill`, with its `middle` time
    ("all", lambda rm, t: sorted(rm.list_keys())),
    ("group a", lambda rm, t: sorted(rm.list_keys(group_ids=["a.md"]))),
    ("groups a+b", lambda rm, t: sorted(rm.list_keys(group_ids=["a.md", "b.md"]))),
    ("before", lambda rm, t: sorted(rm.list_keys(before=t))),
    ("after", lambda rm, t: sorted(rm.list_keys(after=t))),
    ("before, group b", lambda rm, t: sorted(rm.list_keys(before=t, group_ids=["b.md"]))),
    ("limit", lambda rm, t: len(rm.list_keys(limit=5))),
    ("exists", lambda rm, t: rm.exists(["k0", "k1", "new", "nope", "k29"])),
]


@pytest.mark.parametrize("name,question", QUESTIONS, ids=[q[0] for q in QUESTIONS])
def test_answers_as_sqlrecordmanager_does(tmp_path, name, question):
    theirs, mine = library(tmp_path / "lib.sqlite"), ours(tmp_path / "ours.sqlite")
    t_lib, t_ours = fill(theirs), fill(mine)
    assert question(mine, t_ours) == question(theirs, t_lib)
    assert question(mine, t_ours) not in ([], 0, [False] * 5)  # every question has a real answer to compare


@pytest.mark.parametrize("writer,reader", [(library, ours), (ours, library)], ids=["library->ours", "ours->library"])
def test_reads_the_file_the_other_wrote(tmp_path, writer, reader):
    # generations written before this record manager existed must keep working, and back
    path = tmp_path / "records.sqlite"
    fill(writer(path))
    again = reader(path)
    assert sorted(again.list_keys(group_ids=["b.md"])) == sorted(["k0"] + [f"k{i}" for i in range(20, 30)])
    again.update(["k3"], group_ids=["b.md"])  # an upsert onto a row the other one wrote
    assert len(again.list_keys(group_ids=["b.md"])) == 12 and len(again.list_keys()) == 29


def test_more_keys_than_one_statement_may_bind(tmp_path):
    rm = ours(tmp_path / "r.sqlite")
    rm._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # as SQLite builds before 3.32 do
    keys = [f"k{i}" for i in range(3 * CHUNK + 7)]
    groups = [f"g{i % (2 * CHUNK + 3)}.md" for i in range(len(keys))]  # more groups than one statement binds
    rm.update(keys, group_ids=groups)
    assert all(rm.exists(keys)) and len(rm.list_keys()) == len(keys)
    assert sorted(rm.list_keys(group_ids=groups)) == sorted(keys)  # each group named up to twice
    named = sorted(set(groups))[1:] + ["absent.md"]  # all groups but one
    assert sorted(rm.list_keys(group_ids=named)) == sorted(k for k, g in zip(keys, groups) if g in named)
    assert len(rm.list_keys(group_ids=groups, limit=CHUNK + 10)) == CHUNK + 10
    rm.delete_keys(keys[5:])
    assert sorted(rm.list_keys()) == sorted(keys[:5])


def test_a_failed_update_writes_nothing(tmp_path):
    rm = ours(tmp_path / "r.sqlite")
    with pytest.raises(ValueError):
        rm.update(["a", "b"], group_ids=["x.md"])
    with pytest.raises(AssertionError, match="Time sync"):
        rm.update(["a"], group_ids=["x.md"], time_at_least=rm.get_time() + 3600)
    assert rm.list_keys() == []


def test_langchain_index_behaves_as_with_the_reference_manager(tmp_path):
    # index() with incremental cleanup: an edit replaces the source's passages, the rest stay
    def run(rm):
        vs = InMemoryVectorStore(embedding=_Embed())
        docs = [Document(page_content=f"passage {i}", metadata={"source": f"{i % 3}.md"}) for i in range(9)]
        first = index(docs, rm, vs, cleanup="incremental", source_id_key="source", key_encoder="sha256")
        edit = [Document(page_content="edited", metadata={"source": "0.md"})]
        second = index(edit, rm, vs, cleanup="incremental", source_id_key="source", key_encoder="sha256")
        return first, second, sorted(v["text"] for v in vs.store.values())

    mine = run(ours(tmp_path / "r.sqlite"))
    assert mine == run(InMemoryRecordManager(NS)) == run(library(tmp_path / "lib.sqlite"))
    assert mine[1] == {"num_added": 1, "num_updated": 0, "num_skipped": 0, "num_deleted": 3}


def test_runs_within_one_millisecond_still_clean_up(tmp_path):
    # SQLite's own clock (SQLRecordManager's) counts milliseconds: an edit indexed in the same
    # millisecond as the first run left the old passages behind. Each answer here is later than
    # every record, and never earlier than the last answer.
    rm = ours(tmp_path / "r.sqlite")
    times = [rm.get_time()]
    for i in range(50):
        rm.update([f"k{i}"], group_ids=["a.md"])
        times.append(rm.get_time())
        assert rm.list_keys(before=times[-1], group_ids=["a.md"])[-1:] == [f"k{i}"]
    assert times == sorted(set(times))


class _Embed:
    def embed_documents(self, texts):
        return [[float(len(t)), 1.0] for t in texts]

    def embed_query(self, text):
        return [float(len(text)), 1.0]
