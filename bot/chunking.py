"""Source -> passages that keep sentences and sections whole, each labelled with title and section.

The passage text starts with "Title > Section" so both the embedding and BM25 see where it comes
from (a question often names the page, not the sentence). Metadata: source, title, section, start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from langchain_core.documents import Document

from bot.documents import Source

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@dataclass(frozen=True)
class ChunkParams:
    chunk_chars: int = 900
    chunk_overlap: int = 150

    @property
    def signature(self) -> str:
        """Changes whenever passages of the same file would come out differently."""
        return f"chunker-v1:{self.chunk_chars}:{self.chunk_overlap}"


def split_source(source: Source, params: ChunkParams) -> list[Document]:
    if source.pages:
        sections = [(f"Page {i}", 0, page) for i, page in enumerate(source.pages, 1) if page.strip()]
    else:
        sections = list(_sections(source.text, source.title))
    docs: list[Document] = []
    for section, offset, body in sections:
        for start, text in _pack(body, params):
            head = f"{source.title} > {section}" if section else source.title
            docs.append(
                Document(
                    page_content=f"{head}\n{text}",
                    metadata={"source": source.rel, "title": source.title, "section": section, "start": offset + start},
                )
            )
    return docs


def _sections(text: str, title: str):
    """Yield (section path, offset of body, body) for a Markdown text; headings form the path."""
    path: list[tuple[int, str]] = []
    body_start, pos, in_fence = 0, 0, False
    lines = text.splitlines(keepends=True)
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m:
            yield _label(path, title), body_start, text[body_start:pos]
            level, name = len(m.group(1)), m.group(2).strip()
            path = [p for p in path if p[0] < level] + [(level, name)]
            body_start = pos + len(line)
        pos += len(line)
    yield _label(path, title), body_start, text[body_start:]


def _label(path: list[tuple[int, str]], title: str) -> str:
    names = [name for _, name in path]
    if names and names[0] == title:  # the H1 is the title already
        names = names[1:]
    return " > ".join(names)


def _units(body: str):
    """Sentences (and list items / lines) with their offsets in `body`."""
    for para in re.finditer(r"[^\n]+(?:\n(?!\s*\n)[^\n]+)*", body):
        lines = para.group(0).split("\n")
        # Lists and tables: one unit per line; prose: one unit per sentence.
        listy = len(lines) > 1 and all(re.match(r"\s*([-*+|]|\d+[.)])\s", ln) or not ln.strip() for ln in lines[1:])
        base = para.start()
        pieces = []
        if listy:
            off = 0
            for ln in lines:
                pieces.append((off, ln))
                off += len(ln) + 1
        else:
            flat = para.group(0)
            last = 0
            for m in _SENTENCE_END.finditer(flat):
                pieces.append((last, flat[last : m.start()]))
                last = m.end()
            pieces.append((last, flat[last:]))
        for off, piece in pieces:
            piece = " ".join(piece.split()) if not listy else piece.rstrip()
            if piece.strip():
                yield base + off, piece, listy


def _pack(body: str, params: ChunkParams):
    """Greedy packing of whole sentences up to chunk_chars, repeating the tail as overlap."""
    limit, overlap = params.chunk_chars, params.chunk_overlap
    units: list[tuple[int, str, bool]] = []
    for off, text, listy in _units(body):
        while len(text) > limit:  # a monster sentence: cut at a word boundary
            cut = text.rfind(" ", 0, limit)
            cut = cut if cut > limit // 2 else limit
            units.append((off, text[:cut], listy))
            off, text = off + cut, text[cut:].lstrip()
        units.append((off, text, listy))
    chunk: list[tuple[int, str, bool]] = []
    size = 0
    for unit in units:
        if chunk and size + len(unit[1]) + 1 > limit:
            yield chunk[0][0], _join(chunk)
            tail: list[tuple[int, str, bool]] = []
            for u in reversed(chunk):
                if sum(len(t[1]) + 1 for t in tail) + len(u[1]) > overlap:
                    break
                tail.insert(0, u)
            chunk, size = tail, sum(len(t[1]) + 1 for t in tail)
        chunk.append(unit)
        size += len(unit[1]) + 1
    if chunk:
        yield chunk[0][0], _join(chunk)


def _join(chunk: list[tuple[int, str, bool]]) -> str:
    out = ""
    for i, (_, text, listy) in enumerate(chunk):
        sep = "" if i == 0 else ("\n" if listy or chunk[i - 1][2] else " ")
        out += sep + text
    return out.strip()
