"""Turn classification: the MiniLM nearest-turn classifier (bot/turns.py) against the rules alone.

    python bench/turns.py [--heldout tests/data/turns_heldout.jsonl] [--sweep] [--json]

Figures: accuracy on the held-out set (turns written apart from the shipped ones, used only to
measure), leave-one-out accuracy on the shipped set bot/turns.jsonl (each turn classified by the
others), per kind; "route" accuracy, what the chain does with the kind (retrieve / converse /
converse and offer a person); the share of off-topic questions (bench/retrieval.py's list) kept
as inquiries, so that retrieval refuses them; the rules-only baseline (`dialogue.classify`) on
the same sets; every miss; and the median time to classify one message. `--sweep` adds
leave-one-out and held-out accuracy for other k and floor values, the figures they were chosen by.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bot import dialogue  # noqa: E402
from bot.app import quiet_libraries  # noqa: E402
from bot.turns import KINDS, Turn, TurnClassifier, load_turns  # noqa: E402
from retrieval import OUT_OF_SCOPE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROUTES = {dialogue.INQUIRY: "retrieve", dialogue.HANDOFF: "offer a person", dialogue.COMPLAINT: "offer a person"}


def route(kind: str) -> str:
    return ROUTES.get(kind, "converse")


def report(turns: list[Turn], guesses: list[str]) -> dict:
    """Accuracy overall, by route and per kind, and the misses as (expected, got, text)."""
    right = [g == t.kind for t, g in zip(turns, guesses)]
    per_kind = {}
    for kind in KINDS:
        hits = [ok for t, ok in zip(turns, right) if t.kind == kind]
        per_kind[kind] = {"n": len(hits), "accuracy": round(sum(hits) / len(hits), 3) if hits else None}
    return {
        "n": len(turns),
        "accuracy": round(sum(right) / len(turns), 3),
        "route_accuracy": round(sum(route(g) == route(t.kind) for t, g in zip(turns, guesses)) / len(turns), 3),
        "per_kind": per_kind,
        "misses": [{"expected": t.kind, "got": g, "text": t.text} for t, g in zip(turns, guesses) if g != t.kind],
    }


def leave_one_out(clf: TurnClassifier) -> list[str]:
    vectors = clf.vectors
    return [clf.without(i).decide(t.text, vectors[i]) for i, t in enumerate(clf.examples)]


def evaluate(clf: TurnClassifier, heldout: list[Turn]) -> dict:
    return {"heldout": report(heldout, clf.classify_many([t.text for t in heldout])),
            "leave_one_out": report(clf.examples, leave_one_out(clf))}


def inquiry_share(kinds: list[str]) -> float:
    return round(sum(k == dialogue.INQUIRY for k in kinds) / len(kinds), 3)


def median_ms(fn: Callable[[str], str], messages: list[str]) -> float:
    times = []
    for m in messages:
        t = time.perf_counter()
        fn(m)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1e3, 3)


def sweep(embeddings, heldout: list[Turn]) -> list[dict]:
    rows = []
    for k in (1, 3, 5, 7, 9):
        for floor in (0.0, 0.3, 0.35):
            r = evaluate(TurnClassifier(embeddings, k=k, floor=floor), heldout)
            rows.append({"k": k, "floor": floor, "leave_one_out": r["leave_one_out"]["accuracy"],
                         "heldout": r["heldout"]["accuracy"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", type=Path, default=REPO / "tests" / "data" / "turns_heldout.jsonl")
    ap.add_argument("--sweep", action="store_true", help="also other k and floor values")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quiet_libraries()
    from bot.embeddings import LocalEmbeddings

    embeddings = LocalEmbeddings()
    heldout = load_turns(args.heldout)
    clf = TurnClassifier(embeddings)
    t = time.perf_counter()
    clf.vectors  # noqa: B018 (embeds the shipped turns: the one-off cost of the first message)
    first_s = time.perf_counter() - t
    result = {
        "classifier": {"k": clf.k, "floor": clf.floor, "shipped_turns": len(clf.examples), **evaluate(clf, heldout)},
        "rules": {"heldout": report(heldout, [dialogue.classify(t.text) for t in heldout]),
                  "leave_one_out": report(clf.examples, [dialogue.classify(t.text) for t in clf.examples])},
        "off_topic_kept_as_inquiry": {"classifier": inquiry_share(clf.classify_many(OUT_OF_SCOPE)),
                                      "rules": inquiry_share([dialogue.classify(q) for q in OUT_OF_SCOPE]),
                                      "n": len(OUT_OF_SCOPE)},
        "timing": {"embed_shipped_turns_s": round(first_s, 2),
                   "classify_ms_p50": median_ms(clf.classify, [t.text for t in heldout]),
                   "rules_ms_p50": median_ms(dialogue.classify, [t.text for t in heldout])},
    }
    if args.sweep:
        result["sweep"] = sweep(embeddings, heldout)
    if args.json:
        print(json.dumps(result))
        return
    show(result)


def show(result: dict) -> None:
    c, r = result["classifier"], result["rules"]
    print(f"classifier: k={c['k']}, floor={c['floor']}, {c['shipped_turns']} shipped turns")
    print(f"{'':24}{'classifier':>12}{'rules':>8}")
    for name in ("heldout", "leave_one_out"):
        print(f"{name + ' (n=' + str(c[name]['n']) + ')':24}{c[name]['accuracy']:>12.3f}{r[name]['accuracy']:>8.3f}")
        print(f"{'  route':24}{c[name]['route_accuracy']:>12.3f}{r[name]['route_accuracy']:>8.3f}")
        for kind in KINDS:
            ck, rk = c[name]["per_kind"][kind], r[name]["per_kind"][kind]
            print(f"{'  ' + kind + ' (' + str(ck['n']) + ')':24}{ck['accuracy']:>12.3f}{rk['accuracy']:>8.3f}")
    off = result["off_topic_kept_as_inquiry"]
    print(f"{'off-topic -> inquiry':24}{off['classifier']:>12.3f}{off['rules']:>8.3f}  (n={off['n']})")
    tm = result["timing"]
    print(f"classify one message: {tm['classify_ms_p50']} ms (rules {tm['rules_ms_p50']} ms); "
          f"first use embeds the shipped turns: {tm['embed_shipped_turns_s']} s")
    for name in ("heldout", "leave_one_out"):
        print(f"misses, {name}:")
        for m in c[name]["misses"]:
            print(f"  {m['expected']:>9} -> {m['got']:<9} {m['text']}")
    for row in result.get("sweep", []):
        print(f"  k={row['k']} floor={row['floor']}: leave-one-out {row['leave_one_out']:.3f}, "
              f"held-out {row['heldout']:.3f}")


if __name__ == "__main__":
    main()
