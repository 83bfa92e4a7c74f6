import re

import pytest

from bot.chunking import ChunkParams, split_source
from bot.documents import Source

DOC = """# Billing

Intro sentence about billing.

## Payment methods

We accept cards. We also accept PayPal.

### Changing your card

Open the settings. Tap replace.

```
# not a heading, inside a code fence
```

## Refunds

Refunds take 5 days.
"""


def test_sections_follow_headings_and_keep_the_path():
    chunks = split_source(Source("billing.md", "Billing", text=DOC), ChunkParams())
    sections = [c.metadata["section"] for c in chunks]
    assert sections == ["", "Payment methods", "Payment methods > Changing your card", "Refunds"]
    assert chunks[2].page_content.startswith("Billing > Payment methods > Changing your card\n")
    assert "# not a heading" in chunks[2].page_content
    for c in chunks:
        assert c.metadata["source"] == "billing.md" and c.metadata["title"] == "Billing"
        body = c.page_content.split("\n", 1)[1]
        assert DOC[c.metadata["start"] :].startswith(body[:10])  # start points at the text


@pytest.mark.parametrize("limit, overlap", [(200, 0), (300, 80), (900, 150)])
def test_passages_respect_the_size_and_keep_sentences_whole(limit, overlap):
    sentences = [f"Sentence number {i} says the fee is {i} dollars." for i in range(60)]
    text = "# Fees\n\n" + " ".join(sentences)
    chunks = split_source(Source("fees.md", "Fees", text=text), ChunkParams(limit, overlap))
    assert len(chunks) > 1
    seen = set()
    for c in chunks:
        body = c.page_content.split("\n", 1)[1]
        assert len(body) <= limit
        parts = re.findall(r"Sentence number \d+ says the fee is \d+ dollars\.", body)
        assert " ".join(parts) == body  # only whole sentences
        seen.update(parts)
    assert seen == set(sentences)  # nothing lost
    if overlap:
        a, b = (c.page_content.split("\n", 1)[1] for c in chunks[:2])
        assert a.split(". ")[-1] in b  # the tail of one passage opens the next


def test_a_monster_sentence_is_cut_at_words():
    text = "# X\n\n" + "word " * 1000
    chunks = split_source(Source("x.md", "X", text=text), ChunkParams(200, 0))
    assert all(len(c.page_content.split("\n", 1)[1]) <= 200 for c in chunks)
    assert sum(c.page_content.count("word") for c in chunks) == 1000


def test_signature_changes_with_parameters():
    assert ChunkParams(900, 150).signature != ChunkParams(800, 150).signature
