"""``nemodiff generate`` and ``nemodiff chat``, plus what every model-running command shares:
model resolution (a directory, ``embedded`` or ``random``), the decoding knobs, prompt encoding,
and the per-run statistics line."""

from __future__ import annotations

import json
import sys
import textwrap

from .common import (MODES, CLIError, busy, consoles, encode_prompt, formatter, generation_errors, hint, load_model,
                     note_random, run_generate)

REPLAY_NOTE = textwrap.fill("Streaming: one plain-text prompt streams live (nd.stream returns to the host after every "
               "round and prints the tokens decided so far). With several prompts or --show-canvas the output "
               "is replayed pass by pass from stats['commit_pass'] (the forward pass that committed each "
               "token): the order and grouping are the decoder's but the pace is not.", 88)

GENERATE_EXAMPLES = """\
examples:
  nemodiff generate --prompt "reverse: a b c d e f =>" --mode diffusion --show-canvas
  nemodiff generate --prompt "sort: 3 1 2 =>" --mode linear_spec --json
  nemodiff generate --model ./NLD-8B --chat --prompt "Why is the sky blue?" --mode diffusion \\
      --block-length 32 --threshold 0.9 --max-new-tokens 512
  nemodiff generate --model random --prompt-ids 1,17,42 --mode quadratic_spec --max-new-tokens 32
  echo "long prompt" | nemodiff generate --prompt - --mode ar

""" + REPLAY_NOTE

CHAT_EXAMPLES = """\
examples:
  nemodiff chat --model ./NLD-8B --mode diffusion --threshold 0.9
  nemodiff chat --mode linear_spec --system "Answer briefly."
  printf 'hi\\n/reset\\nagain\\n/exit\\n' | nemodiff chat --model ./NLD-8B

in the chat: /exit (or /quit, Ctrl-D) leaves, /reset clears the history, /mode MODE switches mode.
""" + REPLAY_NOTE


# ---------------------------------------------------------------------- arguments
def add_model_args(p) -> None:
    p.add_argument("--model", default="embedded", metavar="PATH|embedded|random",
                   help="model directory, `embedded` (default, the shipped small model) or `random`")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="parameter dtype override")


def add_knob_args(p, default_mode: str = "diffusion", mode: bool = True) -> None:
    g = p.add_argument_group("decoding knobs (library defaults when omitted)")
    if mode:
        g.add_argument("--mode", choices=MODES, default=default_mode, help=f"decoding mode (default {default_mode})")
    g.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="default 128")
    g.add_argument("--block-length", type=int, metavar="B", help="diffusion/speculation block (default: config)")
    g.add_argument("--threshold", type=float, metavar="TAU",
                   help="diffusion: commit every token with confidence >= TAU (default 0.9 at the config's "
                   "block, 32 for NLD: the official chat default and SGLang's FastDiffuser; --policy quota runs "
                   "the one-token-per-pass schedule); linear_spec: draft threshold (default 0: one draft pass, "
                   "the harness default)")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="1 = off")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--policy", default="threshold",
                   help="diffusion unmask policy: threshold, quota, margin, entropy, leftmost, random, eb")
    g.add_argument("--policy-param", action="append", metavar="KEY=VALUE",
                   help="mode-specific knob, repeatable: diffusion gamma=G (eb policy); linear_spec "
                   "acceptance=speculative|match; quadratic_spec ar_mix_weight=W")
    g.add_argument("--no-lora", action="store_true", help="do not use the draft LoRA even if the model has one")
    g.add_argument("--max-thinking-tokens", type=int, metavar="N",
                   help="force </think> after N generated tokens (end-think id from the tokenizer)")
    g.add_argument("--warmup", action="store_true",
                   help="run once untimed first (compilation is always timed apart from the decode)")


def add_view_args(p) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print tokens, text and statistics as JSON (no replay)")
    g.add_argument("--show-canvas", action="store_true",
                   help="draw the block being denoised live: masks, just-committed and settled tokens")
    g.add_argument("--no-stream", action="store_true", help="print the output at once, no replay")
    g.add_argument("--replay-delay", type=float, metavar="S",
                   help="seconds per forward pass in the replay (default: ~2 s in all, 0 when not a terminal)")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate from a prompt in any mode", description=(
        "Generate a continuation in one of the four modes from one checkpoint."), epilog=GENERATE_EXAMPLES,
        formatter_class=formatter)
    add_model_args(p)
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="prompt text; repeat for a batch; `-` reads stdin")
    p.add_argument("--prompt-ids", action="append", metavar="ID,ID,...", help="a prompt as token ids")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", metavar="TEXT", help="system message (with --chat)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend BOS to a raw text prompt")
    add_knob_args(p)
    add_view_args(p)
    p.set_defaults(func=cmd_generate)


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="interactive multi-turn chat with the chat template",
                       description="Multi-turn chat on stdin, any mode, with statistics per turn.",
                       epilog=CHAT_EXAMPLES, formatter_class=formatter)
    add_model_args(p)
    p.add_argument("--system", metavar="TEXT", help="system message")
    add_knob_args(p)
    p.add_argument("--no-stream", action="store_true", help="print each answer at once, no replay")
    p.add_argument("--replay-delay", type=float, metavar="S", help="seconds per forward pass in the replay")
    p.set_defaults(func=cmd_chat, json=False, show_canvas=False)


