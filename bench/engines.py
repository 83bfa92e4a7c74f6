"""In-process generation against a vLLM server (model.endpoint) under load: concurrent chat sessions
with mixed voices asking the same questions through the whole chain.

    python bench/engines.py [--sessions 20] [--per-session 2] [--endpoint URL] [--json]

Each session i asks `--per-session` questions of bot/models/qa.jsonl in turn (session i starts at
question i), with voice none, cheerful or formal (i % 3), all sessions at once. In-process, answers
are generated serve.answer_slots() at a time, as `supportbot serve` does (1 on 2 cores: more at
once is slower there); on vLLM all at once (the server batches). Latency runs from the moment a
session asks to its final answer, waiting included. Without --endpoint the vLLM server is started
here (bot/vllmserve.py, SUPPORTBOT_VLLM_PYTHON) after the in-process run has freed its model, and
stopped at the end: one heavy process at a time.

Figures: p50 / p95 latency, answers per minute, their ratios (vLLM against in-process), and how
many answers are the same text on both engines (greedy decoding on both).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import build_bot, quiet_libraries  # noqa: E402
from bot.basemodel import QUESTIONS  # noqa: E402
from bot.config import Settings  # noqa: E402

VOICES = ("none", "cheerful", "formal")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class FifoGate:
    """`slots` at a time, in the order asked (as Gradio's queue serves `supportbot serve`'s answers); a
    threading.Semaphore lets a session that just finished cut in line, which hid the waiting."""

    def __init__(self, slots: int):
        self.slots, self.issued, self.entered, self.active = slots, 0, 0, 0
        self.cond = threading.Condition()

    def __enter__(self):
        with self.cond:
            ticket, self.issued = self.issued, self.issued + 1
            self.cond.wait_for(lambda: ticket == self.entered and self.active < self.slots)
            self.entered, self.active = self.entered + 1, self.active + 1
            self.cond.notify_all()

    def __exit__(self, *exc):
        with self.cond:
            self.active -= 1
            self.cond.notify_all()


def load(bot, sessions: int, per_session: int, slots: int) -> dict:
    """All sessions at once; each asks its questions in turn. Returns latencies, answers, wall time."""
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    gate = FifoGate(slots)
    barrier = threading.Barrier(sessions)
    latencies, answers, errors = [], {}, []

    def session(i: int) -> None:
        barrier.wait()
        for j in range(per_session):
            question, voice = questions[(i + j * sessions) % len(questions)], VOICES[i % len(VOICES)]
            t = time.perf_counter()
            try:
                with gate:
                    answer = bot.chain.ask(question, adapter=voice)
            except Exception as err:  # counted, not fatal: the figures say how many failed
                errors.append(f"{type(err).__name__}: {err}")
                continue
            latencies.append(time.perf_counter() - t)
            answers[(question, voice)] = answer.text

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"answers": len(latencies), "errors": errors[:5], "failed": len(errors), "slots": slots,
            "p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "p95_s": round(percentile(latencies, 0.95), 2) if latencies else None,
            "answers_per_min": round(60 * len(latencies) / wall, 1), "wall_s": round(wall, 1), "texts": answers}


def settings_for(root: Path, endpoint: str = "") -> Settings:
    settings = Settings(kb=root / "kb", data_dir=root / "data", adapters_dir=root / "no-adapters")  # shipped voices
    settings.model.endpoint = endpoint
    return settings.validate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--per-session", type=int, default=2, help="questions each session asks in turn")
    parser.add_argument("--endpoint", help="a running vLLM server (default: start one here)")
    parser.add_argument("--skip-in-process", action="store_true", help="vLLM only")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    quiet_libraries()
    from bot.embeddings import LocalEmbeddings

    embeddings = LocalEmbeddings()
    result: dict = {"sessions": args.sessions, "per_session": args.per_session, "voices": list(VOICES)}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        root = Path(tmp)
        shutil.copytree(Path(__file__).resolve().parents[1] / "knowledge_base", root / "kb")
        if not args.skip_in_process:
            settings = settings_for(root)
            bot = build_bot(settings, embeddings)
            bot.kb.sync()
            bot.chain.ask("hello")  # warm-up: first calls pay one-off costs
            result["in_process"] = load(bot, args.sessions, args.per_session, settings.serve.answer_slots())
            result["in_process"]["model_dtype"] = str(bot.model.model.dtype)
            bot.kb.close()
            del bot
            gc.collect()
        server, endpoint = None, args.endpoint
        result["vllm"] = {}
        try:
            if not endpoint:
                from bot.vllmserve import Server, plan

                server = Server(plan(settings_for(root), port=_free_port()), root / "vllm.log")
                result["vllm"]["start_s"] = round(server.ready(600), 1)
                endpoint = server.plan.url
            bot = build_bot(settings_for(root, endpoint), embeddings)
            bot.kb.sync()
            bot.chain.ask("hello")
            result["vllm"].update(load(bot, args.sessions, args.per_session, args.sessions))
            bot.kb.close()
        finally:
            if server is not None:
                server.stop()
    if "in_process" in result and result["vllm"].get("answers"):
        a, b = result["in_process"], result["vllm"]
        result["ratio"] = {"answers_per_min": round(b["answers_per_min"] / a["answers_per_min"], 2),
                           "p50": round(a["p50_s"] / b["p50_s"], 2), "p95": round(a["p95_s"] / b["p95_s"], 2)}
        shared = set(a["texts"]) & set(b["texts"])
        result["same_text"] = f"{sum(a['texts'][k] == b['texts'][k] for k in shared)} of {len(shared)}"
    for part in ("in_process", "vllm"):
        result.get(part, {}).pop("texts", None)
    if args.json:
        print(json.dumps(result))
    else:
        for part in ("in_process", "vllm"):
            r = result.get(part) or {}
            if r:
                print(f"{part:>10}: {r.get('answers')} answers ({r.get('failed')} failed), p50 {r.get('p50_s')} s, "
                      f"p95 {r.get('p95_s')} s, {r.get('answers_per_min')} answers/min, {r.get('slots')} at once"
                      + (f", server start {r['start_s']} s" if r.get("start_s") else ""))
        if "ratio" in result:
            print(f"     ratio: vLLM / in-process answers per minute {result['ratio']['answers_per_min']}x; "
                  f"p50 {result['ratio']['p50']}x, p95 {result['ratio']['p95']}x faster; same text {result['same_text']}")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
