"""Under load: 20 chat sessions at once through the Gradio API on 127.0.0.1, on the default model
(SmolLM2-135M-Instruct) with its two shipped voices and none, while the knowledge base is edited
under them.

Every answer is checked against the same question asked alone (greedy decoding: a session that got
another session's adapter, history or passages shows up as a different text). Figures are printed
(run with -s); README quotes them.

On 2 CPU cores one answer at a time is generated (serve.answer_slots), a few seconds each, so the
sessions ask a fixed number of questions each (not "as many as fit in N seconds": the queue of 20
is longer than that) and answers are cut at MAX_NEW_TOKENS.
"""

import shutil
import statistics
import threading
import time

import httpx
import pytest

from conftest import SHIPPED_KB, api_client, clean_build, index_content, launched, reply_text, write

# 45-53 s each on a CPU with native bf16, 200-227 s on an AVX2-only one beside a busy loop (the real
# model runs in fp32 there): the default 300 s would be too close
pytestmark = [pytest.mark.slow, pytest.mark.hardening, pytest.mark.timeout(600)]

SESSIONS = 20
MAX_NEW_TOKENS = 12  # a voice's opener and the start of the answer: enough to tell answers apart
ADAPTERS = ("none", "cheerful", "formal")
QUESTIONS = [
    "How much does the Plus plan cost per month?",
    "What does overnight delivery cost?",
    "What do international returns cost?",
    "How long is the free trial?",
    "Which e-mail address reaches customer support?",
]
# Edits made while the sessions chat, and questions whose answers must then show the new value.
EDITS = {"plans/pricing-and-plans.md": ("$4.99", "$5.79"), "orders/shipping.md": ("$29.95", "$31.45")}
EDIT_QUESTIONS = {"$5.79": QUESTIONS[0], "$31.45": QUESTIONS[1]}
EDITED_FILE = {QUESTIONS[0]: "plans/pricing-and-plans.md", QUESTIONS[1]: "orders/shipping.md"}
ADDED = ("orders/gift-cards.md", "# Gift cards\n\nFernway gift cards come in values from $25 to $250. "
         "A gift card never expires and works on any order in our store.\n")
ADDED_QUESTION = "How much can a gift card be worth?"
DELETED = "energy-reports.md"
DELETED_QUESTION = "How much run time did homes save in your study?"
REFUSED = "Nothing in the knowledge base was relevant enough"  # the sources panel of a refusal


@pytest.fixture(scope="module")
def served(embeddings, default_model, tmp_path_factory):
    from bot.app import build_bot
    from bot.config import Settings
    from ui.page import ChatPage

    root = tmp_path_factory.mktemp("load")
    shutil.copytree(SHIPPED_KB, root / "kb")
    settings = Settings(kb=root / "kb", data_dir=root / "data", adapters_dir=root / "no-adapters")  # shipped voices
    settings.model.name = str(default_model)
    settings.model.max_new_tokens = MAX_NEW_TOKENS
    settings.serve.voice_choice = True  # each session picks its voice
    settings.knowledge.watch_seconds = 1.0
    bot = build_bot(settings.validate(), embeddings)
    assert bot.adapters.names() == ["none", "cheerful", "formal"], bot.adapters.adapters
    bot.kb.sync()
    bot.kb.start_watching()
    page = ChatPage(bot)
    with launched(page) as url:
        yield page, url
    bot.kb.stop_watching()


def _chat(url: str, plan, gate: threading.Event | None = None):
    """One API client per session, all at once; session i asks the questions in plan[i] in turn,
    the later ones only once `gate` is set. Returns (threads, records, errors)."""
    records, errors = [], []

    def session(i: int) -> None:
        try:
            client, adapter = api_client(url), ADAPTERS[i % len(ADAPTERS)]
        except Exception as err:
            errors.append((i, "connect", repr(err)))
            return
        for n, question in enumerate(plan[i]):
            if n and gate is not None:
                gate.wait(300)
            t, started = time.perf_counter(), time.monotonic()
            try:
                result = client.predict(question, [], adapter, api_name="/chat")
                records.append({"session": i, "adapter": adapter, "question": question, "text": reply_text(result),
                                "sources": result[1], "seconds": time.perf_counter() - t, "started": started,
                                "at": time.monotonic()})
            except Exception as err:
                errors.append((i, question, repr(err)))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(plan))]
    for t in threads:
        t.start()
    return threads, records, errors


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _figures(records, start) -> str:
    latency = [r["seconds"] for r in records]
    took = max(r["at"] for r in records) - start
    return (f"{len(records)} answers in {took:.1f} s ({60 * len(records) / took:.1f} answers/min), latency p50 "
            f"{statistics.median(latency):.2f} s, p95 {_percentile(latency, 0.95):.2f} s, max {max(latency):.2f} s")


