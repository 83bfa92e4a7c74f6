"""Two `supportbot serve` processes on one PostgreSQL (the index and the feedback) and one vLLM
server (generation), as on two machines: each has its own data folder; they share the
knowledge-base folder, which only replica A watches, so what B answers after an edit comes from
the shared index.

In order: an edit synced by A is answered by both; each session keeps its voice on either
replica; feedback from both lands in one table whole; then both engines restarted mid-chat.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from conftest import SHIPPED_KB, api_client, reply_text
from test_faults import Server

# the first test to use a server pays its start (52-155 s here): more room than the default 300 s
pytestmark = [pytest.mark.engines, pytest.mark.slow, pytest.mark.timeout(600)]

PRICE = "How much does the Plus plan cost per month?"
PRICE_FILE = "plans/pricing-and-plans.md"
OLD, NEW = "$4.99", "$6.49"
DOWN = ("cannot be reached right now", "unavailable")  # the database's and the server's short messages


@pytest.fixture(scope="module")
def replicas(postgres, vllm_server, default_model, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("replicas")
    kb = root / "kb"
    shutil.copytree(SHIPPED_KB, kb)
    table = f"r_{uuid.uuid4().hex[:10]}"
    common = ("--store.url", postgres.url, "--store.table", table, "--model.endpoint", vllm_server.plan.url)
    (root / "a").mkdir()
    (root / "b").mkdir()
    a = Server(root / "a", kb, common)
    b = Server(root / "b", kb, (*common, "--knowledge.watch_seconds", "0"))  # B never syncs by itself
    started = []
    try:
        for srv in (a, b):  # one at a time: the first creates the tables and syncs the folder
            started.append(srv.start(timeout_s=300))
        yield a, b, table
    finally:
        for srv in started:
            if srv.proc.poll() is None:
                srv.kill()


def ask(server: Server, question: str, voice: str = "none", client=None) -> str:
    """The reply and the sources panel below it, as one text."""
    result = (client or api_client(server.url)).predict(question, [], voice, api_name="/chat")
    return f"{reply_text(result)}\n{result[1]}"


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1)
    pytest.fail(f"{what} within {timeout_s} s")


def test_an_edit_synced_by_one_replica_is_answered_by_both(replicas):
    a, b, _ = replicas
    for srv in (a, b):
        assert OLD in ask(srv, PRICE)
    page = a.kb / PRICE_FILE
    page.write_text(page.read_text(encoding="utf-8").replace(OLD, NEW), encoding="utf-8")
    answer = wait_for(lambda: (lambda t: t if NEW in t else "")(ask(b, PRICE)), 90,
                      "replica B did not answer with the value replica A synced")
    assert OLD not in answer
    assert NEW in ask(a, PRICE) and OLD not in ask(a, PRICE)
    assert a.proc.poll() is None and b.proc.poll() is None


def test_each_session_keeps_its_voice_on_either_replica(replicas):
    """Sessions on both replicas, each in its own voice: the same voice gives the same words on
    either replica (one engine, greedy), the two voices different ones, and each session's rating
    is filed under its own voice."""
    a, b, _ = replicas
    question = "How long is the free trial?"
    said: dict[tuple[str, str], str] = {}
    for srv, name in ((a, "a"), (b, "b")):
        for voice in ("cheerful", "formal"):
            client = api_client(srv.url)
            said[name, voice] = ask(srv, question, voice, client)
            assert "saved" in client.predict(api_name="/rate_up")
    assert said["a", "cheerful"] == said["b", "cheerful"] and said["a", "formal"] == said["b", "formal"]
    assert said["a", "cheerful"] != said["a", "formal"]
    from bot.pgfeedback import PGFeedbackLog
    from ui.page import TEAM_PATH

    for srv in (a, b):  # either team page lists the ratings both replicas took
        rows = api_client(srv.url + TEAM_PATH.lstrip("/") + "/").predict(api_name="/feedback")["data"]
        assert sorted(r[2] for r in rows if r[3] == question) == ["cheerful", "cheerful", "formal", "formal"]
    log = PGFeedbackLog(replicas_url(a), replicas[2])
    mine = [r for r in log.records() if r["question"] == question]
    assert sorted(r["adapter"] for r in mine) == ["cheerful", "cheerful", "formal", "formal"]
    assert {r["answer"] + "\n" for r in mine if r["adapter"] == "formal"} == {said["a", "formal"].split("\n")[0] + "\n"}


def replicas_url(srv: Server) -> str:
    return srv.extra[srv.extra.index("--store.url") + 1]


def test_feedback_from_both_replicas_lands_in_one_table_whole(replicas):
    from bot.pgfeedback import PGFeedbackLog

    a, b, table = replicas
    log = PGFeedbackLog(replicas_url(a), table)
    before = len(log.records())
    sessions = []
    for srv in (a, b):
        for i in range(3):
            client = api_client(srv.url)
            ask(srv, f"Can I talk to a person? ({srv.port}-{i})", "none", client)
            sessions.append(client)
    errors: list[BaseException] = []

    def rate(client, times: int) -> None:
        try:
            for k in range(times):
                assert "saved" in client.predict(api_name="/rate_up" if k % 2 else "/rate_down")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=rate, args=(c, 5)) for c in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    records = log.records()[before:]
    assert len(records) == 30
    for srv in (a, b):  # each session's five ratings, whole, whichever replica took them
        for i in range(3):
            own = [r for r in records if r["question"] == f"Can I talk to a person? ({srv.port}-{i})"]
            assert sorted(r["rating"] for r in own) == ["down"] * 3 + ["up"] * 2
    for srv in (a, b):  # nothing went to a replica's own file
        assert not (srv.data / "feedback.jsonl").exists()
    from bot.cli import main

    out = a.root / "rated.jsonl"  # the team's export for `train --data`: every row of the shared table
    assert main(["feedback", "--store.url", replicas_url(a), "--store.table", table, "--out", str(out), "-q"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == before + 30


def test_postgres_and_vllm_restarted_mid_chat(replicas, postgres, vllm_server):
    """Both engines go away in the middle of chats and come back: every chat meanwhile gets a short
    message, neither replica dies, and answers resume by themselves."""
    a, b, _ = replicas
    now = NEW if NEW in (a.kb / PRICE_FILE).read_text(encoding="utf-8") else OLD  # with or without the edit test
    jobs = [api_client(srv.url).submit(PRICE, [], voice, api_name="/chat")
            for srv in (a, b) for voice in ("none", "formal")]
    postgres.stop()
    vllm_server.stop()
    try:
        for job in jobs:  # the chats under way: an answer, or a short message, never a crash
            text = reply_text(job.result(timeout=120))
            assert now in text or any(m in text for m in DOWN), text
        for srv in (a, b):
            for question in (PRICE, "Which e-mail address reaches customer support?"):
                text = ask(srv, question)
                assert any(m in text for m in DOWN) and len(text) < 200 and "Traceback" not in text, text
    finally:
        postgres.start()
        seconds = vllm_server.restart(600)
    print(f"\nvLLM back in {seconds:.1f} s")
    for srv in (a, b):
        assert srv.proc.poll() is None, srv.tail()
        text = wait_for(lambda: (lambda t: t if now in t else "")(ask(srv, PRICE, "formal")), 60,
                        f"replica on {srv.port} did not answer again")
        assert not any(m in text for m in DOWN)
