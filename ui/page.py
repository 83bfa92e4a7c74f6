"""The pages of `supportbot serve`, both built and served by `ChatPage(bot)`:

- `create_app()`: the customers' chat at `/` (chat, sources, Helpful / Not helpful, and a voice
  dropdown only with `serve.voice_choice`); no login, nothing that changes the knowledge base.
- `create_team_app()`: the support team's page at `/team`, behind the `serve.user` /
  `serve.password` login: knowledge-base status, Sync now, upload, the feedback log, the voices.
- `launch()`: mounts both on one FastAPI app (`gradio.mount_gradio_app`, the login on the team
  page only, its API included) and serves it with uvicorn.

Handlers are methods that take and return plain values, so tests call them without a server.
Per-browser-session state (the stop switch, the last answer for feedback) is keyed by Gradio's
session hash; the voice choice is the session's own dropdown value, passed with each message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from bot.adapters import AdapterError
from bot.errors import ConfigError, RequestError, SupportbotError
from bot.feedback import FeedbackLog, open_feedback
from ui.format import (FEEDBACK_COLUMNS, VOICE_COLUMNS, chat_text, customer_error, error_text, feedback_rows,
                       history_messages, kb_status_markdown, markdown_text, sources_markdown, upload_name, voice_rows)

log = logging.getLogger(__name__)
LOCAL = "local"  # the session of a handler called without a request (tests, scripts)
CRASHED = "Sorry, something went wrong on our side and it has been logged. Please try again."
NO_VOICE = "⚠️ This voice is not available right now. Please choose another one."
TEAM_PATH = "/team"
FEEDBACK_ROWS = 50
# The chat shows messages as text (no Markdown; chat_text makes markup inert), keeping their line breaks.
CSS = "#chat .md { white-space: pre-wrap; }"


def take_message(message: str) -> tuple[str, str]:
    """Empty the box and hold its message for the answer that follows."""
    return "", message


class _Recent(OrderedDict):
    """Per-session state for the `size` most recently active sessions: a public page sees endless
    sessions and must not keep one entry for each forever."""

    def __init__(self, size: int = 10_000):
        super().__init__()
        self.size, self._lock = size, threading.Lock()

    def __setitem__(self, key, value) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)


def _session(request) -> str:
    return getattr(request, "session_hash", None) or LOCAL


class Served:
    """Both pages running in a background thread (`ChatPage.launch(block=False)`); `close()` stops them."""

    def __init__(self, server, blocks: list[gr.Blocks], url: str):
        self.server, self.blocks, self.url = server, blocks, url

    def wait(self) -> None:
        """Serve until Ctrl-C, then close."""
        try:
            while self.server.thread.is_alive():
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        for blocks in self.blocks:  # ends queues and heartbeats first, or open streams hold the server
            blocks.close(verbose=False)
        self.server.close()


class ChatPage:
    def __init__(self, bot, feedback: FeedbackLog | None = None):
        self.bot = bot
        self.settings = bot.settings
        self.feedback = feedback or open_feedback(bot.settings)
        self._stops: dict[str, threading.Event] = _Recent()
        self._last: dict[str, dict] = _Recent()
        self._upload_lock = threading.Lock()

    # --- customer handlers ----------------------------------------------------------------
    def adapter_choices(self) -> list[tuple[str, str]]:
        choices = [("none: the base model's plain voice", "none")]
        for name in self.bot.adapters.names()[1:]:
            voice = str(self.bot.adapters.card(name).get("voice", "")).strip()
            choices.append((f"{name}: {voice}" if voice else name, name))
        return choices

    def customer_voice(self, asked: str | None) -> str:
        """The voice of an answer: the customer's choice where the team allows one, else serve.voice."""
        serve = self.settings.serve
        return (asked or serve.voice) if serve.voice_choice else serve.voice

    def respond(self, message: str, history: list | None, voice: str | None = None,
                request: gr.Request | None = None):
        """Stream one reply: yields (chat history, sources panel) as tokens arrive."""
        session = _session(request)
        stop = self._stops[session] = threading.Event()
        prior = history_messages(history)
        shown = list(history or []) + [{"role": "user", "content": chat_text(message or "")},
                                       {"role": "assistant", "content": ""}]
        pieces: list[str] = []
        try:
            for event in self.bot.chain.stream(message or "", prior, self.customer_voice(voice), stop):
                if event["type"] == "token":
                    pieces.append(event["text"])
                    shown[-1] = {"role": "assistant", "content": chat_text("".join(pieces))}
                    yield shown, "_Answering…_"
                    continue
                answer = event["answer"].to_dict()
                text = chat_text(answer["answer"]) + ("  ⏹ (stopped)" if answer["stopped"] else "")
                shown[-1] = {"role": "assistant", "content": text}
                self._last[session] = answer
                yield shown, sources_markdown(answer)
        except AdapterError as err:  # a voice vanished (rescan) or serve.voice broke: the team's matter
            log.error("answering with voice %r failed: %s", self.customer_voice(voice), err)
            shown[-1] = {"role": "assistant", "content": NO_VOICE if self.settings.serve.voice_choice else CRASHED}
            yield shown, sources_markdown(None)
        except SupportbotError as err:
            shown[-1] = {"role": "assistant", "content": customer_error(err)}
            yield shown, sources_markdown(None)
        except Exception:  # the page keeps serving; the trace goes to the server log only
            log.exception("answering %r failed", (message or "")[:200])
            shown[-1] = {"role": "assistant", "content": CRASHED}
            yield shown, sources_markdown(None)

    def stop(self, request: gr.Request | None = None) -> None:
        event = self._stops.get(_session(request))
        if event is not None:
            event.set()

    def rate(self, rating: str, request: gr.Request | None = None) -> str:
        last = self._last.get(_session(request))
        if last is None:
            return "Ask a question first, then rate the answer."
        try:
            self.feedback.append(last["question"], last["answer"], last["sources"], last["adapter"], rating)
        except SupportbotError as err:
            log.warning("feedback not saved: %s", err)
            return "Sorry, your rating could not be saved just now. Please try again in a minute."
        return f"Thanks: feedback saved ({'helpful' if rating == 'up' else 'not helpful'})."

    def rate_up(self, request: gr.Request | None = None) -> str:
        return self.rate("up", request)

    def rate_down(self, request: gr.Request | None = None) -> str:
        return self.rate("down", request)

    # --- team handlers --------------------------------------------------------------------
    def status(self) -> str:
        return kb_status_markdown(self.bot.kb)

    def sync_now(self) -> str:
        try:
            self.bot.kb.sync()
        except SupportbotError as err:
            return f"Sync failed, the previous index is kept. {error_text(err)}\n\n" + self.status()
        return self.status()

    def upload(self, files) -> tuple[str, str, None]:
        """Copy uploaded documents into the knowledge base (never over an existing file), then sync.

        Returns (note, status, None): the None empties the upload box, so the next upload reports
        on its own files only, not again on every file dropped before."""
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files or [])
        notes, limit = [], self.settings.serve.max_upload_mb
        for path in paths:
            path = Path(getattr(path, "name", path))
            try:
                notes.append(self._store_upload(path, limit))
            except RequestError as err:
                notes.append(error_text(err))
        if any(n.startswith("Added") for n in notes):
            try:
                self.bot.kb.sync()
            except SupportbotError as err:
                notes.append(f"Sync failed, the previous index is kept. {error_text(err)}")
        return "\n\n".join(notes) or "No file received.", self.status(), None

    def _store_upload(self, path: Path, limit_mb: float) -> str:
        name = upload_name(path.name, self.settings.knowledge.extensions)
        size = path.stat().st_size
        if size > limit_mb * 1e6:
            raise RequestError(f"{name} is {size / 1e6:.1f} MB; the limit is {limit_mb:g} MB (serve.max_upload_mb)",
                               "split it, or put it in the knowledge-base folder directly")
        kb = self.settings.kb
        kb.mkdir(parents=True, exist_ok=True)
        target = kb / name
        staging = kb / f".{name}.upload"
        with self._upload_lock:
            shutil.copyfile(path, staging)
            try:
                os.link(staging, target)  # fails if the name exists: no silent overwrite, even in a race
            except FileExistsError:
                raise RequestError(f"{name} already exists in the knowledge base",
                                   "rename the file, or delete the old one first") from None
            finally:
                staging.unlink(missing_ok=True)
        return f"Added `{name}` ({size / 1e3:.1f} kB)."  # upload_name left letters, digits, "._ -" only

    def feedback_table(self) -> dict:
        """The newest feedback records, newest first (a Dataframe value); none while they cannot be read."""
        try:
            records = self.feedback.records()
        except SupportbotError as err:
            log.warning("feedback not read: %s", err)
            records = []
        return {"headers": FEEDBACK_COLUMNS, "data": feedback_rows(records, FEEDBACK_ROWS)}

    def voices_table(self) -> dict:
        """Every adapter folder found, loaded or refused with the reason (a Dataframe value)."""
        return {"headers": VOICE_COLUMNS, "data": voice_rows(self.bot.adapters.adapters.values())}

    def voices_note(self) -> str:
        serve = self.settings.serve
        choice = ("customers may choose another in a dropdown (`serve.voice_choice`)" if serve.voice_choice else
                  "customers cannot choose (`serve.voice_choice` is off)")
        return f"Customers get the voice **{markdown_text(serve.voice)}** (`serve.voice`); {choice}."

    def rescan_voices(self) -> dict:
        """Load new or retrained adapter folders, drop removed ones; customers' dropdowns list them on reload."""
        self.bot.adapters.scan()
        return self.voices_table()

    def check_voice(self) -> None:
        """serve.voice must name a loaded voice: a typo would otherwise fail every customer's answer."""
        voice, names = self.settings.serve.voice, self.bot.adapters.names()
        if voice not in names:
            found = self.bot.adapters.adapters.get(voice)
            why = f" ({found.status}: {found.reason})" if found is not None and found.reason else ""
            raise ConfigError(f"serve.voice {voice!r} is not a loaded voice{why}", f"choose one of: {', '.join(names)}")

    # --- the pages ------------------------------------------------------------------------
    def create_app(self) -> gr.Blocks:
        """The customers' page: chat, sources, feedback; a voice dropdown only where allowed."""
        serve = self.settings.serve
        with gr.Blocks(title="Help center chat") as app:
            gr.Markdown("## Help center chat\nAnswers come from our help articles; each cites its passages as [n], "
                        "shown under Sources.")
            with gr.Row():
                with gr.Column(scale=3):
                    chat = gr.Chatbot(label="Chat", height=460, elem_id="chat", render_markdown=False,
                                      latex_delimiters=[], allow_tags=False, buttons=["copy", "copy_all"])
                    box = gr.Textbox(placeholder="Ask a question and press Enter", show_label=False, elem_id="message")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        stop = gr.Button("Stop", elem_id="stop")
                        up = gr.Button("Helpful", elem_id="rate-up")  # words: emoji fonts are not everywhere
                        down = gr.Button("Not helpful", elem_id="rate-down")
                    note = gr.Markdown(elem_id="feedback-note")
                with gr.Column(scale=2):
                    if serve.voice_choice:
                        voice = gr.Dropdown(choices=self.adapter_choices(), value=serve.voice, label="Voice",
                                            elem_id="adapter")
                        app.load(lambda: gr.Dropdown(choices=self.adapter_choices()), outputs=voice, api_name=False)
                    else:  # keeps /chat's (message, history, voice) for scripts; the voice is ignored
                        voice = gr.Textbox(value=serve.voice, visible=False, label="voice (ignored here)")
                    sources = gr.Markdown(sources_markdown(None), elem_id="sources")
            chat_args = dict(fn=self.respond, outputs=[chat, sources], concurrency_limit=serve.answer_slots(),
                             concurrency_id="answer")
            # The box is emptied when a message is sent, not when its answer ends: clearing it
            # afterwards wiped whatever the user had typed meanwhile.
            pending = gr.State("")
            for trigger in (box.submit, send.click):
                trigger(take_message, inputs=box, outputs=[box, pending], api_name=False).then(
                    inputs=[pending, chat, voice], api_name=False, **chat_args)
            api = gr.Button(visible=False)  # /chat for scripts: (message, history, voice) -> streamed reply
            api.click(inputs=[box, chat, voice], api_name="chat", **chat_args)
            stop.click(self.stop, api_name="stop", concurrency_limit=None)
            up.click(self.rate_up, outputs=note, api_name="rate_up")
            down.click(self.rate_down, outputs=note, api_name="rate_down")
        return app

    def create_team_app(self) -> gr.Blocks:
        """The support team's page: knowledge base, upload, feedback log, voices."""
        with gr.Blocks(title="supportbot: team") as app:
            gr.Markdown("## supportbot: support team\nCustomers chat at the site's root page; this page is for the "
                        "team only.")
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Knowledge base")
                    status = gr.Markdown(self.status(), elem_id="kb-status")
                    sync = gr.Button("Sync now", elem_id="sync")
                    files = gr.File(label="Upload documents", file_count="multiple", type="filepath",
                                    file_types=list(self.settings.knowledge.extensions), elem_id="upload")
                    uploaded = gr.Markdown(elem_id="upload-note")
                with gr.Column():
                    gr.Markdown("### Voices")
                    gr.Markdown(self.voices_note(), elem_id="voice-note")
                    voices = gr.Dataframe(value=self.voices_table(), interactive=False, wrap=True, elem_id="voices")
                    rescan = gr.Button("Rescan the adapters folder", elem_id="rescan")
            gr.Markdown(f"### Feedback (newest {FEEDBACK_ROWS}; {markdown_text(self.feedback.where)})")
            feedback = gr.Dataframe(value=self.feedback_table(), interactive=False, wrap=True, elem_id="feedback")
            refresh = gr.Button("Refresh", elem_id="refresh")
            sync.click(self.sync_now, outputs=status, api_name="sync")
            files.upload(self.upload, inputs=files, outputs=[uploaded, status, files], api_name="upload")
            refresh.click(self.feedback_table, outputs=feedback, api_name="feedback")
            rescan.click(self.rescan_voices, outputs=voices, api_name="rescan_voices")
            gr.Timer(3.0).tick(self.status, outputs=status, api_name=False)
            app.load(lambda: (self.status(), self.feedback_table(), self.voices_table()),
                     outputs=[status, feedback, voices], api_name=False)
        return app

    def create_server(self, blocks: list[gr.Blocks] | None = None):
        """One FastAPI app: the team page at /team (behind the login when one is set), the chat at /."""
        import fastapi
        from fastapi.responses import RedirectResponse

        serve = self.settings.serve
        customer, team = blocks or (self.create_app(), self.create_team_app())
        customer.queue(default_concurrency_limit=max(2, serve.answer_slots()), max_size=serve.queue_size or None)
        team.queue(default_concurrency_limit=2)
        server = fastapi.FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        server.add_api_route(TEAM_PATH, lambda: RedirectResponse(TEAM_PATH.lstrip("/") + "/"), include_in_schema=False)
        auth = (serve.user, serve.password) if serve.user and serve.password else None
        common = dict(show_error=False, run_history=False, ssr_mode=False)  # run history: not in shared browsers
        gr.mount_gradio_app(server, team, TEAM_PATH, auth=auth, auth_message="supportbot: support team login",
                            max_file_size=int(serve.max_upload_mb * 2e6) + 1_000_000, **common)
        # customers upload nothing: Gradio's upload route refuses every file here
        gr.mount_gradio_app(server, customer, "/", max_file_size=0, footer_links=["settings"], css=CSS, **common)
        return server

    def launch(self, host: str | None = None, port: int | None = None, block: bool = True) -> Served | None:
        """Serve both pages; block=False returns the running `Served` (tests), block=True serves until Ctrl-C.

        Refuses (ConfigError) a host beyond localhost without the team login, and a serve.voice
        that is not a loaded voice."""
        import uvicorn
        from gradio.exceptions import ServerFailedToStartError
        from gradio.http_server import Server

        serve = self.settings.serve
        host, port = host or serve.host, port or serve.port
        why = dataclasses.replace(serve, host=host).refusal()
        if why:
            raise ConfigError(why)
        self.check_voice()
        customer, team = self.create_app(), self.create_team_app()
        app = self.create_server([customer, team])
        # open event streams would hold a shutdown for seconds: cut them after 2 s
        server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2))
        try:
            server.run_in_thread()
        except ServerFailedToStartError:
            raise ConfigError(f"cannot listen on {host}:{port}", "is another server using this port? "
                              "choose another with --port") from None
        where = f"[{host}]" if ":" in host else host
        served = Served(server, [customer, team], f"http://{where}:{port}/")
        if not block:
            return served
        served.wait()
        return None
