"""The chat page: `ChatPage(bot).create_app()` builds the gr.Blocks, `.launch()` serves it.

Handlers are methods that take and return plain values, so tests call them without a server.
Per-browser-session state (the stop switch, the last answer for feedback) is keyed by Gradio's
session hash; the adapter choice is the session's own dropdown value, passed with each message.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from bot.errors import RequestError, SupportbotError
from bot.feedback import FeedbackLog
from ui.format import error_text, history_messages, kb_status_markdown, shown_text, sources_markdown, upload_name

log = logging.getLogger(__name__)
LOCAL = "local"  # the session of a handler called without a request (tests, scripts)
CRASHED = "Sorry, something went wrong on our side and it has been logged. Please try again."


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


class ChatPage:
    def __init__(self, bot, feedback: FeedbackLog | None = None):
        self.bot = bot
        self.settings = bot.settings
        self.feedback = feedback or FeedbackLog(bot.settings.feedback_path)
        self._stops: dict[str, threading.Event] = _Recent()
        self._last: dict[str, dict] = _Recent()
        self._upload_lock = threading.Lock()

    # --- handlers -------------------------------------------------------------------------
    def adapter_choices(self) -> list[tuple[str, str]]:
        choices = [("none: the base model's plain voice", "none")]
        for name in self.bot.adapters.names()[1:]:
            voice = str(self.bot.adapters.card(name).get("voice", "")).strip()
            choices.append((f"{name}: {voice}" if voice else name, name))
        return choices

    def respond(self, message: str, history: list | None, adapter: str | None, request: gr.Request | None = None):
        """Stream one reply: yields (chat history, sources panel) as tokens arrive."""
        session = _session(request)
        stop = self._stops[session] = threading.Event()
        prior = history_messages(history)
        shown = list(history or []) + [{"role": "user", "content": shown_text(message or "")},
                                       {"role": "assistant", "content": ""}]
        pieces: list[str] = []
        try:
            for event in self.bot.chain.stream(message or "", prior, adapter or "none", stop):
                if event["type"] == "token":
                    pieces.append(event["text"])
                    shown[-1] = {"role": "assistant", "content": shown_text("".join(pieces))}
                    yield shown, "_Answering…_"
                    continue
                answer = event["answer"].to_dict()
                text = shown_text(answer["answer"]) + ("  ⏹ _(stopped)_" if answer["stopped"] else "")
                shown[-1] = {"role": "assistant", "content": text}
                self._last[session] = answer
                yield shown, sources_markdown(answer)
        except SupportbotError as err:
            shown[-1] = {"role": "assistant", "content": error_text(err)}
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
        self.feedback.append(last["question"], last["answer"], last["sources"], last["adapter"], rating)
        return f"Thanks: feedback saved ({'helpful' if rating == 'up' else 'not helpful'})."

    def rate_up(self, request: gr.Request | None = None) -> str:
        return self.rate("up", request)

    def rate_down(self, request: gr.Request | None = None) -> str:
        return self.rate("down", request)

    def status(self) -> str:
        return kb_status_markdown(self.bot.kb)

    def sync_now(self) -> str:
        try:
            self.bot.kb.sync()
        except SupportbotError as err:
            return f"Sync failed, the previous index is kept. {error_text(err)}\n\n" + self.status()
        return self.status()

    def upload(self, files) -> tuple[str, str]:
        """Copy uploaded documents into the knowledge base (never over an existing file), then sync."""
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files or [])
        notes, limit = [], self.settings.serve.max_upload_mb
        for path in paths:
            path = Path(getattr(path, "name", path))
            try:
                notes.append(self._store_upload(path, limit))
            except RequestError as err:
                notes.append(error_text(err))
        if any(n.startswith("Added") for n in notes):
            self.bot.kb.sync()
        return "\n\n".join(notes) or "No file received.", self.status()

    def _store_upload(self, path: Path, limit_mb: float) -> str:
        name = upload_name(path.name, self.settings.knowledge.extensions)
        size = path.stat().st_size
        if size > limit_mb * 1e6:
            raise RequestError(f"{name} is {size / 1e6:.1f} MB; the limit is {limit_mb:g} MB",
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
        return f"Added `{name}` ({size / 1e3:.1f} kB)."

    # --- the page -------------------------------------------------------------------------
    def create_app(self) -> gr.Blocks:
        with gr.Blocks(title="supportbot") as app:
            gr.Markdown("## supportbot\nAnswers come from the help center; each cites its passages as [n].")
            with gr.Row():
                with gr.Column(scale=3):
                    chat = gr.Chatbot(label="Chat", height=460, elem_id="chat")
                    box = gr.Textbox(placeholder="Ask a question and press Enter", show_label=False, elem_id="message")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        stop = gr.Button("Stop", elem_id="stop")
                        up = gr.Button("Helpful", elem_id="rate-up")  # words: emoji fonts are not everywhere
                        down = gr.Button("Not helpful", elem_id="rate-down")
                    note = gr.Markdown(elem_id="feedback-note")
                with gr.Column(scale=2):
                    adapter = gr.Dropdown(choices=self.adapter_choices(), value="none", label="Voice (adapter)",
                                          elem_id="adapter")
                    sources = gr.Markdown(sources_markdown(None), elem_id="sources")
                    with gr.Accordion("Knowledge base", open=False):
                        status = gr.Markdown(self.status(), elem_id="kb-status")
                        sync = gr.Button("Sync now", elem_id="sync")
                        files = gr.File(label="Upload documents", file_count="multiple", type="filepath",
                                        file_types=list(self.settings.knowledge.extensions))
                        uploaded = gr.Markdown(elem_id="upload-note")
            chat_args = dict(fn=self.respond, outputs=[chat, sources], concurrency_limit=self.settings.serve.answer_slots(),
                             concurrency_id="answer")
            # The box is emptied when a message is sent, not when its answer ends: clearing it
            # afterwards wiped whatever the user had typed meanwhile.
            pending = gr.State("")
            for trigger in (box.submit, send.click):
                trigger(take_message, inputs=box, outputs=[box, pending], api_name=False).then(
                    inputs=[pending, chat, adapter], api_name=False, **chat_args)
            api = gr.Button(visible=False)  # /chat for scripts: (message, history, adapter) -> streamed reply
            api.click(inputs=[box, chat, adapter], api_name="chat", **chat_args)
            stop.click(self.stop, api_name="stop", concurrency_limit=None)
            up.click(self.rate_up, outputs=note, api_name="rate_up")
            down.click(self.rate_down, outputs=note, api_name="rate_down")
            sync.click(self.sync_now, outputs=status, api_name="sync")
            files.upload(self.upload, inputs=files, outputs=[uploaded, status], api_name="upload")
            gr.Timer(3.0).tick(self.status, outputs=status, api_name=False)
            app.load(lambda: gr.Dropdown(choices=self.adapter_choices()), outputs=adapter, api_name=False)
        return app

    def launch(self, host: str | None = None, port: int | None = None, block: bool = True):
        """Serve the page; with block=False returns the running app (tests). Login if configured."""
        serve = self.settings.serve
        host, port = host or serve.host, port or serve.port
        auth = (serve.user, serve.password) if serve.user else None
        if host not in ("127.0.0.1", "localhost", "::1") and auth is None:
            log.warning("serving on %s without a login: anyone who reaches this address can use the bot and "
                        "upload documents (set SUPPORTBOT_SERVE_USER and SUPPORTBOT_SERVE_PASSWORD)", host)
        app = self.create_app()
        app.queue(default_concurrency_limit=max(2, serve.answer_slots()), max_size=serve.queue_size or None)
        app.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=not block, show_error=False,
                   quiet=True, inbrowser=False, share=False)
        return app
