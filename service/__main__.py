"""Command line: ``gis`` (or ``python -m service``) ``{serve,train,quantize,evaluate,guard-check,
config,ask,drift,drift-profile}``."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path


def _log_to_stderr(message: str) -> None:
    """Progress lines of the long commands; stdout keeps their results."""
    print(message, file=sys.stderr, flush=True)


def _data_path(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data)
    if args.download:
        from service.training.data import download_official

        return download_official(Path("data") / "aclImdb_v1.tar.gz")
    raise SystemExit("give --data PATH (aclImdb directory or .tar.gz) or --download")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="aclImdb directory or .tar.gz (e.g. aclImdb_v1.tar.gz)")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download the official aclImdb_v1.tar.gz to ./data and verify its checksum",
    )


def cmd_train(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    from service.models.artifacts import PACKAGE_ARTIFACTS
    from service.training.build import build

    out = Path(args.out) if args.out else PACKAGE_ARTIFACTS
    command = "python -m service " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    # Only train has epochs (quantize trains nothing).
    names = ("cnn_epochs", "moe_epochs", "hyperbole_epochs")
    epochs = {name: getattr(args, name) for name in names if hasattr(args, name)}
    cards = build(
        _data_path(args),
        out,
        stages=stages,
        seed=args.seed,
        command=command,
        hyperbole_data=Path(args.hyperbole_data) if getattr(args, "hyperbole_data", None) else None,
        log=_log_to_stderr,
        **epochs,
    )
    for card in cards:
        print(
            f"{card['name']:<20} accuracy {card['test']['accuracy']:.4f}  "
            f"{card['size_bytes']:>10,} bytes"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from service.models.artifacts import PACKAGE_ARTIFACTS
    from service.models.registry import LoadedModel, ModelRegistry
    from service.training.data import read_aclimdb
    from service.training.evaluate import evaluate_loaded, format_table

    root = Path(args.artifacts) if args.artifacts else PACKAGE_ARTIFACTS
    model = ModelRegistry.load([args.model], root=root).get(args.model)
    if not isinstance(model, LoadedModel):
        raise SystemExit(
            f"{args.model} is an adapter or a cascade, not one aclImdb model: its test figures "
            "are in its card, measured when it was built"
        )
    data = _data_path(args)
    _log_to_stderr(f"reading the aclImdb test reviews from {data}")
    test = [r for r in read_aclimdb(data) if r.split == "test"]
    if args.limit:
        # An even spread over negatives and positives (the test set is sorted by label).
        step = max(1, len(test) // args.limit)
        test = test[::step][: args.limit]
    _log_to_stderr(f"evaluating {args.model} on {len(test)} test reviews")
    texts, labels = [r.text for r in test], [r.label for r in test]
    result = evaluate_loaded(model, texts, labels, progress=True)  # a bar on stderr
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_guard_check(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.guard.cli import guard_check

    return asyncio.run(guard_check(args.text, get_settings()))


def cmd_config(args: argparse.Namespace) -> int:
    """Print the settings in effect (environment, .env, defaults), secrets masked."""
    from service.config import Settings, settings_report

    report = settings_report(Settings())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, value in report.items():
            print(f"{name}={value}")
    return 0


def cmd_drift_profile(args: argparse.Namespace) -> int:
    """(Re)build the drift reference profile of existing artifacts from their training texts."""
    from service.drift.profile import rebuild_profiles
    from service.models.artifacts import NAMES, PACKAGE_ARTIFACTS
    from service.models.cascade import is_cascade

    root = Path(args.artifacts) if args.artifacts else PACKAGE_ARTIFACTS
    names = args.model or [
        name for name in NAMES if (root / name).is_dir() and not is_cascade(root / name)
    ]  # a cascade has no vocabulary or texts of its own: its members have profiles
    rebuild_profiles(
        _data_path(args), root, names, score_sample=args.score_sample, log=_log_to_stderr
    )
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """The offline Evidently drift report (the ``drift`` extra)."""
    from service.drift.report import run_report

    return run_report(args)


def _prog() -> str:
    return "gis" if Path(sys.argv[0]).name == "gis" else "python -m service"


DESCRIPTION = (
    "The Guarded Inference Service: serve it, train, quantize and evaluate its models, check "
    "their drift, ask the guard about a text, print the settings, or ask an A2A agent. "
    "'%(prog)s COMMAND --help' tells more."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=_prog(), description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    from service.server import add_serve_arguments, run_serve

    serve = commands.add_parser("serve", help="run the HTTP/2 service under Hypercorn")
    add_serve_arguments(serve)

    for name, help_text in (
        ("train", "train all models and write their artifacts (six models, one adapter)"),
        ("quantize", "derive the int8 and int4 CNN artifacts from the fp32 one"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_data_arguments(sub)
        sub.add_argument("--out", help="artifacts folder (default: the package's own)")
        sub.add_argument(
            "--seed",
            type=int,
            default=1337,
            help="seed of the train/validation split and of training"
            if name == "train"
            else "seed of the train/validation split the int8 calibration reviews come from "
            "(the one the fp32 CNN was trained with)",
        )
        if name == "train":  # quantize trains nothing: no epochs
            sub.add_argument("--cnn-epochs", type=int, default=4, help="epochs of the CNN")
            sub.add_argument("--moe-epochs", type=int, default=3, help="epochs of the MoE")
            sub.add_argument(
                "--only",
                choices=("cnn", "student", "moe", "hyperbole"),
                help="train one model (cnn includes quantize; student, the distilled student "
                "and the cascade, and hyperbole, the LoRA adapter, need the CNNs already built)",
            )
            sub.add_argument(
                "--hyperbole-data",
                help="HYPO sentences (.jsonl.gz; default: hypo_hyperbole.jsonl.gz beside --data)",
            )
            sub.add_argument(
                "--hyperbole-epochs", type=int, default=12, help="epochs of the LoRA adapter"
            )

    evaluate = commands.add_parser("evaluate", help="accuracy of one artifact on aclImdb/test")
    evaluate.add_argument("--model", required=True)
    _add_data_arguments(evaluate)
    evaluate.add_argument("--limit", type=int, help="evaluate on N test reviews only")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--artifacts", help="artifacts folder (default: the package's own)")

    check = commands.add_parser("guard-check", help="ask the guard about one text")
    check.add_argument("text")

    config = commands.add_parser(
        "config", help="print the settings in effect (every variable of docs/configuration.md)"
    )
    config.add_argument("--json", action="store_true", help="one JSON object")

    from agents.__main__ import ASK_DESCRIPTION, add_ask_arguments

    ask = commands.add_parser(
        "ask",
        help="ask an A2A agent one question (as python -m agents ask)",
        description=ASK_DESCRIPTION,
    )
    add_ask_arguments(ask)

    drift = commands.add_parser(
        "drift", help="offline drift report (Evidently): current texts against a reference"
    )
    from service.drift.cli import add_report_arguments

    add_report_arguments(drift)
    profile = commands.add_parser(
        "drift-profile", help="(re)build the drift reference profile of existing artifacts"
    )
    _add_data_arguments(profile)
    profile.add_argument("--model", action="append", help="artifact name (repeat; default all)")
    profile.add_argument("--artifacts", help="artifacts folder (default: the package's own)")
    profile.add_argument(
        "--score-sample", type=int, default=5000, help="training texts the model scores"
    )

    args = parser.parse_args(argv)
    if args.command == "config":
        return _clear_errors(cmd_config, args)
    if args.command == "ask":
        from agents.__main__ import run_ask

        return run_ask(args)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "train":
        stages = {
            "cnn": ("cnn", "quantize"),
            "student": ("student",),
            "moe": ("moe",),
            "hyperbole": ("hyperbole",),
            None: ("cnn", "quantize", "student", "moe", "hyperbole"),
        }
        return _clear_errors(lambda a: cmd_train(a, stages[a.only]), args)
    if args.command == "quantize":
        return _clear_errors(lambda a: cmd_train(a, ("quantize",)), args)
    if args.command == "evaluate":
        return _clear_errors(cmd_evaluate, args)
    if args.command == "drift":
        return _clear_errors(cmd_drift, args)
    if args.command == "drift-profile":
        return _clear_errors(cmd_drift_profile, args)
    return _clear_errors(cmd_guard_check, args)


def _clear_errors(command, args: argparse.Namespace) -> int:
    """Run a command; a user's mistake (unknown model, bad path, a bad setting) prints one
    line (for settings, one per variable), not a trace."""
    from pydantic import ValidationError

    from service.config import invalid_settings
    from service.models.registry import ArtifactError, UnknownModelError

    try:
        return command(args)
    except ValidationError as error:  # a ValueError too, told per variable
        print(invalid_settings(error), file=sys.stderr)
        return 2
    except (UnknownModelError, ArtifactError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``gis`` command."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
