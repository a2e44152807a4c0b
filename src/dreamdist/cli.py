"""Command line: ``dreamdist <command>``; flags are built from the typed config dataclasses.

``main(argv)`` returns an exit code (0 ok, 2 bad input, 128+signal when interrupted), so tests
call it in-process. User errors print one clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import types
import typing
from collections.abc import Callable

from dreamdist import __version__

if typing.TYPE_CHECKING:
    from dreamdist.config import TrainConfig


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


GIVEN = "_given_fields"  # Namespace attribute: the fields whose flags the command line gave (``given_fields``)


def _note_given(namespace: argparse.Namespace, dest: str) -> None:
    # a fresh set each time: a sub-command's namespace is copied into the parent's key by key
    setattr(namespace, GIVEN, {*getattr(namespace, GIVEN, ()), dest})


class _Store(argparse.Action):
    """Store a flag's value and note that it was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _note_given(namespace, self.dest)


class _Switch(argparse.BooleanOptionalAction):
    """``--x`` / ``--no-x``, noting that it was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _note_given(namespace, self.dest)


def given_fields(args: argparse.Namespace) -> set[str]:
    """Dataclass fields whose flags appear on the command line (also when given at their default value)."""
    return set(getattr(args, GIVEN, ()))


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), optional: bool = False
) -> None:
    """One flag per dataclass field: type from the annotation, help from ``metadata['help']``.

    ``optional``: required fields get optional flags (None when not given), e.g. when a resumed run
    can take them from its record.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None -> X
            kind = next(a for a in args if a is not type(None))
            args = typing.get_args(kind)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        text = f.metadata.get("help", "")
        names = [_flag(f.name), *f.metadata.get("aliases", ())]
        if kind is bool:
            parser.add_argument(*names, action=_Switch, default=default, help=text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(*names, action=_Store, nargs="+", type=args[0], default=default, help=text)
        else:
            suffix = "" if required or default is None else f" (default: {default})"
            choices = f.metadata.get("choices")
            parser.add_argument(
                *names,
                action=_Store,
                type=kind,
                default=default,
                required=required and not optional,
                choices=choices,
                help=text + suffix,
            )


def _values(cls: type, args: argparse.Namespace) -> dict:
    """The parsed flags of ``cls``'s fields."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def from_args(cls: type, args: argparse.Namespace, **overrides):
    """Build ``cls`` from the parsed flags of its fields (plus explicit overrides)."""
    return cls(**{**_values(cls, args), **overrides})


# ---------------------------------------------------------------- commands
def train_configs(args: argparse.Namespace):
    """(TrainConfig, method config) of a ``train`` command line.

    On ``--resume`` / ``--resume-from``, flags not given take the values recorded in the checkpoint
    being resumed (``dreamdist.training.resume.inherit``), so only the flags given count as changes.
    """
    from dreamdist.config import TrainConfig
    from dreamdist.methods import get_method
    from dreamdist.training.resume import inherit, recorded_run

    given = given_fields(args)
    values = _values(TrainConfig, args)
    resuming = bool(values["resume"] or values["resume_from"])
    recorded = recorded_run(values["out"], values["resume_from"]) if resuming and values["out"] else None
    if recorded is not None:
        values = inherit("TrainConfig", recorded["train_config"], values, given)
    config_cls = get_method(values["method"]).config
    method_values = _values(config_cls, args)
    if recorded is not None and get_method(recorded["method"]).config is config_cls:
        method_values = inherit(config_cls.__name__, recorded["method_config"], method_values, given)
    missing = [
        _flag(f.name)
        for cls, fields in ((TrainConfig, values), (config_cls, method_values))
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and fields.get(f.name) is None
    ]
    if missing:
        where = f" (there is no checkpoint in {values['out']} to take them from)" if resuming else ""
        raise ValueError(f"the following arguments are required: {', '.join(missing)}{where}")
    return TrainConfig(**values), config_cls(**method_values)


def cmd_train(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from dreamdist.runlock import RunLock
    from dreamdist.training.loop import train

    config, method_config = train_configs(args)
    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun / accelerate launch: rank 0 holds the run
    if main_rank:
        _check_run_folder(config, args.overwrite)
    if config.model == "toy":
        print("using the built-in toy model (pass --model to train on a real checkpoint)", file=sys.stderr)
    with RunLock(config.out) if main_rank else nullcontext():  # one trainer per run folder
        out = train(config, method_config)
    from accelerate import PartialState

    if PartialState().is_main_process:  # one report per run, also under torchrun / accelerate launch
        print(f"done: artifact in {out}/dreamdist.safetensors")
        print(f"next: dreamdist generate {out} --num-images 16 --out {out}/generated")
    return 0


def _check_run_folder(config: TrainConfig, overwrite: bool) -> None:
    """The output policy (``dreamdist.outputs``) for ``train --out``: ``--resume`` continues the run in
    it, ``--overwrite`` replaces it; a folder of other files is refused."""
    from dreamdist.outputs import TRAIN, check_output

    if overwrite and config.resume:
        raise ValueError("give --resume (continue the run) or --overwrite (replace it), not both")
    if overwrite and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the other ranks would race the removal
        raise ValueError(f"--overwrite with several processes: remove {config.out} first, or choose another --out")
    hint = "pass --resume to continue it, " if not config.resume else ""
    check_output(config.out, TRAIN, overwrite, resumable=config.resume, resume_hint=hint)


def parse_mix(items: list[str]) -> tuple[list[str], list[float]]:
    """``["runs/a:0.3", "runs/b:0.7"]`` -> paths and weights (the last ':' splits), as given."""
    paths, weights = [], []
    for item in items:
        path, sep, weight = item.rpartition(":")
        if not sep:
            raise ValueError(f"--mix takes PATH:WEIGHT items, e.g. runs/a:0.3; got {item!r}")
        try:
            weights.append(float(weight))
        except ValueError:
            raise ValueError(f"--mix weight of {path!r} is not a number: {weight!r}") from None
        if not math.isfinite(weights[-1]) or weights[-1] < 0:
            raise ValueError(f"--mix weight of {path!r} must be a number >= 0; got {weight!r}")
        paths.append(path)
    return paths, weights


def normalise_weights(weights: list[float]) -> list[float]:
    """Weights divided by their sum (as the studio does); refuses all-zero weights."""
    total = sum(weights)
    if total <= 0:
        raise ValueError("--mix weights are all 0; give at least one weight > 0, e.g. runs/a:0.3 runs/b:0.7")
    return [w / total for w in weights]


def cmd_generate(args: argparse.Namespace) -> int:
    from dreamdist.config import GenerateConfig
    from dreamdist.generation import generate
    from dreamdist.prompts import prompt_set

    artifacts, weights = list(args.artifacts), None
    if args.mix:
        if artifacts:
            raise ValueError("give artifacts either positionally or with --mix, not both")
        artifacts, given = parse_mix(args.mix)
        weights = normalise_weights(given)
        if not math.isclose(sum(given), 1.0, abs_tol=1e-3):
            shown = ", ".join(f"{w:.4g}" for w in weights)
            print(f"note: --mix weights sum to {sum(given):.4g}; normalised to {shown}", file=sys.stderr)
    config = from_args(GenerateConfig, args, artifacts=artifacts, weights=weights)
    count = f"{config.num_images} images"
    if config.prompt_set is not None:  # --num-images is per prompt: every prompt equally represented
        prompts = len(prompt_set(config.prompt_set))
        count = f"{prompts} prompts x {config.num_images} images = {prompts * config.num_images} images"
        print(f"prompt set {config.prompt_set!r}: {count}", file=sys.stderr)
    result = generate(config, overwrite=args.overwrite)
    reused = f"; {result.reused} of them were already in {config.out}, from an earlier run" if result.reused else ""
    print(f"wrote {count}{reused}: {result.grid} and {result.manifest}")
    return 0


def cmd_interpret(args: argparse.Namespace) -> int:
    from dreamdist.api import interpret
    from dreamdist.vocab import PIECE

    table = interpret(args.artifact, args.model, args.top_k, args.allow_pickle)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for name, tokens in table.items():
        print(f"concept {name!r}: nearest words of each learned token (mean over the K prompts; cosine)")
        for m, words in enumerate(tokens):
            print(f"  token {m + 1}: " + ", ".join(f"{w} ({s:.2f})" for w, s in words))
    print(f"('{PIECE}' marks a word piece: the start or middle of a longer word)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from dreamdist.artifact import load_artifact

    artifact = load_artifact(args.artifact, args.allow_pickle)
    print(json.dumps(artifact.meta, indent=2))
    return 0


def plain(text: str) -> str:
    """reStructuredText markup (``:class:`X```, double backticks, ``*emphasis*``) -> plain text."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"`{1,2}([^`]+)`{1,2}", r"\1", text).replace("**", "")


def _key_flag(f: dataclasses.Field) -> str:
    """``--class-noun (required)``, ``--num-prompts 32``, ``--instance-prompt 'a {}'``: a flag and its default."""
    if f.default is dataclasses.MISSING:
        return f"{_flag(f.name)} (required)"
    if f.default is None or isinstance(f.default, bool):
        return _flag(f.name)
    quoted = isinstance(f.default, str) and (" " in f.default or not f.default)
    return f"{_flag(f.name)} {f.default!r}" if quoted else f"{_flag(f.name)} {f.default}"


KEY_FLAGS = 3  # flags shown per method: the required ones, then the first fields of its config


def cmd_methods(args: argparse.Namespace) -> int:
    from dreamdist.methods import get_method, method_names

    print("Training methods (dreamdist train --method NAME; add --help for all of a method's flags):")
    for name in method_names():
        config_cls = get_method(name).config
        summary = plain((config_cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "))
        fields = sorted(dataclasses.fields(config_cls), key=lambda f: f.default is dataclasses.MISSING, reverse=True)
        shown = fields[: max(KEY_FLAGS, sum(f.default is dataclasses.MISSING for f in fields))]
        print(f"\n{name}\n    {summary}\n    key flags: {', '.join(_key_flag(f) for f in shown)}")
    return 0


# ---------------------------------------------------------------- parser
def build_parser(method: str | None = "dreamdistribution", resuming: bool = False) -> argparse.ArgumentParser:
    """The full parser; ``method`` selects which method's flags ``train`` shows.

    ``method=None`` leaves the method flags out: other commands do not need them, and importing
    the methods (torch, diffusers) would make ``dreamdist --help`` take seconds. ``resuming``: no
    ``train`` flag is required (a resumed run takes what is not given from its record).
    """
    from dreamdist.config import GenerateConfig, TrainConfig
    from dreamdist.outputs import add_overwrite_flag

    parser = argparse.ArgumentParser(
        prog="dreamdist",
        description="Learn prompt distributions from reference images and generate from them.",
    )
    parser.add_argument("--version", action="version", version=f"dreamdist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (skipped files, resumes)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="learn from a folder of reference images",
        description="Learn from a folder of reference images. Each method has its own flags: "
        "'dreamdist train --method NAME --help' lists them (see 'dreamdist methods' for the names). "
        "Without --model, the built-in toy model is used.",
    )
    add_dataclass_args(train, TrainConfig, optional=resuming)
    add_overwrite_flag(train)
    if method is not None:
        from dreamdist.methods import get_method

        add_dataclass_args(train.add_argument_group(f"{method} options"), get_method(method)[0], optional=resuming)
    train.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="generate images from run folder(s) or a plain prompt")
    gen.add_argument("artifacts", nargs="*", help="run folder(s) or artifact file(s)")
    gen.add_argument(
        "--mix",
        nargs="+",
        metavar="PATH:WEIGHT",
        help="compose artifacts by weight (weights are normalised to sum to 1)",
    )
    add_dataclass_args(gen, GenerateConfig, skip=("artifacts", "weights"))
    add_overwrite_flag(gen)
    gen.set_defaults(func=cmd_generate)

    interp = sub.add_parser("interpret", help="nearest vocabulary words of the learned prompt tokens")
    interp.add_argument("artifact", help="run folder or artifact file")
    interp.add_argument("--model", default=None, help="backbone (default: the one recorded in the artifact)")
    interp.add_argument("--top-k", type=int, default=5, help="words per token (default: 5)")
    interp.add_argument("--json", action="store_true", help="print JSON")
    interp.add_argument("--allow-pickle", action="store_true", help="accept pickle artifacts (weights_only=True)")
    interp.set_defaults(func=cmd_interpret)

    info = sub.add_parser("info", help="print an artifact's metadata")
    info.add_argument("artifact", help="run folder or artifact file")
    info.add_argument("--allow-pickle", action="store_true", help="accept pickle artifacts (weights_only=True)")
    info.set_defaults(func=cmd_info)

    methods = sub.add_parser("methods", help="list training methods")
    methods.set_defaults(func=cmd_methods)

    for register in _extensions():
        register(sub)
    if "eval" in sub.choices:  # the evaluation package registers eval; the output policy's flag is added here
        add_overwrite_flag(sub.choices["eval"])
    return parser


def _extensions() -> list[Callable]:
    """Sub-command groups contributed by other modules (evaluation, toy world)."""
    found = []
    for module in (
        "dreamdist.evaluation.cli",
        "dreamdist.toyworld.cli",
        "dreamdist.classify.cli",
        "dreamdist.studio.cli",
        "dreamdist.study.cli",
        "dreamdist.synth.cli",
        "dreamdist.sample_prompts",
    ):
        try:
            found.append(__import__(module, fromlist=["register"]).register)
        except ImportError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
    return found


def quiet_libraries(verbose: bool) -> None:
    """Keep library chatter (weight-loading bars, backend notes) out of the user's terminal."""
    if verbose:
        return
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def _train_flags(argv: list[str]) -> argparse.Namespace | None:
    """``--method``, ``--out``, ``--resume``, ``--resume-from`` of a ``train`` command line; None for other commands."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command != "train":
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=None)
    pre.add_argument("--out", default=None)
    pre.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False)
    pre.add_argument("--resume-from", default=None)
    return pre.parse_known_args(argv)[0]


def _resuming(argv: list[str]) -> bool:
    """Whether ``argv`` resumes a training run."""
    flags = _train_flags(argv)
    return flags is not None and bool(flags.resume or flags.resume_from)


def _method_of(argv: list[str]) -> str | None:
    """The ``--method`` of a ``train`` command line; None for other commands.

    Not given: the resumed run's recorded method on ``--resume``, else dreamdistribution.
    """
    flags = _train_flags(argv)
    if flags is None:
        return None
    if flags.method is None and _resuming(argv) and flags.out is not None:
        from dreamdist.training.resume import recorded_run

        try:
            recorded = recorded_run(flags.out, flags.resume_from)
        except (OSError, ValueError):  # a bad --resume-from is reported by the command itself
            recorded = None
        if recorded is not None:
            return recorded["method"]
    return flags.method or "dreamdistribution"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dreamdist`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_method_of(argv), resuming=_resuming(argv))
    except ValueError as exc:  # unknown --method
        print(f"dreamdist: error: {exc}", file=sys.stderr)
        return 2
    if not argv:  # as pip does: the commands, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    quiet_libraries(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # TrainingInterrupted carries the signal; a plain Ctrl-C is SIGINT
        print(f"dreamdist: {exc or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except Exception as exc:
        # user-facing failures (bad input, missing files, mismatched backbone, refused pickle, aborted
        # training) are ValueError / OSError / TrainingAborted: one line, exit 2; anything else is a bug
        from dreamdist.training.loop import TrainingAborted

        if not isinstance(exc, (ValueError, OSError, TrainingAborted)):
            raise
        print(f"dreamdist: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
