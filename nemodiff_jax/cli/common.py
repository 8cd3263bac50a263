"""What every ``nemodiff`` command shares: the one-line error contract (:class:`CLIError`,
:func:`hint`, :func:`squash`), argparse's formatter, rich consoles and spinners, and loading a
model or running ``generate`` with library errors turned into CLI errors.

Command modules (``generate``, ``demo``, ``view``) and the front door import this; it imports
none of them.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")

MODEL_HINT = ("pass --model DIR (a directory with config.json, weights and tokenizer.json), "
              "--model embedded (the shipped model) or --model random (random weights, plumbing only)")

KNOB_HINT = "see `nemodiff {cmd} --help` for the knobs and their ranges"


class CLIError(Exception):
    """A user mistake: printed as one line, exit status 2."""


@contextlib.contextmanager
def hint(advice: str):
    """Turn a library ValueError inside the block into a CLIError that also says what to do."""
    try:
        yield
    except CLIError:
        raise
    except ValueError as e:
        raise CLIError(f"{squash(e)} ({advice})") from e


def squash(e: BaseException | str, limit: int = 320) -> str:
    """A message on one line, cut to ``limit`` characters (``--debug`` shows it whole)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "… (--debug shows all)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one ``--help`` away)."""

    def error(self, message):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def one_line(e: BaseException) -> str:
    text = (str(e) if isinstance(e, CLIError) else squash(e)) or type(e).__name__
    if isinstance(e, OSError) and e.filename:
        text = f"{e.strerror or type(e).__name__}: {e.filename}"
    if not isinstance(e, CLIError) and "--debug" not in text:
        text += " (rerun with --debug for the traceback)"
    return text


def consoles():
    from rich.console import Console

    return Console(highlight=False), Console(stderr=True, highlight=False)


def busy(err_console, text: str):
    """A spinner on stderr while a long step runs (nothing when stderr is not a terminal)."""
    return err_console.status(text) if err_console.is_terminal else contextlib.nullcontext()


def note_random(model, err_console) -> None:
    if str(model.path).startswith("random:"):
        err_console.print(f"note: {model.path} has random weights; its text is gibberish", style="yellow",
                          highlight=False, markup=False)


def load_model(spec: str, dtype: str | None = None):
    """A Model for ``spec``: a directory, ``embedded``, or ``random[:PRESET]`` (random weights)."""
    if spec == "random" or spec.startswith("random:"):
        return random_model(spec.partition(":")[2] or "tiny", dtype)
    from ..io.checkpoint import load

    with hint(MODEL_HINT):
        if spec != "embedded" and not Path(spec).exists():
            raise ValueError(f"model directory {spec} does not exist")
        if spec != "embedded" and not Path(spec).is_dir():
            raise ValueError(f"{spec} is a file, not a model directory")
        try:
            return load(spec, dtype=dtype)
        except (ValueError, CLIError):
            raise
        except Exception as e:  # a corrupt file surfaces as OSError, SafetensorError, ...
            raise ValueError(f"could not load {spec}: {type(e).__name__}: {e}") from e


def random_model(preset: str = "tiny", dtype: str | None = None):
    """Random weights on a preset, with the project's small tokenizer when it fits the preset.

    Output is gibberish: this exists to show the machinery (passes, TPF, identical-to-AR) when
    no trained model is at hand.
    """
    from ..io.tokenizer import Tokenizer
    from ..model.config import NLDConfig
    from ..model.forward import Model, init_params

    with hint("use --model random or random:tiny"):
        cfg = NLDConfig.preset(preset)
    tok_dir = Path(__file__).parent.parent / "data" / "assets" / "tokenizer"
    tokenizer = None
    if preset == "tiny" and (tok_dir / "tokenizer.json").is_file():
        # Its special ids (<pad>=0 <bos>=1 <eos>=2 <mask>=3) are the tiny preset's.
        tokenizer = Tokenizer.from_dir(tok_dir)
        cfg = cfg.replace(vocab_size=tokenizer.vocab_size)
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    return Model(cfg, init_params(cfg), tokenizer, f"random:{preset}")


def encode_prompt(model, text: str, chat: bool = False, system: str | None = None, bos: bool = True) -> list[int]:
    tok = model.tokenizer
    if tok is None:
        raise CLIError(f"the model at {model.path} has no tokenizer.json: pass the prompt as --prompt-ids 1,2,3")
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        with hint("the model's chat template rejected the messages; try without --chat"):
            return tok.apply_chat_template(messages, tokenize=True)
    if not bos:  # --no-bos: the raw ids, nothing added
        return tok.encode(text)
    return tok.encode_prompt(text)  # the library's one encoder (nemodiff_jax.io.tokenizer.encode_prompt)


def run_generate(model, prompts, kw: dict, command: str, warmup: bool = False):
    """generate() with library errors turned into one-line CLI errors."""
    try:
        from ..decode.generate import generate
    except ModuleNotFoundError as e:
        raise CLIError(f"generation is not available in this install ({e})") from None
    with generation_errors(command):
        if warmup:
            generate(model, prompts, **kw)
        return generate(model, prompts, **kw)


@contextlib.contextmanager
def generation_errors(command: str):
    """A library ValueError from generate/stream as a one-line CLIError with the advice that fits."""
    try:
        yield
    except ValueError as e:
        text = squash(e)
        too_long = any(w in text for w in ("max_position_embeddings", "cache_len", "longer than"))
        advice = ("shorten the prompt or lower --max-new-tokens" if too_long
                  else KNOB_HINT.format(cmd=command))
        raise CLIError(f"{text} ({advice})") from e
