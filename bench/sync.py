"""Sync cost on a generated 1,000-file folder, and ingestion overhead against sentence-transformers.

    python bench/sync.py [--files 1000] [--repeats 41] [--json]

Reports: full build; one file edited; one file deleted (seconds, passages embedded); the ratio of
the one-file sync to embedding that file's passages alone (goal <= 1.5; 41 edits, each followed by
embedding its passages alone: the median of the 41 ratios, and all of them); and the full build's
throughput against sentence-transformers encoding the same passages directly, paired batch by
batch with the build's own embedding calls (goal: <= 10% overhead).
All in one process with the same model, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import build_knowledge_base  # noqa: E402
from bot.chunking import split_source  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.documents import read_source, scan_folder  # noqa: E402

REPEATS = 41  # one-file edits, each paired with an embedding of its passages alone (--repeats)
TOPICS = ["billing", "shipping", "refunds", "accounts", "security", "devices", "plans", "integrations"]
VERBS = ["takes", "costs", "needs", "allows", "requires", "includes", "supports", "limits"]
THINGS = ["an invoice", "a refund", "a parcel", "a login code", "the warranty", "a sensor", "the app", "a plan"]


def page(rng: random.Random, i: int) -> str:
    def sentence() -> str:
        return f"{rng.choice(THINGS).capitalize()} {rng.choice(VERBS)} {rng.randint(2, 90)} {rng.choice(['days', 'dollars', 'minutes', 'steps'])} in case {rng.randint(1, 9999)}."

    sections = [f"# Article {i}: {rng.choice(TOPICS)}\n"]
    for s in range(2):
        sections.append(f"## Part {s + 1}\n\n" + " ".join(sentence() for _ in range(rng.randint(5, 9))) + "\n")
    return "\n".join(sections)


def rel(i: int) -> str:
    return f"section{i % 20:02d}/article{i:04d}.md"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=REPEATS, help="one-file edits to pair (odd: one median)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(1234)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "kb"
        for i in range(args.files):
            path = folder / rel(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(page(rng, i))
        kb = build_knowledge_base(Settings(kb=folder, data_dir=Path(tmp) / "data").validate())
        emb = kb.embeddings
        emb.embed_documents(["warm-up"] * 8)

        # The baseline is paired with each batch the build embeds: sentence-transformers encodes the
        # same passages directly, just before or just after (alternating), and that time is taken
        # out of the build's. One baseline run before the build and one after took 34.9 s and
        # 41.1 s here: the machine drifts too much over a build for unpaired runs to show 10%.
        embed, baseline = emb.embed_documents, []

        def paired(texts):
            if len(baseline) % 2:
                vectors = embed(texts)
                baseline.append(timed(lambda: emb.encode(texts))[1])
            else:
                baseline.append(timed(lambda: emb.encode(texts))[1])
                vectors = embed(texts)
            return vectors

        emb.embed_documents = paired
        full, t_full = timed(kb.sync)
        del emb.embed_documents  # the method again
        t_st = sum(baseline)
        t_full -= t_st
        log(f"full build: {args.files} files, {full.chunks_embedded} passages in {t_full:.1f} s")
        noop, t_noop = timed(kb.sync)

        # --repeats edits of one file (each a new page), each followed by embedding its passages
        # alone: the machine's speed drifts by half between minutes here, so each pair is compared
        edited, deleted = 427 % args.files, 123 % args.files  # any two files, also with --files under 428
        deleted = deleted if deleted != edited else (edited + 1) % args.files
        target = folder / rel(edited)
        edits, alones = [], []
        for _ in range(args.repeats):
            target.write_text(page(rng, edited))
            edits.append(timed(kb.sync))
            entry = scan_folder(folder, [".md"], 10 * 2**20).entries[rel(edited)]
            texts = [d.page_content for d in split_source(read_source(entry), kb.params)]
            alones.append(timed(lambda: emb.embed_documents(texts))[1])
        edit = edits[0][0]
        t_edits = sorted(t for _, t in edits)
        t_edit, t_alone = t_edits[0], min(alones)
        ratios = sorted(t / a for (_, t), a in zip(edits, alones))

        (folder / rel(deleted)).unlink()
        delete, t_delete = timed(kb.sync)

    payload = {
        "files": args.files,
        "full_build": {"seconds": round(t_full, 2), "passages_embedded": full.chunks_embedded},
        "no_change": {"seconds": round(t_noop, 3), "passages_embedded": noop.chunks_embedded},
        "one_file_edited": {"seconds": round(t_edit, 3), "first_seconds": round(edits[0][1], 3),
                            "median_seconds": round(t_edits[args.repeats // 2], 3), "passages_embedded": edit.chunks_embedded,
                            "embed_alone_seconds": round(t_alone, 3), "ratio_to_embedding_alone": round(ratios[args.repeats // 2], 2),
                            "ratios": [round(r, 2) for r in ratios]},
        "one_file_deleted": {"seconds": round(t_delete, 3), "passages_deleted": delete.chunks_deleted},
        "ingestion": {"supportbot_passages_per_s": round(full.chunks_embedded / t_full, 1),
                      "sentence_transformers_passages_per_s": round(full.chunks_embedded / t_st, 1),
                      "paired_batches": len(baseline),
                      "overhead_pct": round(100 * t_full / t_st - 100, 1)},
    }
    if args.json:
        print(json.dumps(payload))
    else:
        print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
