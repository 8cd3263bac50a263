"""Cost model of one ``block_attention`` call: FLOPs, HBM bytes, roofline time.

Roofline time is ``max(FLOPs / peak, bytes / bandwidth)``: a lower bound no kernel beats.
Two byte counts are given:

* ``ideal``: q read once, the visible K/V of each kv head read once, the output written
  once. What any attention kernel must move.
* ``kernel``: what this kernel's plan moves if nothing stays in L2: K/V once per row tile,
  plus the fp32 split-K partials (written, then read by the merge).

FLOPs count the two matmuls (QK^T and PV, 2 FLOPs per multiply-add) over every visible
(query, key) pair; softmax exponentials are left out (a few % at head_dim 128).

``python -m pallas_kernels.roofline`` prints the table in docs/KERNELS.md.
"""

from __future__ import annotations

import dataclasses
import sys

import jax.numpy as jnp

from pallas_kernels.block_attention import TileConfig, make_plan


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    hbm_bytes_per_s: float
    flops_per_s: float  # dense bf16 tensor-core peak


H100 = Device("H100 SXM", 3.35e12, 989e12)

# Nemotron-Labs-Diffusion 8B (NLD_SPEC 1.2): 34 layers, 32 q heads, 8 kv heads, head_dim 128.
NLD_8B = dict(layers=34, q_heads=32, kv_heads=8, head_dim=128)


@dataclasses.dataclass(frozen=True)
class Cost:
    batch: int
    num_queries: int
    context: int  # cached prefix length; the window adds num_queries more keys
    flops: float
    ideal_bytes: float
    kernel_bytes: float
    num_splits: int
    device: Device

    @property
    def intensity(self) -> float:
        return self.flops / self.ideal_bytes

    @property
    def bound(self) -> str:
        compute_s = self.flops / self.device.flops_per_s
        return "compute" if compute_s > self.ideal_bytes / self.device.hbm_bytes_per_s else "memory"

    @property
    def ideal_s(self) -> float:
        return max(self.flops / self.device.flops_per_s, self.ideal_bytes / self.device.hbm_bytes_per_s)

    @property
    def kernel_s(self) -> float:
        return max(self.flops / self.device.flops_per_s, self.kernel_bytes / self.device.hbm_bytes_per_s)


