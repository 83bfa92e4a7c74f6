"""Retrieval quality and speed on a folder with gold questions: BM25 vs dense baseline vs supportbot.

    python bench/retrieval.py --kb ../shared/eval/doc2dial-dev/kb --qa ../shared/eval/doc2dial-dev/qa.jsonl

hit@k two ways: "source" (a top-k passage comes from the gold file, or is a twin of one that does:
supportbot lists the files of identical passages in `also_in`; `source_hit_first_file` counts only
the file each passage is shown from) and "span" (a top-k passage holds >= 80% of the gold answer's
words). `chars` is the mean characters of the top-k passages.
Baselines as LangChain users build them: BM25Retriever, and RecursiveCharacterTextSplitter
1000/150 + MiniLM + FAISS. Also prints the score distribution behind the relevance threshold and
supportbot's retrieval latency (query embedding excluded) on an index scaled to --scale passages.

Settings come through the usual layers (supportbot.toml, SUPPORTBOT_* environment), so a lever can be
measured without editing code: `SUPPORTBOT_RETRIEVAL_LEAD_BONUS=0.12 python bench/retrieval.py ...`.
The same run checks the shipped help center with its own questions (`home`, scored the same way; its
gold answers are values), so a change that helps one domain and hurts another shows.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import build_knowledge_base, quiet_libraries  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.evaluate import load_questions  # noqa: E402

KS = (1, 4, 8)
REPO = Path(__file__).resolve().parents[1]
WORD = re.compile(r"[a-z0-9]+")
# Questions no help center of this kind answers: the "irrelevant" side of the threshold.
OUT_OF_SCOPE = [
    "What is the capital of Australia?", "Can you recommend a good lasagna recipe?",
    "Who won the football world cup in 2014?", "How do I change a flat bicycle tyre?",
    "Write me a poem about the sea", "What's the best way to learn the guitar?",
    "How many moons does Jupiter have?", "Translate 'good morning' into Japanese",
    "What is the boiling point of water on Mount Everest?", "Tell me a joke about cats",
    "How do I train my puppy to sit?", "Which programming language should I learn first?",
]


def words(text: str) -> Counter:
    return Counter(WORD.findall(text.lower()))


def span_hit(answer: Counter, passage: str, need: float = 0.8) -> bool:
    total = sum(answer.values())
    return total > 0 and sum((answer & words(passage)).values()) / total >= need


def score(rows, ranked) -> dict:
    """ranked[i]: list of (files, text) for question i, best first; files[0] is the one shown."""
    out = {"source_hit": {}, "span_hit": {}, "chars": {}}
    for k in KS:
        src = [any(r["source"] in s for s, _ in ranked[i][:k]) for i, r in enumerate(rows)]
        spn = [any(span_hit(words(r["answer"]), t) for _, t in ranked[i][:k]) for i, r in enumerate(rows)]
        out["source_hit"][str(k)] = round(sum(src) / len(rows), 3)
        out["span_hit"][str(k)] = round(sum(spn) / len(rows), 3)
        out["chars"][str(k)] = round(statistics.mean(sum(len(t) for _, t in ranked[i][:k]) for i in range(len(rows))))
    return out


def percentiles(values) -> dict:
    a = np.asarray(values)
    return {f"p{p}": round(float(np.percentile(a, p)), 3) for p in (5, 25, 50, 75, 95)} if len(a) else {}


def load_docs(kb: Path):
    from langchain_core.documents import Document

    docs = []
    for path in sorted(kb.rglob("*")):
        if path.suffix.lower() in {".md", ".txt"} and path.is_file():
            docs.append(Document(path.read_text(encoding="utf-8", errors="replace"),
                                 metadata={"source": path.relative_to(kb).as_posix()}))
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kb", type=Path, required=True)
    ap.add_argument("--qa", type=Path, required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--scale", type=int, default=10_000, help="passages in the latency test")
    ap.add_argument("--data-dir", type=Path, help="reuse an index directory (default: a temporary one)")
    ap.add_argument("--other-kb", type=Path, default=REPO / "knowledge_base",
                    help="a folder of another domain: its questions are out of scope here")
    ap.add_argument("--other-qa", type=Path, default=REPO / "bot" / "models" / "qa.jsonl",
                    help="that folder's own questions, for the `home` check")
    args = ap.parse_args()
    quiet_libraries()
    rows = [json.loads(line) for line in args.qa.read_text().splitlines() if line.strip()]
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    results, latency = {}, {}

    # supportbot
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"kb": args.kb, "data_dir": args.data_dir or Path(tmp)})
        kb = build_knowledge_base(settings)
        t = time.perf_counter()
        kb.sync()
        log(f"supportbot index: {len(kb.view())} passages, synced in {time.perf_counter() - t:.1f} s")
        ranked, retrieve_ms, embed_ms, gold_scores, top_scores = [], [], [], [], []
        for r in rows:
            res = kb.search(r["question"], k=max(KS))
            ranked.append([((p.source, *p.also_in), p.text) for p in res.passages])
            retrieve_ms.append(res.timings["retrieve"] * 1e3)
            embed_ms.append(res.timings["embed"] * 1e3)
            top_scores.append(res.best_score)
            gold_scores += [p.score for p in res.passages if span_hit(words(r["answer"]), p.text)][:1]
        results["supportbot"] = score(rows, ranked)
        first = score(rows, [[(s[:1], t) for s, t in r] for r in ranked])["source_hit"]
        results["supportbot"]["source_hit_first_file"] = first
        latency["supportbot"] = {"retrieve_ms_p50": round(statistics.median(retrieve_ms), 3),
                                 "embed_ms_p50": round(statistics.median(embed_ms), 2)}
        oos = [kb.search(q).best_score for q in OUT_OF_SCOPE]
        embeddings = kb.embeddings
        threshold = settings.retrieval.threshold
        latency["supportbot"].update(scaled_latency(kb, args.scale))

    other, home = [], {}
    if args.other_kb.is_dir() and args.other_kb.resolve() != args.kb.resolve():
        with tempfile.TemporaryDirectory() as tmp:
            okb = build_knowledge_base(replace(settings, kb=args.other_kb, data_dir=Path(tmp)).validate(), embeddings)
            okb.sync()
            other = [okb.search(r["question"]).best_score for r in rows]
            if args.other_qa.is_file():
                home = home_check(okb, load_questions(args.other_qa))

    # baselines
    from langchain_community.retrievers import BM25Retriever
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from bot.store import new_faiss

    chunks = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=150).split_documents(load_docs(args.kb))
    bm25 = BM25Retriever.from_documents(chunks, k=max(KS))
    t = time.perf_counter()
    ranked = [[((d.metadata["source"],), d.page_content) for d in bm25.invoke(r["question"])] for r in rows]
    latency["bm25"] = {"query_ms_mean": round((time.perf_counter() - t) / len(rows) * 1e3, 3)}
    results["bm25"] = score(rows, ranked)
    dense = new_faiss(embeddings, embeddings.dim)
    dense.add_documents(chunks)
    t = time.perf_counter()
    ranked = [[((d.metadata["source"],), d.page_content) for d in dense.similarity_search(r["question"], k=max(KS))]
              for r in rows]
    latency["dense"] = {"query_ms_mean_with_embedding": round((time.perf_counter() - t) / len(rows) * 1e3, 3)}
    results["dense"] = score(rows, ranked)

    dist = {"threshold": threshold,
            "relevant_gold_passage": percentiles(gold_scores),
            "out_of_scope_top": percentiles(oos),
            "other_domain_top": percentiles(other),
            "relevant_above_threshold": round(float(np.mean(np.asarray(gold_scores) >= threshold)), 3),
            "out_of_scope_above_threshold": round(float(np.mean(np.asarray(oos + other) >= threshold)), 3)}
    payload = {**results, "home": home, "latency": latency, "scores": dist, "questions": len(rows),
               "baseline_chunks": len(chunks), "retrieval_settings": asdict(settings.retrieval)}
    if args.json:
        print(json.dumps(payload))
        return
    print(f"\n{len(rows)} questions; hit@k (source / span); mean chars of top-k")
    print(f"{'retriever':<12}" + "".join(f"{'@' + str(k):>22}" for k in KS))
    for name in ("bm25", "dense", "supportbot"):
        r = results[name]
        print(f"{name:<12}" + "".join(
            f"{r['source_hit'][str(k)]:>7.2f} /{r['span_hit'][str(k)]:>5.2f} {r['chars'][str(k)]:>6}c" for k in KS))
    print("supportbot source-hit counting only the file each passage is shown from:",
          " ".join(f"@{k} {results['supportbot']['source_hit_first_file'][str(k)]:.2f}" for k in KS))
    if home:
        print(f"home ({args.other_kb.name}, {home['questions']} questions): source / span",
              " ".join(f"@{k} {home['source_hit'][str(k)]:.3f} / {home['span_hit'][str(k)]:.3f}" for k in KS))
    print("retrieval settings:", json.dumps(asdict(settings.retrieval)))
    print("\nlatency:", json.dumps(latency))
    print("score distribution (cosine of best passage):", json.dumps(dist, indent=1))


def home_check(kb, questions: list[dict]) -> dict:
    """supportbot on a second domain with its own answerable questions, scored as above (there the
    gold answer is a value, such as a price, so a span hit means the passage holds it)."""
    rows = [q for q in questions if not q.get("out_of_scope") and q.get("source")]
    ranked = [[((p.source, *p.also_in), p.text) for p in kb.search(q["question"], k=max(KS)).passages] for q in rows]
    return {"questions": len(rows), **score(rows, ranked)}


def scaled_latency(kb, n: int) -> dict:
    """Retrieval time with the index tiled up to n passages (vectors jittered, texts reused)."""
    from langchain_core.documents import Document

    from bot.retrieval import IndexView
    from bot.store import new_faiss

    view = kb.view()
    if not len(view) or not hasattr(view, "vectors"):  # store.url: searches run in PostgreSQL (bench/pgstore.py)
        return {}
    rng = np.random.default_rng(0)
    reps = -(-n // len(view))
    vecs = np.tile(view.vectors, (reps, 1))[:n] + rng.normal(0, 0.02, (n, view.vectors.shape[1])).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vs = new_faiss(kb.embeddings, kb.embeddings.dim)
    vs.index.add(vecs)
    ids = [f"x{i}" for i in range(n)]
    vs.docstore.add({ids[i]: Document(view.docs[i % len(view)].page_content,
                                      metadata=view.docs[i % len(view)].metadata) for i in range(n)})
    vs.index_to_docstore_id = dict(enumerate(ids))
    t = time.perf_counter()
    big = IndexView(vs)
    build = time.perf_counter() - t
    queries = ["how do I apply for benefits", "what documents do I need", "when will I get a decision",
               "can my family get health care", "how do I change my address"]
    qv = [np.asarray(kb.embeddings.embed_query(q), dtype=np.float32) for q in queries]
    times = []
    for _ in range(20):
        for q, v in zip(queries, qv):
            times.append(big.search(q, v, kb.settings.retrieval).seconds * 1e3)
    return {f"retrieve_ms_p50_at_{n}": round(statistics.median(times), 3),
            f"retrieve_ms_p95_at_{n}": round(float(np.percentile(times, 95)), 3),
            f"view_build_s_at_{n}": round(build, 2)}


if __name__ == "__main__":
    main()
