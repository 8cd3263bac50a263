"""The house, read from the source: no import circles between files, and arrows that run one way.

Every ``import`` and ``from ... import`` in ``nemodiff_jax/``, ``pallas_kernels/`` and
``convert_weights/`` counts, at module level and inside functions alike (relative imports resolved,
``from pkg import sub`` counted as an import of ``pkg.sub`` when ``sub`` is a module). Nothing is
imported or executed, so the check needs no JAX.

Arrows (docs/DESIGN.md, "Arrows"): cli/eval/train -> decode -> model -> kernels, io -> model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nemodiff_jax", "pallas_kernels", "convert_weights")

# (importer prefix, forbidden target prefixes, allowed exceptions)
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("nemodiff_jax.model", ("nemodiff_jax.decode", "nemodiff_jax.io", "nemodiff_jax.cli", "nemodiff_jax.eval",
                            "nemodiff_jax.train", "nemodiff_jax.data"), ()),
    ("nemodiff_jax.decode", ("nemodiff_jax.cli", "nemodiff_jax.eval", "nemodiff_jax.train", "nemodiff_jax.io"), ()),
    ("nemodiff_jax.io", ("nemodiff_jax.decode", "nemodiff_jax.cli", "nemodiff_jax.eval", "nemodiff_jax.train"), ()),
    # The kernel sees the model only through the policy it is handed (masks is a leaf).
    ("pallas_kernels", ("nemodiff_jax",), ("nemodiff_jax.model.masks",)),
    ("nemodiff_jax.model", ("convert_weights",), ()),
    ("nemodiff_jax.decode", ("convert_weights",), ()),
    ("nemodiff_jax.io", ("convert_weights",), ()),
    ("nemodiff_jax.cli", ("convert_weights",), ()),
    ("nemodiff_jax.eval", ("convert_weights",), ()),
    ("nemodiff_jax.data", ("convert_weights",), ()),
]
# The one arrow from the library into the converter: `nemodiff train export` writes an HF
# directory with the converter's streaming writer (convert_weights.export). It sits at the top
# of the house (a command), and convert_weights never imports train, so no circle can form.
KNOWN_CONVERTER_USERS = ("nemodiff_jax.train.export",)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    mods = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            mods[module_name(path, root)] = path
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The in-project modules that ``name`` (at ``path``) imports, anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            # the longest known module the dotted name starts with
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    mods = source_modules(root, packages)
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan), each sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def backward_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            for importer, forbidden, allowed in RULES:
                if _under(src, importer) and any(_under(dst, f) for f in forbidden) \
                        and not any(_under(dst, a) for a in allowed):
                    bad.append(f"{src} -> {dst}")
            if _under(src, "nemodiff_jax") and _under(dst, "convert_weights") and src not in KNOWN_CONVERTER_USERS:
                bad.append(f"{src} -> {dst}")
    return sorted(set(bad))


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_arrows_run_one_way():
    bad = backward_arrows(import_graph())
    assert not bad, "backward arrows: " + ", ".join(bad)


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # module level, relative: decode/ar.py -> model/forward.py
    assert "nemodiff_jax.model.forward" in graph["nemodiff_jax.decode.ar"]
    # function level, absolute: the attention seam -> the kernel
    assert "pallas_kernels.block_attention" in graph["nemodiff_jax.model.attention"]
    # `from . import demo as cli_demo` inside a function
    assert "nemodiff_jax.cli.demo" in graph["nemodiff_jax.cli"]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_the_check_can_fail(tmp_path):
    """A tiny synthetic house with a function-level circle and a backward arrow."""
    _write(tmp_path, {
        "nemodiff_jax/__init__.py": "",
        "nemodiff_jax/model/__init__.py": "",
        "nemodiff_jax/model/a.py": "def f():\n    from ..decode import b\n",
        "nemodiff_jax/decode/__init__.py": "",
        "nemodiff_jax/decode/b.py": "from nemodiff_jax.model.a import f\n",
        "pallas_kernels/__init__.py": "",
        "pallas_kernels/k.py": "import nemodiff_jax.model.a\n",
        "convert_weights/__init__.py": "",
    })
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["nemodiff_jax.decode.b", "nemodiff_jax.model.a"]]
    assert backward_arrows(graph) == ["nemodiff_jax.model.a -> nemodiff_jax.decode.b",
                                      "pallas_kernels.k -> nemodiff_jax.model.a"]
    with pytest.raises(AssertionError):
        assert not cycles(graph)


def test_cycles_on_a_bare_graph():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
