"""The model room: config, RoPE, attention policies (masks), the static KV cache, the XLA/Pallas
attention seam, the Flax modules (``layers``) and the one jitted ``forward`` (``forward``).
Imports nothing from decode/io/cli/eval/train."""
