"""``python -m convert_weights``: HF NLD checkpoints to JAX and back.

    python -m convert_weights SRC OUT [--dtype bfloat16|float32] [--lora DIR | --no-lora] [--force] [--verify]
    python -m convert_weights --lora ADAPTER OUT          # add a LoRA to a converted OUT
    python -m convert_weights --to-hf SRC OUT [--max-shard-size 5GB] [--dtype ...] [--force] [--verify]

Exit status 0 on success; 2 with a one-line ``error:`` message on any problem, bad arguments
included (OUT is left as it was); 130 when interrupted (SIGINT/SIGTERM: the tensor being written
is finished, the partial directory is removed, OUT is left as it was).
"""

from __future__ import annotations

import argparse
import sys
import time

DTYPES = ("bfloat16", "float32", "float16")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """Usage errors as one line too (exit 2), like every other failure."""
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m convert_weights",
        description="Convert Nemotron-Labs-Diffusion checkpoints between HF/PyTorch layout and nemodiff-jax (orbax).",
    )
    p.add_argument("src", metavar="SRC", help="source directory (or OUT when --lora is given alone)")
    p.add_argument("out", metavar="OUT", nargs="?", help="output directory")
    p.add_argument("--to-hf", action="store_true", help="export a converted directory back to HF safetensors")
    p.add_argument("--dtype", choices=DTYPES, help="parameter dtype to store (default: the source's)")
    p.add_argument("--lora", metavar="DIR", help="a PEFT draft-LoRA adapter directory to convert with the base (or alone into OUT)")
    p.add_argument("--no-lora", action="store_true", help="ignore a bundled linear_spec_lora/ adapter")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--verify", action="store_true", help="compare logits with transformers after converting (needs torch)")
    p.add_argument("--verify-layers", type=int, metavar="N", help="verify with the first N layers only (less memory and time; implies --verify)")
    p.add_argument("--max-shard-size", default="5GB", help="--to-hf shard size limit (default 5GB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def _fixed_mmap_threshold() -> None:
    """Keep tensor-sized allocations out of the heap. glibc raises its mmap threshold after
    each large free (up to 32 MiB), after which freed tensors stay resident in the heap and
    the peak drifts upward with every tensor; a fixed 1 MiB threshold returns each tensor's
    memory to the OS when it is freed, so the peak stays about two tensors."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def main(argv: list[str] | None = None) -> int:
    from nemodiff_jax import guard

    process = argv is None
    args = parser().parse_intermixed_args(argv)
    _fixed_mmap_threshold()
    args.paths = [args.src] + ([args.out] if args.out else [])
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    progress = False if args.quiet else None
    with guard.handling():
        try:
            rc = _run(args, say, progress)
        except KeyboardInterrupt as e:
            print(f"error: {e if isinstance(e, guard.Interrupted) else 'interrupted'}; nothing was written",
                  file=sys.stderr)
            rc = guard.EXIT_INTERRUPTED
        except Exception as e:  # every failure ends as one line and exit status 2
            from nemodiff_jax.io.keymap import CheckpointError

            msg = e.one_line() if isinstance(e, CheckpointError) else " ".join(str(e).split()) or type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            rc = 2
    if process and rc == guard.EXIT_INTERRUPTED:
        guard.exit_now(rc)
    return rc


def _run(args, say, progress) -> int:
    from pathlib import Path

    start = time.time()
    if len(args.paths) == 1:
        if not args.lora or args.to_hf:
            raise ValueError("need SRC and OUT (a single path is only accepted with --lora ADAPTER OUT)")
        from .convert import add_lora

        out = add_lora(args.paths[0], args.lora, force=args.force, progress=progress)
        say(f"added LoRA {args.lora} to {out} in {time.time() - start:.1f}s")
        hf_dir = jax_dir = None
    else:
        src, out = (Path(p) for p in args.paths)
        if args.to_hf:
            if args.lora or args.no_lora:
                raise ValueError("--lora/--no-lora do not apply to --to-hf (the LoRA in SRC is exported when present)")
            from .export import export_hf

            export_hf(src, out, max_shard_size=args.max_shard_size, dtype=args.dtype, force=args.force, progress=progress)
            hf_dir, jax_dir = out, src
        else:
            from .convert import convert_hf

            lora = False if args.no_lora else args.lora
            convert_hf(src, out, dtype=args.dtype, lora=lora, force=args.force, progress=progress, log=say)
            hf_dir, jax_dir = src, out
        say(f"wrote {out} in {time.time() - start:.1f}s")
    if args.verify or args.verify_layers:
        if hf_dir is None:
            raise ValueError("--verify needs SRC and OUT")
        from . import verify

        if not verify.available():
            say("verify skipped: torch and transformers are not installed")
            return 0
        # Both sides run in the dtype that was written: the export's, or the converted one's.
        dtype = args.dtype if args.to_hf else None
        diffs = verify.compare(hf_dir, jax_dir, dtype=dtype, layers=args.verify_layers)
        say("verify: max abs logit difference " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