def window_cost(
    batch: int,
    num_queries: int,
    context: int,
    *,
    q_heads: int = NLD_8B["q_heads"],
    kv_heads: int = NLD_8B["kv_heads"],
    head_dim: int = NLD_8B["head_dim"],
    itemsize: int = 2,
    bidirectional: bool = True,
    cache_len: int | None = None,
    config: TileConfig = TileConfig(),
    device: Device = H100,
) -> Cost:
    """One call for a window of ``num_queries`` after ``context`` cached tokens.

    ``bidirectional``: every query sees all ``context + Q`` keys (a diffusion block);
    otherwise causal inside the window. ``cache_len`` is the static cache size T (default:
    ``context + Q`` rounded up to 512); it only matters for the tile and split-K choice.
    """
    keys = context + num_queries
    cache_len = cache_len or -(-keys // 512) * 512
    pairs = num_queries * keys if bidirectional else num_queries * context + num_queries * (num_queries + 1) // 2
    flops = 4.0 * batch * q_heads * pairs * head_dim
    q_bytes = batch * q_heads * num_queries * head_dim * itemsize  # read q, write out: same size
    kv_bytes = 2.0 * batch * kv_heads * keys * head_dim * itemsize
    plan = make_plan(batch, q_heads, kv_heads, num_queries, cache_len, head_dim, config, itemsize)
    partials = 0.0
    if plan.num_splits > 1:  # acc [bq, D] + m, l [bq] per program, fp32, written then read
        per_program = plan.rows_padded * (plan.dim_padded + 2) * 4
        partials = 2.0 * batch * kv_heads * plan.num_splits * per_program
    return Cost(
        batch=batch,
        num_queries=num_queries,
        context=context,
        flops=flops,
        ideal_bytes=2.0 * q_bytes + kv_bytes,
        kernel_bytes=2.0 * q_bytes + kv_bytes * plan.row_tiles + partials,
        num_splits=plan.num_splits,
        device=device,
    )


def policy_cost(
    policy,
    num_queries: int,
    cache_len: int,
    *,
    q_heads: int = NLD_8B["q_heads"],
    kv_heads: int = NLD_8B["kv_heads"],
    head_dim: int = NLD_8B["head_dim"],
    itemsize: int = 2,
    device: Device = H100,
) -> Cost:
    """Ideal cost of any policy (quadratic, block_diff, ...): visible pairs counted exactly
    from :func:`nemodiff_jax.model.masks.build_mask`; K/V bytes up to the last visible key."""
    import numpy as np

    from nemodiff_jax.model.masks import build_mask

    mask = np.asarray(build_mask(policy, num_queries, cache_len))  # [B, Q, T]
    batch = mask.shape[0]
    pairs = float(mask.sum())
    last_key = np.where(mask.any(axis=1), np.arange(cache_len)[None, :] + 1, 0).max(axis=1)  # [B]
    flops = 4.0 * q_heads * pairs * head_dim
    qo_bytes = 2.0 * batch * q_heads * num_queries * head_dim * itemsize
    kv_bytes = 2.0 * kv_heads * float(last_key.sum()) * head_dim * itemsize
    return Cost(batch, num_queries, int(policy.prefix_len[0]), flops, qo_bytes + kv_bytes, qo_bytes + kv_bytes, 1, device)


def _fmt_time(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.1f} us" if us < 1000 else f"{us / 1000:,.2f} ms"


def markdown_table(
    batches=(1, 16),
    contexts=(4096, 32768),
    num_queries: int = 32,
    layers: int = NLD_8B["layers"],
    device: Device = H100,
) -> str:
    """The 8B roofline table (block ``num_queries``, bidirectional window, bf16)."""
    head = (
        f"| batch | context | Q | GFLOP / layer | HBM MB / layer | FLOP/byte | bound | roofline / layer "
        f"| x{layers} layers | split-K | kernel bytes / layer | kernel roofline x{layers} |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for b in batches:
        for ctx in contexts:
            c = window_cost(b, num_queries, ctx, device=device)
            lines.append(
                f"| {b} | {ctx:,} | {num_queries} | {c.flops / 1e9:,.2f} | {c.ideal_bytes / 1e6:,.1f} "
                f"| {c.intensity:,.0f} "
                f"| {c.bound} | {_fmt_time(c.ideal_s)} | {_fmt_time(c.ideal_s * layers)} | {c.num_splits} "
                f"| {c.kernel_bytes / 1e6:,.1f} MB | {_fmt_time(c.kernel_s * layers)} |"
            )
    return "\n".join(lines)


def other_layouts_table(layers: int = NLD_8B["layers"], device: Device = H100) -> str:
    """Ideal roofline of the quadratic and training layouts and a causal prefill (batch 1)."""
    from nemodiff_jax.model import masks

    one = lambda x: jnp.asarray([x], jnp.int32)  # noqa: E731
    cases = [
        ("quadratic B=16 (Q=272)", masks.quadratic(one(4096), 16), 272, 4096),
        ("quadratic B=32 (Q=1056)", masks.quadratic(one(4096), 32), 1056, 4096),
        ("quadratic B=32 (Q=1056)", masks.quadratic(one(32768), 32), 1056, 32768),
        ("block_diff training, L=2048, block 32 (Q=T=4096)", masks.block_diff(2048, 32, 1), 4096, 0),
        ("causal prefill of 4096 tokens", masks.causal(one(0), 4096), 4096, 0),
    ]
    head = f"| call (batch 1) | context | GFLOP / layer | HBM MB / layer | FLOP/byte | bound | roofline / layer | x{layers} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, pol, nq, ctx in cases:
        c = policy_cost(pol, nq, ctx + nq if ctx else nq, device=device)
        lines.append(
            f"| {name} | {ctx:,} | {c.flops / 1e9:,.1f} | {c.ideal_bytes / 1e6:,.1f} | {c.intensity:,.0f} | {c.bound} "
            f"| {_fmt_time(c.ideal_s)} | {_fmt_time(c.ideal_s * layers)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the roofline tables: block 32 (or ``--q N``), AR step, other layouts."""
    import argparse

    ap = argparse.ArgumentParser(prog="pallas_kernels.roofline", description=__doc__.splitlines()[0])
    ap.add_argument("--q", type=int, default=32, help="queries per call of the first table (block size)")
    args = ap.parse_args(argv)
    print(f"{H100.name}: {H100.hbm_bytes_per_s / 1e12:.2f} TB/s, {H100.flops_per_s / 1e12:.0f} TFLOP/s dense bf16\n")
    print(f"Bidirectional block of {args.q} after the cached context (diffusion step), bf16:\n")
    print(markdown_table(num_queries=args.q))
    print("\nOne AR step (Q=1):\n")
    print(markdown_table(num_queries=1))
    print("\nOther layouts (ideal bytes and FLOPs, exact visible pairs):\n")
    print(other_layouts_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
