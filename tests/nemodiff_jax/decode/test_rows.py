"""rows: the shared commit-step helpers against python walks over explicit rows."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from nemodiff_jax.decode.rows import accept_cap

EOS = 11


def test_accept_cap_is_the_first_eos_and_the_limit():
    """accept_cap against a python walk over random spans: drafted token j (j >= 1) lands at
    generated index first_out + j, so a cycle may accept drafts 1..j while span[j] is not past
    the first EOS of the span and first_out + j is under the limit."""
    rng = np.random.default_rng(0)
    span = rng.choice([EOS, 20, 21, 22], size=(200, 8), p=[0.15, 0.3, 0.3, 0.25])
    first_out, limit = rng.integers(-1, 20, 200), rng.integers(1, 24, 200)
    got = np.asarray(accept_cap(jnp.asarray(span, jnp.int32), jnp.asarray(first_out, jnp.int32),
                                jnp.asarray(limit, jnp.int32), EOS))
    for b in range(200):
        cap = 0
        for j in range(1, span.shape[1]):
            if EOS in span[b, :j].tolist() or first_out[b] + j >= limit[b]:
                break
            cap = j
        assert got[b] == cap, (span[b], first_out[b], limit[b])
