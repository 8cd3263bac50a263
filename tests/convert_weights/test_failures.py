"""Every failure is one CheckpointError listing all problems, the CLI exits 2 with one line,
and OUT is left as it was (no partial output, nothing beside it)."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import nemodiff_jax as nd
from convert_weights.__main__ import main
from convert_weights.convert import convert_hf
from nemodiff_jax.io.keymap import CheckpointError
from nemodiff_jax.io.sources import TensorSource

from .helpers import make_lora, save_checkpoint


@pytest.fixture(scope="module")
def good(ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return save_checkpoint(ref, root / "src", "single", "float32"), make_lora(root / "adapter", ref)


def _copy(path, tmp_path, name="bad"):
    return shutil.copytree(path, tmp_path / name)


def _rewrite(src, edit):
    sd = load_file(str(src / "model.safetensors"))
    edit(sd)
    save_file(sd, str(src / "model.safetensors"))


def _edit_config(src, **changes):
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


def _fails(args, tmp_path, capsys, *expected):
    """Run the CLI, expect exit 2, one stderr line naming every ``expected`` fragment, no OUT."""
    out = tmp_path / "out"
    assert main([*args, str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for frag in expected:
        assert frag in err, (frag, err)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    return err


def test_missing_unexpected_and_shape_problems_listed_together(good, tmp_path, capsys):
    src = _copy(good[0], tmp_path)

    def edit(sd):
        del sd["encoder.layers.1.mlp.up_proj.weight"]
        sd["encoder.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
        sd["encoder.norm.weight"] = torch.ones(65)

    _rewrite(src, edit)
    with pytest.raises(CheckpointError) as e:
        convert_hf(src, tmp_path / "out", progress=False)
    assert len(e.value.problems) == 3
    _fails([str(src)], tmp_path, capsys, "3 problem(s)", "missing key encoder.layers.1.mlp.up_proj.weight",
           "unexpected key encoder.layers.0.self_attn.q_norm.weight", "shape mismatch for encoder.norm.weight")
    with pytest.raises(CheckpointError, match="missing key"):  # load refuses the same way
        nd.load(src)


def test_shape_disagrees_with_config(good, tmp_path, capsys):
    src = _copy(good[0], tmp_path)
    _edit_config(src, intermediate_size=100)
    err = _fails([str(src)], tmp_path, capsys, "6 problem(s)", "config expects (100, 64)")
    assert "encoder.layers.1.mlp.down_proj.weight" in err


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_truncated_or_corrupt_safetensors(good, tmp_path, capsys, damage):
    src = _copy(good[0], tmp_path)
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-1000] if damage == "truncate" else b"\xff" * 8 + data[8:])
    _fails([str(src)], tmp_path, capsys, "cannot read model.safetensors (truncated or corrupt safetensors file)")


def test_sharded_missing_and_corrupt_shards_reported_per_file(ref, tmp_path, capsys):
    src = save_checkpoint(ref, tmp_path / "src", "sharded")
    (src / "model-00002-of-00003.safetensors").unlink()
    (src / "model-00003-of-00003.safetensors").write_bytes(b"garbage")
    err = _fails([str(src)], tmp_path, capsys, "2 problem(s)", "names shard model-00002-of-00003.safetensors, which does not exist",
                 "cannot read model-00003-of-00003.safetensors")
    assert "missing key" not in err  # the tensors of unreadable shards are not listed again


def test_unknown_dtypes(good, tmp_path, capsys):
    src = _copy(good[0], tmp_path)
    _rewrite(src, lambda sd: sd.update({"encoder.norm.weight": sd["encoder.norm.weight"].double(),
                                         "encoder.layers.0.input_layernorm.weight": sd["encoder.layers.0.input_layernorm.weight"].to(torch.int8)}))
    _fails([str(src)], tmp_path, capsys, "2 problem(s)", "unsupported dtype float64 for encoder.norm.weight", "unsupported dtype int8")
    bad_cfg = _copy(good[0], tmp_path, "cfg")
    _edit_config(bad_cfg, torch_dtype="float8_e4m3fn")
    _fails([str(bad_cfg)], tmp_path, capsys, "config.json", "dtype must be float32, bfloat16 or float16")
    with pytest.raises(SystemExit) as e:  # an unknown --dtype is a usage error (exit 2), also one line
        main([str(good[0]), str(tmp_path / "out"), "--dtype", "float8"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'float8'" in err


@pytest.mark.parametrize(
    "kind,frags",
    [
        ("rank", ["adapter rank does not fit: adapter_config.json says r=8, lora_A tensors have rank [4]", "shape mismatch"]),
        ("layers", ["adapter layer count does not fit: it covers 3 layer(s)", "unexpected key encoder.layers.2.self_attn.o_proj.lora_A.weight"]),
        ("short", ["adapter layer count does not fit: it covers 1 layer(s)", "missing key encoder.layers.1.self_attn.o_proj.lora_B.weight"]),
        ("target", ["target_modules must be ['o_proj']"]),
    ],
)
def test_lora_that_does_not_fit(ref, good, tmp_path, capsys, kind, frags):
    kw = {"rank": dict(config_rank=8), "layers": dict(layers=3), "short": dict(layers=1),
          "target": dict(extra_config={"target_modules": ["q_proj", "o_proj"]})}[kind]
    adapter = make_lora(tmp_path / "adapter", ref, **kw)
    _fails([str(good[0]), "--lora", str(adapter)], tmp_path, capsys, *frags)
    # alone into an existing OUT: refused the same way, OUT unchanged
    out = tmp_path / "jax"
    convert_hf(good[0], out, progress=False)
    before = sorted(p.name for p in out.iterdir())
    assert main(["--lora", str(adapter), str(out)]) == 2
    assert frags[0] in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before and not nd.load(out).has_lora


def test_non_empty_out_refused_without_force(good, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main([str(good[0]), str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([str(good[0]), str(out), "--force", "--quiet"]) == 0
    assert not (out / "keep.txt").exists() and (out / "params").is_dir()
    assert main([str(good[0]), str(good[0]), "--force"]) == 2  # never over the source
    assert "would overwrite the source" in capsys.readouterr().err


def test_failure_while_writing_leaves_out_untouched(good, tmp_path, monkeypatch):
    """A read error in the middle of the write (after every check passed): OUT keeps its old
    content and no temporary directory is left beside it."""
    out = tmp_path / "out"
    convert_hf(good[0], out, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls = {"n": 0}
    real_get = TensorSource.get

    def flaky(self, name):
        calls["n"] += 1
        if calls["n"] == 7:
            raise CheckpointError([f"cannot read tensor {name}: disk on fire"], "src")
        return real_get(self, name)

    monkeypatch.setattr(TensorSource, "get", flaky)
    with pytest.raises(Exception, match="disk on fire"):
        convert_hf(good[0], out, force=True, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_damaged_converted_directory_is_refused_at_load(good, tmp_path):
    out = convert_hf(good[0], tmp_path / "out", progress=False)
    _edit_config(out, hidden_size=32, intermediate_size=100)
    with pytest.raises(CheckpointError, match="shape mismatch for layers.mlp.up_proj"):
        nd.load(out)
