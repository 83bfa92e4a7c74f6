"""The PostgreSQL side of `bot.pgstore`: tables, the sync lock, generations, and the search query.

Tables, named after `store.table` (T):
    T           PGVectorStore's table (langchain-postgres): id, content, embedding, metadata JSON, plus
                source, born, died (the generations a passage is visible in: born <= live < died),
                lex (its BM25 terms, `bot.lexical.tokenize`) and tsv (those terms as a tsvector)
    T_state     one row: live (the published generation), pending (the one a sync is writing),
                dirty (a sync began and did not publish), the chunker signature, and the passage
                count and total term count of the live generation (BM25's N and average length)
    T_files     the live file list: path, sha256, passage count
    T_terms     BM25's postings (passage, term, count), written by a trigger from tsv
    upsertion_record  LangChain's SQLRecordManager, namespace "supportbot/T"

A sync writes its passages with born = pending and marks the ones it removes died = pending; both
are invisible to readers, who filter on live inside each search statement. One transaction then
publishes: the file list and `live = pending`. A trigger refuses writes stamped with any other
generation, so a sync that lost the lock (its connection dropped) cannot leak rows into a later one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time

from bot.errors import KnowledgeBaseError

log = logging.getLogger(__name__)

NEVER = 2**62  # `died` of a passage nothing has removed
SETUP_LOCK = "supportbot:setup"  # creating tables (the record manager's is shared by every index)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL with the psycopg 3 driver (a bare postgresql:// would mean psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def unreachable(err: BaseException) -> bool:
    """Whether `err` says the server cannot be talked to (down, restarting, network), not that a
    statement was wrong."""
    import psycopg
    import sqlalchemy.exc as sa

    if isinstance(err, sa.DBAPIError) and err.connection_invalidated:
        return True
    orig = getattr(err, "orig", None) or err
    if isinstance(orig, (psycopg.OperationalError, psycopg.InterfaceError)):
        # no SQLSTATE: the client could not talk to it; 08: connection exception; 57P: shutting
        # down or starting up. Others (a lock timeout, a deadlock) are a statement's failure.
        state = getattr(orig, "sqlstate", None)
        return state is None or state.startswith(("08", "57P"))
    return isinstance(orig, (ConnectionError, TimeoutError))


class PGIndex:
    def __init__(self, url: str, table: str, dim: int, embeddings, lock_seconds: float = 600.0):
        from sqlalchemy.engine import make_url

        self.url, self.table, self.dim, self.lock_seconds = engine_url(url), table, dim, lock_seconds
        parsed = make_url(self.url)
        self.where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
        self.root = f"{parsed.render_as_string(hide_password=True)} (table {table})"  # what `sync` prints
        self.embeddings = embeddings
        self.namespace = f"supportbot/{table}"
        self._engine = self._pg = self.vs = self.rm = None
        self._connecting = threading.Lock()

    # ------------------------------------------------------------------ connections
    @contextlib.contextmanager
    def guard(self):
        """Database errors as KnowledgeBaseError: a down server in words a customer may read (the
        page shows the message and the hint's first clause), the rest for the operator."""
        import sqlalchemy.exc as sa

        try:
            yield
        except KnowledgeBaseError:
            raise
        except Exception as err:
            reason = " ".join(str(getattr(err, "orig", None) or err).split())[:300]
            if unreachable(err):
                log.debug("PostgreSQL at %s: %s", self.where, reason)  # the error says it; the CLI prints it once
                raise KnowledgeBaseError(
                    "the knowledge base's database cannot be reached right now",
                    f"try again in a minute; is PostgreSQL at {self.where} running, and store.url right? ({reason})",
                ) from None
            if isinstance(err, sa.DBAPIError):
                raise KnowledgeBaseError(f"PostgreSQL refused an index operation: {reason}",
                                         "check store.url's user rights and that pgvector is installed") from None
            raise

    def connect(self) -> None:
        """Engines, tables and the record manager, once per process (lazily: the first search or sync)."""
        if self.rm is not None:
            return
        with self._connecting:
            if self.rm is None:
                self._connect()

    def _connect(self) -> None:
        from langchain_classic.indexes import SQLRecordManager
        from langchain_postgres import PGEngine, PGVectorStore
        from sqlalchemy import create_engine

        # pre-ping: after a server restart the pooled connections are dead; each is tested and
        # replaced on checkout, so answers resume by themselves
        args = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
        with self.guard():
            engine = self._engine or create_engine(self.url, pool_size=4, **args)
            self._engine = engine
            self._pg = self._pg or PGEngine.from_connection_string(self.url, **args)
            self._setup()
            self.vs = PGVectorStore.create_sync(
                engine=self._pg, embedding_service=self.embeddings, table_name=self.table,
                metadata_columns=["source", "born", "died", "lex", "lex_len"], metadata_json_column="langchain_metadata")
            rm = SQLRecordManager(self.namespace, engine=engine)
            self.rm = rm

    def _setup(self) -> None:
        from langchain_postgres import Column

        t = self.table
        with self._engine.connect() as c:
            c.exec_driver_sql("SELECT pg_advisory_lock(%(k)s)", {"k": lock_key(SETUP_LOCK)})
            try:
                c.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
                exists = c.exec_driver_sql("SELECT to_regclass(%(t)s) IS NOT NULL", {"t": t}).scalar()
                c.commit()
                if not exists:
                    # PGVectorStore's own table; the id is text (the record manager's sha256 keys)
                    self._pg.init_vectorstore_table(
                        t, self.dim, id_column=Column("langchain_id", "TEXT"),
                        metadata_columns=[Column("source", "TEXT"), Column("born", "BIGINT"), Column("died", "BIGINT"),
                                          Column("lex", "TEXT"), Column("lex_len", "INTEGER")])
                    for sql in _schema(t):
                        c.exec_driver_sql(sql)
                    c.commit()
                from langchain_classic.indexes import SQLRecordManager

                SQLRecordManager(self.namespace, engine=self._engine).create_schema()  # under this lock: no race
                dim = c.exec_driver_sql("SELECT atttypmod FROM pg_attribute WHERE attrelid = %(t)s::regclass "
                                        "AND attname = 'embedding'", {"t": t}).scalar()
                c.commit()
            finally:
                c.exec_driver_sql("SELECT pg_advisory_unlock(%(k)s)", {"k": lock_key(SETUP_LOCK)})
                c.commit()
        if dim != self.dim:
            raise KnowledgeBaseError(f"table {t} holds {dim}-dimensional vectors, the embedding model makes {self.dim}",
                                     "set store.table to a new name for this model, or drop the table")

    def close(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg._run_as_sync(self._pg.close())
        if self._engine is not None:
            self._engine.dispose()
        self._engine = self._pg = self.vs = self.rm = None
        self._connecting = threading.Lock()

    # ------------------------------------------------------------------ the writer's side
    @contextlib.contextmanager
    def writer(self):
        """One syncer at a time across processes: a session advisory lock on a connection of its own,
        which also publishes (so a sync whose lock connection died cannot publish)."""
        self.connect()
        key = lock_key(f"supportbot:{self.table}")
        with self.guard(), self._engine.connect() as c:
            deadline = time.monotonic() + self.lock_seconds
            while not c.exec_driver_sql("SELECT pg_try_advisory_lock(%(k)s)", {"k": key}).scalar():
                c.commit()
                if time.monotonic() > deadline:
                    raise KnowledgeBaseError(
                        f"another sync has held the lock of {self.root} for {self.lock_seconds:.0f} s",
                        "wait for it to finish, or stop the other supportbot process")
                time.sleep(0.1)
            c.commit()
            try:
                yield c
            finally:
                try:
                    c.rollback()
                    c.exec_driver_sql("SELECT pg_advisory_unlock(%(k)s)", {"k": key})
                    c.commit()
                except Exception:  # a broken connection: closing it ends the session, and the lock with it
                    c.invalidate()

    def state(self, c) -> dict:
        row = c.exec_driver_sql(f"SELECT live, pending, dirty, signature, n, total_len FROM {self.table}_state").one()
        c.commit()
        return dict(row._mapping)

    def manifest(self, c) -> dict[str, dict]:
        rows = c.exec_driver_sql(f"SELECT rel, sha256, chunks FROM {self.table}_files").all()
        c.commit()
        return {rel: {"sha256": sha, "chunks": chunks} for rel, sha, chunks in rows}

    def records(self) -> int:
        with self._engine.connect() as c:
            return c.exec_driver_sql("SELECT count(*) FROM upsertion_record WHERE namespace = %(ns)s",
                                     {"ns": self.namespace}).scalar()

    def begin(self, c) -> int:
        """A new generation to write: from now on only writes stamped with it are accepted."""
        gen = c.exec_driver_sql(f"UPDATE {self.table}_state SET pending = nextval('{self.table}_gen'), dirty = true "
                                f"RETURNING pending").scalar()
        c.commit()
        return gen

    def recover(self, c, live: int) -> dict[str, str]:
        """Undo what an unpublished sync left (its new rows, its removal marks) and return the live
        passages, id -> source, for `bot.pgstore` to check against the record manager."""
        t = self.table
        c.exec_driver_sql(f"DELETE FROM {t} WHERE born > %(live)s", {"live": live})
        c.exec_driver_sql(f"UPDATE {t} SET died = %(never)s WHERE died > %(live)s AND died <> %(never)s",
                          {"live": live, "never": NEVER})
        rows = c.exec_driver_sql(f"SELECT langchain_id, source FROM {t} WHERE born <= %(live)s AND died > %(live)s",
                                 {"live": live}).all()
        c.commit()
        return dict(rows)

    def existing(self, ids: list[str]) -> set[str]:
        with self._engine.connect() as c:
            rows = c.exec_driver_sql(f"SELECT langchain_id FROM {self.table} WHERE langchain_id = ANY(%(ids)s::text[])",
                                     {"ids": list(ids)}).all()
        return {r[0] for r in rows}

    def mark(self, ids: list[str], gen: int, dead: bool) -> int:
        """Removed in generation `gen` (dead), or back in it (a passage removed and re-added in one sync)."""
        if not ids:
            return 0
        t = self.table
        old, new = (NEVER, gen) if dead else (gen, NEVER)
        with self._engine.begin() as c:
            return c.exec_driver_sql(
                f"UPDATE {t} SET died = %(new)s WHERE langchain_id = ANY(%(ids)s::text[]) AND died = %(old)s "
                f"AND (SELECT pending FROM {t}_state) = %(gen)s",
                {"ids": list(ids), "old": old, "new": new, "gen": gen}).rowcount

    def refresh(self, ids: list[str], vectors: list[list[float]], gen: int) -> None:
        """A rebuild's fresh vectors for passages it removed and adds again (same id: same text)."""
        with self._engine.begin() as c:
            c.exec_driver_sql(f"UPDATE {self.table} SET embedding = %(v)s::vector, died = %(never)s "
                              f"WHERE langchain_id = %(id)s AND died = %(gen)s",
                              [{"id": i, "v": _vector(v), "never": NEVER, "gen": gen} for i, v in zip(ids, vectors)])

    def publish(self, c, gen: int, signature: str, files: dict[str, dict], gone: list[str], whole: bool) -> dict:
        """One transaction: the file list and `live = gen`. Then the passages no generation shows any
        more are deleted (statements already running still see them: MVCC)."""
        t = self.table
        if whole:
            c.exec_driver_sql(f"DELETE FROM {t}_files")
        elif gone:
            c.exec_driver_sql(f"DELETE FROM {t}_files WHERE rel = ANY(%(gone)s::text[])", {"gone": gone})
        if files:
            c.exec_driver_sql(f"INSERT INTO {t}_files (rel, sha256, chunks) VALUES (%(rel)s, %(sha256)s, %(chunks)s) "
                              f"ON CONFLICT (rel) DO UPDATE SET sha256 = excluded.sha256, chunks = excluded.chunks",
                              [{"rel": rel, "sha256": m["sha256"], "chunks": m["chunks"]} for rel, m in files.items()])
        row = c.exec_driver_sql(
            f"UPDATE {t}_state SET live = %(gen)s, dirty = false, signature = %(sig)s, (n, total_len) = "
            f"(SELECT count(*), coalesce(sum(lex_len), 0) FROM {t} WHERE born <= %(gen)s AND died > %(gen)s) "
            f"WHERE pending = %(gen)s RETURNING live, n", {"gen": gen, "sig": signature}).one_or_none()
        if row is None:
            c.rollback()
            raise KnowledgeBaseError("this sync lost its lock to another one; nothing of it was published",
                                     "run sync again")
        c.commit()
        c.exec_driver_sql(f"DELETE FROM {t} WHERE died <= %(gen)s OR born > %(gen)s", {"gen": gen})
        c.commit()
        return dict(row._mapping)

    def kill_all(self, c, gen: int) -> int:
        """A rebuild: every live passage removed in `gen` (those added again come back, re-embedded)."""
        n = c.exec_driver_sql(f"UPDATE {self.table} SET died = %(gen)s WHERE died = %(never)s",
                              {"gen": gen, "never": NEVER}).rowcount
        c.commit()
        return n

    # ------------------------------------------------------------------ the readers' side
    def current(self) -> int | None:
        """The live generation, None when there is none or the server cannot be asked (the watcher's start)."""
        try:
            return self.live() or None
        except KnowledgeBaseError:
            return None

    def live(self) -> int:
        self.connect()
        with self.guard(), self._engine.connect() as c:
            return c.exec_driver_sql(f"SELECT live FROM {self.table}_state").scalar()

    def docs(self) -> tuple[int, list]:
        """The live generation and its passages (id, content, source, metadata), in one snapshot."""
        self.connect()
        t = self.table
        with self.guard(), self._engine.connect() as c:
            rows = c.exec_driver_sql(
                f"SELECT s.live, p.langchain_id, p.content, p.source, p.langchain_metadata FROM {t}_state s "
                f"LEFT JOIN {t} p ON p.born <= s.live AND p.died > s.live ORDER BY p.source, p.langchain_id").all()
        live = rows[0][0] if rows else 0
        return live, [r[1:] for r in rows if r[1] is not None]

    def search(self, qvec, terms: list[str], pool: int, k1: float = 1.2, b: float = 0.75) -> list:
        """Candidates of one question, in one statement (one snapshot of one generation): the dense
        top `pool` by inner product and the BM25 top `pool` over the same terms and formula as
        `bot.lexical.BM25`, each row with its cosine, BM25 score (or None) and vector."""
        self.connect()
        t = self.table
        sql = f"""
        WITH s AS (SELECT live, n, total_len FROM {t}_state),
        dense AS (SELECT p.langchain_id FROM {t} p, s WHERE p.born <= s.live AND p.died > s.live
                  ORDER BY p.embedding <#> %(q)s::vector LIMIT %(pool)s),
        live AS MATERIALIZED (SELECT p.langchain_id, p.lex_len FROM {t} p, s
                              WHERE %(lexical)s AND p.born <= s.live AND p.died > s.live),
        hits AS (SELECT x.langchain_id, p.lex_len::float8 AS len, x.tf::float8 AS tf,
                        count(*) OVER (PARTITION BY x.term)::float8 AS df
                 FROM {t}_terms x JOIN live p USING (langchain_id)
                 WHERE x.term = ANY(%(terms)s::text[])),
        bm25 AS (SELECT h.langchain_id, sum(ln(1 + (s.n - h.df + 0.5) / (h.df + 0.5)) * h.tf * (%(k1)s + 1)
                        / (h.tf + %(k1)s * (1 - %(b)s + %(b)s * h.len / greatest(s.total_len::float8 / greatest(s.n, 1), 1e-9)))
                        ) AS score
                 FROM hits h CROSS JOIN s GROUP BY h.langchain_id ORDER BY score DESC, h.langchain_id LIMIT %(pool)s)
        SELECT p.langchain_id, p.content, p.source, p.langchain_metadata, p.embedding::real[],
               -(p.embedding <#> %(q)s::vector) AS cosine, bm25.score
        FROM {t} p LEFT JOIN bm25 USING (langchain_id)
        WHERE p.langchain_id IN (SELECT langchain_id FROM dense UNION SELECT langchain_id FROM bm25)"""
        params = {"q": _vector(qvec), "pool": pool, "lexical": bool(terms), "terms": terms, "k1": float(k1),
                  "b": float(b)}
        with self.guard(), self._engine.connect() as c:
            return c.exec_driver_sql(sql, params).all()


def _vector(values) -> str:
    return "[" + ",".join(f"{float(x):.8g}" for x in values) + "]"


def _schema(t: str) -> list[str]:
    """What PGVectorStore's table lacks for generations and BM25, and the tables beside it."""
    return [
        # BM25's terms: bot.lexical.tokenize's output, so both stores rank alike; 'simple' keeps them as they are
        f"ALTER TABLE {t} ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(lex, ''))) STORED",
        # ...and their postings, filled from tsv as a passage is written: a query reads the rows of its
        # terms alone (unnesting the tsvector of every passage matched took 64 ms a search at 2,000)
        f"CREATE TABLE {t}_terms (langchain_id text NOT NULL REFERENCES {t} ON DELETE CASCADE, term text NOT NULL, "
        f"tf int NOT NULL)",
        f"CREATE INDEX {t}_terms_term ON {t}_terms (term) INCLUDE (langchain_id, tf)",
        f"CREATE INDEX {t}_terms_id ON {t}_terms (langchain_id)",
        f"""CREATE FUNCTION {t}_post() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO {t}_terms SELECT NEW.langchain_id, lexeme, array_length(positions, 1) FROM unnest(NEW.tsv);
          RETURN NULL;
        END $$""",
        f"CREATE TRIGGER {t}_post AFTER INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_post()",
        f"CREATE INDEX {t}_born ON {t} (born)",
        f"CREATE INDEX {t}_died ON {t} (died)",
        f"CREATE INDEX {t}_source ON {t} (source)",
        f"CREATE SEQUENCE {t}_gen",
        f"CREATE TABLE {t}_state (id int PRIMARY KEY DEFAULT 1 CHECK (id = 1), live bigint NOT NULL DEFAULT 0, "
        f"pending bigint NOT NULL DEFAULT 0, dirty boolean NOT NULL DEFAULT false, signature text NOT NULL DEFAULT '', "
        f"n bigint NOT NULL DEFAULT 0, total_len bigint NOT NULL DEFAULT 0)",
        f"INSERT INTO {t}_state DEFAULT VALUES",
        f"CREATE TABLE {t}_files (rel text PRIMARY KEY, sha256 text NOT NULL, chunks int NOT NULL)",
        f"""CREATE FUNCTION {t}_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.born IS DISTINCT FROM (SELECT pending FROM {t}_state) THEN
            RAISE EXCEPTION 'supportbot: a write from a sync that no longer holds the lock';
          END IF;
          RETURN NEW;
        END $$""",
        f"CREATE TRIGGER {t}_guard BEFORE INSERT OR UPDATE OF born ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_guard()",
    ]
