"""``nemodiff``: the command line, one front door for every part of the project.

Own commands (``generate``, ``chat``, ``demo``) live in ``cli.generate`` and ``cli.demo`` (shared
pieces in ``cli.common``);
the rest delegate their whole argument list to the module that owns the job (training,
evaluation, the weight port, kernel benchmarks). Everything is imported lazily so ``--help``
stays quick and a missing sibling module gives one clean line instead of a traceback.

Error contract: a mistake at the command line (a bad knob, a missing model, a prompt longer
than the context, any ValueError from the library) prints one line on stderr saying what is
wrong and what to do, and exits with status 2. ``--debug`` (anywhere) shows the traceback.
SIGINT/SIGTERM end a command with status 130 (see :mod:`nemodiff_jax.guard`): long jobs finish
their current batch, keep what they finished and remove their temporary files first.
"""

from __future__ import annotations

import importlib
import sys
import traceback

from .common import CLIError, Parser, formatter, hint, one_line, squash  # noqa: F401  (the shared contract, re-exported)

PROG = "nemodiff"

# command -> (module, function, one-line help, examples)
DELEGATES: dict[str, tuple[str, str, str, str]] = {
    "convert": ("convert_weights.__main__", "main", "port an HF/torch NLD checkpoint to JAX",
                "nemodiff convert --help"),
    "train": ("nemodiff_jax.train.cli", "main", "train or fine-tune a model (joint AR + diffusion objective)",
              "nemodiff train --help"),
    "eval": ("nemodiff_jax.eval.cli", "eval_main", "score a model on benchmark tasks", "nemodiff eval --help"),
    "sweep": ("nemodiff_jax.eval.cli", "sweep_main", "sweep decoding knobs: accuracy vs tokens per forward",
              "nemodiff sweep --help"),
    "oracle": ("nemodiff_jax.eval.cli", "oracle_main", "oracle unmasking orders and upper bounds",
               "nemodiff oracle --help"),
    "lm-eval": ("nemodiff_jax.eval.lm_eval_model", "main", "run lm-evaluation-harness tasks (model 'nemodiff'; "
                "needs the lm-eval extra)", "nemodiff lm-eval --help"),
}
BENCH = {"kernels": ("pallas_kernels.bench", "main", "benchmark the Pallas attention kernels"),
         "decode": ("nemodiff_jax.eval.bench_decode", "main", "decode speed of every mode vs torch, side by side")}

EPILOG = """\
examples:
  nemodiff demo                                   every mode on the shipped model, side by side
  nemodiff generate --prompt "reverse: a b c d =>" --mode diffusion --show-canvas
  nemodiff generate --model ./NLD-8B --chat --prompt "Hi!" --mode linear_spec --json
  nemodiff chat --model ./NLD-8B --mode diffusion --threshold 0.9
  nemodiff plan --model 14b --batch 16 --prompt 4096 --dtype bfloat16   memory per device, smallest mesh
  nemodiff infill --prefix "reverse: a b c d =>" --suffix " b a" --length 2 --show-canvas
  nemodiff convert --help | train --help | eval --help | sweep --help | oracle --help
  nemodiff bench decode --repeats 5            every mode vs a torch twin, side by side
  nemodiff bench kernels --help

--debug (anywhere on the line) shows full tracebacks instead of one-line errors."""


def build_parser() -> Parser:
    from . import demo as cli_demo, generate as cli_generate, infill as cli_infill, plan as cli_plan

    parser = Parser(prog=PROG, description="Nemotron-Labs-Diffusion tri-mode LMs in JAX: AR, block diffusion "
                    "and self-speculation from one checkpoint.", epilog=EPILOG, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    cli_generate.add_generate(sub)
    cli_generate.add_chat(sub)
    cli_demo.add_demo(sub)
    cli_plan.add_plan(sub)
    cli_infill.add_infill(sub)
    for name, (_, _, text, _) in DELEGATES.items():
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("bench", help="benchmarks: `nemodiff bench decode ...`, `nemodiff bench kernels ...`", add_help=False)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nemodiff-jax")
    except PackageNotFoundError:
        return "0.1.0 (not installed)"


def _delegate(module: str, func: str, argv: list[str], label: str) -> int:
    """Import ``module`` only now and hand it the rest of the command line."""
    try:
        target = getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise CLIError(f"`{label}` is not available in this install (module {module} is missing)") from None
        raise CLIError(f"`{label}` needs the package {e.name!r}: install it (pip install {e.name}) "
                       "or the project's extras (pip install 'nemodiff-jax[convert]')") from None
    except AttributeError:
        raise CLIError(f"`{label}` is not available: {module} has no {func}()") from None
    result = target(argv)
    return result if isinstance(result, int) else 0


def _command_index(argv: list[str]) -> int | None:
    for i, a in enumerate(argv):
        if not a.startswith("-"):
            return i
    return None


def run(argv: list[str]) -> int:
    i = _command_index(argv)
    command = argv[i] if i is not None else None
    if command in DELEGATES:
        module, func, _, _ = DELEGATES[command]
        return _delegate(module, func, argv[i + 1:], f"{PROG} {command}")
    if command == "bench":
        rest = argv[i + 1:]
        if not rest or rest[0] not in BENCH:
            raise CLIError(f"`{PROG} bench` needs a target: {', '.join(BENCH)} (e.g. `{PROG} bench kernels --help`)")
        module, func, _ = BENCH[rest[0]]
        return _delegate(module, func, rest[1:], f"{PROG} bench {rest[0]}")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    from .. import guard

    process = argv is None  # the console script: leave without teardown after an interrupt
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    with guard.handling():
        try:
            rc = run(argv)
        except KeyboardInterrupt as e:
            if debug:
                traceback.print_exc()
            print(f"{PROG}: {e if isinstance(e, guard.Interrupted) else 'interrupted'}", file=sys.stderr)
            rc = guard.EXIT_INTERRUPTED
        except BrokenPipeError:  # `nemodiff ... | head`
            rc = 0
        except (CLIError, ValueError, OSError, OverflowError) as e:
            if debug:
                traceback.print_exc()
            print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
            rc = 2
    if process and rc == guard.EXIT_INTERRUPTED:
        guard.exit_now(rc)  # interpreter teardown with XLA threads alive is what segfaulted
    return rc