def test_twenty_sessions_each_get_their_own_adapters_answer(served):
    page, url = served
    # one question each; 3 questions x 3 voices: 9 (question, voice) pairs among the 20 sessions, each
    # checked against its answer alone (fewer pairs: fewer answers alone to wait for on 2 cores)
    questions = QUESTIONS[0::2]
    plan = [[questions[(i // len(ADAPTERS)) % len(questions)]] for i in range(SESSIONS)]
    start = time.monotonic()
    threads, records, errors = _chat(url, plan)
    time.sleep(5)  # all sessions are queued or answering: a newcomer must still get the page and its config
    t = time.perf_counter()
    page_status = httpx.get(url, timeout=30).status_code
    config = httpx.get(url + "config", timeout=30).json()
    newcomer = time.perf_counter() - t
    for th in threads:
        th.join(240)
    assert not any(th.is_alive() for th in threads), "sessions still waiting after 240 s"
    solo, solo_s = {}, []  # the same questions asked alone, after the load (the index is unchanged)
    for q, a in sorted({(r["question"], r["adapter"]) for r in records}):
        t = time.perf_counter()
        solo[q, a] = page.bot.chain.ask(q, adapter=a).text
        solo_s.append(time.perf_counter() - t)

    assert not errors, errors[:3]
    assert page_status == 200 and config.get("components")
    assert {r["session"] for r in records} == set(range(SESSIONS))  # every session got its answer
    asked = {r["question"] for r in records}
    for i, a in enumerate(ADAPTERS):  # any two voices answer some question differently: a swap would show
        for b in ADAPTERS[i + 1:]:
            assert any(solo[q, a] != solo[q, b] for q in asked), (a, b, [solo[q, a] for q in asked])
    wrong = [r for r in records if r["text"] != solo[r["question"], r["adapter"]]]
    assert not wrong, [(r["adapter"], r["question"], r["text"][:80], solo[r["question"], r["adapter"]][:80])
                       for r in wrong[:3]]
    print(f"\nLOAD: one at a time (in-process) p50 {statistics.median(solo_s):.2f} s; {SESSIONS} sessions at once: "
          f"{_figures(records, start)}; 0 errors, 0 in another session's voice; "
          f"a new session got the page and its config in {newcomer:.2f} s")


def _edited_pairs(question: str) -> tuple[str, str] | None:
    """(new, old) value of an edited question, None for others."""
    for new, q in EDIT_QUESTIONS.items():
        if q == question:
            return new, next(o for o, n in EDITS.values() if n == new)
    return None


def test_edits_while_sessions_chat_are_used_with_nothing_stale(served, embeddings, tmp_path):
    page, url = served
    kb, folder = page.bot.kb, page.settings.kb
    old_generation = kb.view().generation
    # Each session asks one question while the edits are made and synced; once the sync is live, 9
    # of them ask one whose answer depends on an edit (each of the 3 in every voice) while the
    # rest of the queue drains.
    after_questions = [*EDIT_QUESTIONS.values(), ADDED_QUESTION]
    plan = [[QUESTIONS[i % len(QUESTIONS)]] for i in range(SESSIONS)]
    for i in range(len(after_questions) * len(ADAPTERS)):
        plan[i].append(after_questions[i // len(ADAPTERS)])
    live = threading.Event()
    start = time.monotonic()
    threads, records, errors = _chat(url, plan, gate=live)
    try:
        time.sleep(4)
        for rel, (old, new) in EDITS.items():
            path = folder / rel
            assert old in path.read_text(encoding="utf-8")
            write(path, path.read_text(encoding="utf-8").replace(old, new))
        write(folder / ADDED[0], ADDED[1])
        (folder / DELETED).unlink()
        edited_at = time.monotonic()
        while time.monotonic() < edited_at + 60:  # the watcher syncs within seconds, readers go on meanwhile
            sources = kb.view().sources()
            if ADDED[0] in sources and DELETED not in sources and not kb.is_stale():
                break
            time.sleep(0.2)
        live_at = time.monotonic()
        picked_up = live_at - edited_at
    finally:
        live.set()  # the sessions' second questions go out now (or, after a failure, end the threads)
    for th in threads:
        th.join(240)
    assert not any(th.is_alive() for th in threads), "sessions still waiting after 240 s"

    assert not errors, errors[:3]
    assert kb.view().generation != old_generation and picked_up < 60
    before = [r for r in records if r["started"] < edited_at]
    during = [r for r in before if r["at"] > live_at]
    assert during, "sessions that asked before the edits kept getting answers after the sync"
    after = [r for r in records if r["started"] > live_at]
    assert {(r["question"], r["adapter"]) for r in after} == {(q, a) for q in after_questions for a in ADAPTERS}
    # Asked under load after the sync: answered from the new text, never the old. The 135M model's own
    # words do not reliably state the value ("Plus, [1]", "Great question!"; the grounding check only
    # stops values that are not in the passages), so the value is checked in the passages the answer
    # was given (the sources panel), and the old value must appear in neither the answer nor them.
    # How many answers state the new value in words is printed.
    stated = 0
    for r in after:
        assert REFUSED not in r["sources"], (r["question"], r["adapter"], r["text"][:100])
        if r["question"] == ADDED_QUESTION:
            assert ADDED[0] in r["sources"] and "$250" in r["sources"], (r["adapter"], r["sources"][:200])
            stated += "$250" in r["text"]
            continue
        new, old = _edited_pairs(r["question"])
        assert EDITED_FILE[r["question"]] in r["sources"] and new in r["sources"], (r["adapter"], r["sources"][:200])
        assert old not in r["text"] + r["sources"], (r["adapter"], r["text"][:100])
        stated += new in r["text"]
    # no duplicate or stale passage: the live index is what a clean build of the folder gives
    live_index = index_content(kb)
    assert len(live_index) == len(kb.view().docs) and live_index == clean_build(folder, tmp_path / "clean", embeddings)
    assert not any(DELETED == s or any(old in t for old, _ in EDITS.values()) for s, t in live_index)
    result = api_client(url).predict(DELETED_QUESTION, [], "none", api_name="/chat")
    assert DELETED not in result[1]
    print(f"\nEDITS UNDER LOAD: {SESSIONS} sessions: {_figures(records, start)}; 0 errors; {len(during)} answers to "
          f"questions asked before the edits came after the sync; {len(after)} asked after it ("
          f"all answered from the new text, {stated} stating the new value in words); 2 files edited, 1 added, 1 deleted, live in the index "
          f"{picked_up:.1f} s after the edit; index equal to a clean build ({len(live_index)} passages)")
