"""Streaming: converting a multi-shard checkpoint keeps the peak resident memory (VmHWM,
measured by the OS in a subprocess) under the largest shard plus a small margin, above the
cost of converting a tiny checkpoint. The ~200 MB case runs in CI; the ~1 GB case only with
NEMODIFF_SLOW=1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nemodiff_jax.io.keymap import hf_param_specs
from convert_weights.safetensors_stream import Entry, write_sharded
from nemodiff_jax.model.config import NLDConfig

from .helpers import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
MARGIN = 64 * MiB  # allocator slack and tensorstore buffers (the largest tensor is 16-32 MiB here)
_MEASURE = (
    "import sys\n"
    "from convert_weights.__main__ import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
    "print('VMHWM_KB', hwm)\n"
    "sys.exit(rc)\n"
)


def generate(directory: Path, layers: int, shard_bytes: int, vocab: int = 8192, seed: int = 0) -> dict:
    """A random fp32 NLD checkpoint (hidden 1024, 11.6M parameters per layer) in shards of at
    most ``shard_bytes``, written one tensor at a time."""
    cfg = NLDConfig(vocab_size=vocab, hidden_size=1024, intermediate_size=2816, num_layers=layers, num_heads=8,
                    num_kv_heads=4, head_dim=128, dtype="float32")
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    rng = np.random.default_rng(seed)
    entries = [Entry(s.hf_name, s.hf_shape, "float32") for s in hf_param_specs(cfg)]
    files = write_sharded(directory, entries, lambda e: rng.random(e.shape, dtype=np.float32), shard_bytes)
    sizes = [(directory / f).stat().st_size for f in files]
    largest = max(e.nbytes for e in entries)
    return {"total": sum(sizes), "largest_shard": max(sizes), "shards": len(files), "largest_tensor": largest,
            "params": sum(int(np.prod(e.shape)) for e in entries)}


def peak_rss(src: Path, out: Path) -> tuple[int, float]:
    """VmHWM in bytes of a subprocess running the port CLI, and its wall time."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(src), str(out), "--quiet"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kb = int(next(line for line in proc.stdout.splitlines() if line.startswith("VMHWM_KB")).split()[1])
    return kb * 1024, time.time() - start


def _check(ref, tmp_path, layers, shard_bytes, vocab):
    info = generate(tmp_path / "big", layers, shard_bytes, vocab)
    base, _ = peak_rss(save_checkpoint(ref, tmp_path / "tiny"), tmp_path / "tiny_out")
    peak, wall = peak_rss(tmp_path / "big", tmp_path / "big_out")
    print(f"\nconverted {info['total'] / MiB:.0f} MiB in {info['shards']} shards (largest {info['largest_shard'] / MiB:.0f} MiB, "
          f"largest tensor {info['largest_tensor'] / MiB:.1f} MiB) in {wall:.1f}s: peak RSS {peak / MiB:.0f} MiB, "
          f"tiny-checkpoint baseline {base / MiB:.0f} MiB, streaming cost {(peak - base) / MiB:.0f} MiB")
    assert peak - base < info["largest_shard"] + MARGIN
    assert peak - base < info["total"] / 3  # far from holding the model, let alone two copies
    assert json.loads((tmp_path / "big_out" / "manifest.json").read_text())["param_count"] == info["params"]


def test_peak_memory_200mb(ref, tmp_path):
    _check(ref, tmp_path, layers=4, shard_bytes=50 * 10**6, vocab=4096)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NEMODIFF_SLOW") != "1", reason="set NEMODIFF_SLOW=1 to run the 1 GB conversion")
def test_peak_memory_1gb(ref, tmp_path):
    _check(ref, tmp_path, layers=20, shard_bytes=250 * 10**6, vocab=8192)