# ---------------------------------------------------------------------- model and knobs


def knobs(args, model) -> dict:
    """generate() keyword arguments from parsed knobs (only the ones the user gave, plus seeds)."""
    kw = dict(mode=args.mode, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
              top_k=args.top_k, top_p=args.top_p, seed=args.seed, policy=args.policy)
    if args.block_length is not None:
        kw["block_length"] = args.block_length
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    if args.policy_param:
        kw["policy_params"] = dict(parse_param(p) for p in args.policy_param)
    if args.no_lora:
        kw["lora"] = False
    if args.max_thinking_tokens is not None:
        if model.tokenizer is None:
            raise CLIError("--max-thinking-tokens needs a tokenizer to find </think>; this model has none")
        kw.update(max_thinking_tokens=args.max_thinking_tokens, end_think_token_id=model.tokenizer.end_think_id)
    return kw


def parse_param(text: str) -> tuple[str, float | str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise CLIError(f"--policy-param wants KEY=VALUE, got {text!r}")
    try:
        return key.strip(), float(value)
    except ValueError:
        return key.strip(), value.strip()


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise CLIError(f"--prompt-ids wants integers separated by commas, got {text!r}") from None
    if not ids:
        raise CLIError("--prompt-ids is empty")
    return ids


def stats_line(result, row: int = 0) -> str:
    """One row's statistics; a batch shares one wall time, so its rate counts every row's tokens."""
    n = len(result.tokens[row])
    batch = len(result.tokens)
    total = sum(len(t) for t in result.tokens)
    rate = total / result.wall_time if result.wall_time > 0 else 0.0
    per = f"{rate:.1f} tok/s decode" + (f" (batch of {batch})" if batch > 1 else "")
    compile_s = getattr(result, "compile_time", 0.0)
    return (f"[{result.mode}] {n} tokens · {result.nfe[row]} forward passes · TPF {result.tpf[row]:.2f} · "
            f"{per} · decode {result.wall_time:.2f} s · compile {compile_s:.2f} s")


def result_json(model, result, prompts: list[list[int]], texts: list[str | None], kw: dict) -> dict:
    rows = []
    for i, ids in enumerate(result.tokens):
        n = len(ids)
        stats = {}
        for k, v in result.stats.items():
            v = v[i] if getattr(v, "ndim", 0) >= 1 and v.shape[0] == len(result.tokens) else v
            if k == "commit_pass":
                v = v[:n]
            stats[k] = v.tolist() if hasattr(v, "tolist") else v
        rows.append(dict(prompt=texts[i], prompt_ids=prompts[i], tokens=ids,
                         text=result.texts[i] if result.texts else None, num_tokens=n, nfe=result.nfe[i],
                         tpf=result.tpf[i], tokens_per_s=n / result.wall_time if result.wall_time > 0 else None,
                         stats=stats))
    return dict(model=model.path, mode=result.mode, knobs=kw, wall_time=result.wall_time,
                compile_time=getattr(result, "compile_time", 0.0), results=rows)


def finite_json(x):
    """NaN and infinities as null, so ``--json`` stays strict JSON."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


# ---------------------------------------------------------------------- showing a result
def show(model, result, row: int, args, console, err_console) -> None:
    """Print one row: streamed replay, canvas, or at once; then its stats line on stderr."""
    from . import view as cli_view

    tokens = result.tokens[row]
    commit_pass = result.stats.get("commit_pass")
    order = cli_view.commit_order(len(tokens), None if commit_pass is None else commit_pass[row])
    tok = model.tokenizer
    interactive = console.is_terminal
    delay = cli_view.replay_delay(len(cli_view.frames(order)), args.replay_delay, interactive)
    if args.no_stream:
        delay = 0.0
    if args.show_canvas:
        piece = (lambda t: tok.decode([t], skip_special=False)) if tok else (lambda t: f"<{t}>")
        special = tok.is_special if tok else (lambda t: False)
        block = args.block_length or model.config.block_size
        cli_view.show_canvas(console, tokens, order, piece, special, block, result.mode == "diffusion", delay,
                             total_passes=result.nfe[row], title=f"[{result.mode}] ")
    else:
        decode = tok.decode if tok else (lambda ids: " ".join(map(str, ids)) + " ")
        if args.no_stream:
            sys.stdout.write(decode(tokens))
        else:
            cli_view.stream(tokens, order, decode, sys.stdout.write, delay, sys.stdout.flush)
        sys.stdout.write("\n")
        sys.stdout.flush()
    err_console.print(stats_line(result, row), style="dim", highlight=False, markup=False)


def stream_live(model, prompts, kw):
    """Print one prompt's continuation as the engine decides it (true streaming, not a replay)."""
    from ..decode.generate import stream

    tok = model.tokenizer
    decode = tok.decode if tok else (lambda ids: " ".join(map(str, ids)) + " ")
    shown, result = "", None
    for upd in stream(model, prompts, every=1, **kw):
        text = decode(upd.tokens[0])
        if text.startswith(shown):
            sys.stdout.write(text[len(shown):])
        else:  # a tokenizer merge changed the tail: print the rest on a fresh line
            sys.stdout.write("\n" + text)
        sys.stdout.flush()
        shown, result = text, upd.result
    sys.stdout.write("\n")
    sys.stdout.flush()
    return result


# ---------------------------------------------------------------------- commands
def cmd_generate(args) -> int:
    console, err = consoles()
    prompts_text: list[str | None] = []
    for text in args.prompt or []:
        prompts_text.append(read_stdin("--prompt -").rstrip("\n") if text == "-" else text)
    ids_given = [parse_ids(t) for t in args.prompt_ids or []]
    if not prompts_text and not ids_given:
        raise CLIError("give a prompt: --prompt TEXT (or --prompt - for stdin, or --prompt-ids 1,2,3)")
    if args.system and not args.chat:
        raise CLIError("--system needs --chat")
    with busy(err, f"loading {args.model} ..."):
        model = load_model(args.model, args.dtype)
    note_random(model, err)
    prompts = [encode_prompt(model, t, args.chat, args.system, not args.no_bos) for t in prompts_text] + ids_given
    texts = prompts_text + [None] * len(ids_given)
    kw = knobs(args, model)
    if len(prompts) == 1 and not (args.json or args.show_canvas or args.no_stream or args.warmup):
        with generation_errors("generate"):
            result = stream_live(model, prompts, kw)
        err.print(stats_line(result, 0), style="dim", highlight=False, markup=False)
        return 0
    with busy(err, f"generating ({args.mode}; the first call compiles) ..."):
        result = run_generate(model, prompts, kw, "generate", args.warmup)
    if args.json:
        print(json.dumps(finite_json(result_json(model, result, prompts, texts, kw)), ensure_ascii=False,
                         allow_nan=False))
        return 0
    for row in range(len(prompts)):
        if len(prompts) > 1:
            err.print(f"--- prompt {row + 1}: {texts[row] if texts[row] is not None else prompts[row]}",
                      style="bold", highlight=False, markup=False)
        show(model, result, row, args, console, err)
    return 0


def read_stdin(what: str) -> str:
    """All of standard input, or a one-line error when it is closed (``<&-``) or unreadable."""
    if sys.stdin is None or sys.stdin.closed:
        raise CLIError(f"{what} reads standard input, which is closed")
    try:
        return sys.stdin.read()
    except (OSError, ValueError) as e:
        raise CLIError(f"{what}: cannot read standard input ({squash(e)})") from None


def cmd_chat(args) -> int:
    if sys.stdin is None or sys.stdin.closed:
        raise CLIError("chat reads its turns from standard input, which is closed")
    console, err = consoles()
    with busy(err, f"loading {args.model} ..."):
        model = load_model(args.model, args.dtype)
    note_random(model, err)
    if model.tokenizer is None or not model.tokenizer.chat_template:
        raise CLIError(f"the model at {model.path} has no chat template (chat_template.jinja or tokenizer_config.json); "
                       "use `nemodiff generate` with a raw prompt instead")
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    err.print(f"chat with {model.path} in {args.mode} mode · /exit quits · /reset clears · /mode MODE switches",
              style="dim", highlight=False, markup=False)
    while True:
        if interactive:
            err.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = []
            err.print("(history cleared)", style="dim")
            continue
        if line.startswith("/mode"):
            choice = line.partition(" ")[2].strip()
            if choice not in MODES:
                err.print(f"error: /mode wants one of {', '.join(MODES)}", style="red", highlight=False)
            else:
                args.mode = choice
                err.print(f"(mode: {choice})", style="dim")
            continue
        if line.startswith("/"):
            err.print("error: commands are /exit, /reset, /mode MODE", style="red")
            continue
        turn = history + [{"role": "user", "content": line}]
        try:
            with hint("try /reset to clear the history"):
                ids = model.tokenizer.apply_chat_template(system + turn, tokenize=True)
            result = run_generate(model, [ids], knobs(args, model), "chat")
        except CLIError as e:  # a bad turn does not end the chat
            err.print(f"error: {e}", style="red", highlight=False, markup=False)
            continue
        show(model, result, 0, args, console, err)
        history = turn + [{"role": "assistant", "content": (result.texts or [""])[0].strip()}]
    return 0
