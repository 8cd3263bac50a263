"""Peak resident memory of one ``generate`` call on a model with the real 131k vocabulary.

``python -m nemodiff_jax.decode.rss --mode ar`` builds a random narrow model (hidden 128,
2 layers, vocabulary 131,072: what dominates a long prompt's memory is the vocabulary and the
prompt, not the width), runs ``generate`` greedily on six 1,500-token prompts for 64 new
tokens, and prints one JSON line with the process's peak RSS (``VmHWM``) in GiB. One mode per
process, so each peak is its own. docs/MEMORY.md has the numbers; the target is < 2.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def rss_config(vocab: int = 131072, hidden: int = 128, layers: int = 2):
    from ..model.config import NLDConfig

    return NLDConfig.preset("tiny").replace(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_layers=layers,
        num_heads=4, num_kv_heads=2, head_dim=hidden // 4, max_position_embeddings=8192, block_size=32,
        mask_token_id=3, eos_token_id=2, pad_token_id=0, dtype="float32",
    )


def measure(mode: str, *, prompts: int = 6, prompt_len: int = 1500, new: int = 64, vocab: int = 131072,
            hidden: int = 128, layers: int = 2, block_length: int = 32) -> dict:
    import numpy as np

    import nemodiff_jax as nd

    cfg = rss_config(vocab, hidden, layers)
    model = nd.Model(cfg, nd.init_params(cfg, 0))
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, vocab, size=prompt_len).tolist() for _ in range(prompts)]
    base = peak_rss_gib()
    t0 = time.perf_counter()
    res = nd.generate(model, rows, mode=mode, max_new_tokens=new, block_length=block_length, temperature=0.0)
    return dict(mode=mode, prompts=prompts, prompt_len=prompt_len, new=new, vocab=vocab, hidden=hidden,
                layers=layers, peak_rss_gib=round(peak_rss_gib(), 3), rss_after_init_gib=round(base, 3),
                seconds=round(time.perf_counter() - t0, 1), generated=[len(t) for t in res.tokens])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="ar")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=1500)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=131072)
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.mode, prompts=args.prompts, prompt_len=args.prompt_len, new=args.new,
                             vocab=args.vocab)))


if __name__ == "__main__":
    main()
