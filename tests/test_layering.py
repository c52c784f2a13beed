"""The package's two layers: the library core never imports the paper's reproduction or the CLI.

Core = every module under ``ebm_fast/`` except ``ebm_fast/paper/`` (the reproduction) and
``ebm_fast/cli/`` (the ``ebm-fast`` command, which may use both). Imports are read from the source
(function-local ones included), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ebm_fast"
UPPER = ("ebm_fast.paper", "ebm_fast.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path, name: str | None = None) -> set[str]:
    """Absolute dotted names of everything ``path`` (module ``name``) imports (``from X import y``
    gives X and X.y)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def core_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py")
                  if not any(p.is_relative_to(PKG / sub) for sub in ("paper", "cli")) and p.name != "cli.py")


def _is_upper(name: str) -> bool:
    return any(name == u or name.startswith(u + ".") for u in UPPER)


def test_the_import_reader_sees_relative_and_local_imports(tmp_path):
    # the checker itself must be able to fail: a core-like file with each kind of forbidden import
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    from .paper import judges\n    from . import cli\n    import ebm_fast.paper.scenes\n")
    names = _imported(fake, "ebm_fast.probe")
    assert {"ebm_fast.paper", "ebm_fast.cli", "ebm_fast.paper.scenes"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_core_module_does_not_import_the_reproduction_or_the_cli(path):
    bad = sorted(n for n in _imported(path) if _is_upper(n))
    assert not bad, f"{path.relative_to(PKG.parent)} imports {bad}: the library core must not use them"


def _python_prints(code: str) -> str:
    """What a fresh interpreter running ``code`` prints (it must succeed)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_importing_the_public_api_loads_no_reproduction_module():
    code = ("import sys, ebm_fast as ef\n"
            "ef.sample, ef.langevin, ef.ReplayBuffer, ef.mcmc, ef.diffusion\n"
            "import ebm_fast.training, ebm_fast.infer, ebm_fast.models, ebm_fast.chains\n"
            "print(sorted(m for m in sys.modules if m.startswith(('ebm_fast.paper', 'ebm_fast.cli'))))\n")
    assert _python_prints(code) == "[]"


def test_old_module_paths_still_import_with_a_deprecation_warning():
    code = ("import warnings\nwarnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    import ebm_fast.judges as old\n"
            "    from ebm_fast.data.scenes import SHAPES\n"
            "import ebm_fast.paper.judges as new\n"
            "assert old is new\n"
            "print(sorted({str(x.category.__name__) for x in w}), len(w))\n")
    assert _python_prints(code) == "['DeprecationWarning'] 3"
