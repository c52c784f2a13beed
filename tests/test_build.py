"""The compiled extension ``ebm_fast._C`` and its build: version and constants against the Python side,
CUDA flag, clean nvcc compile, imports without a GPU, argument checks, and (slow) a wheel that imports
where no compiler is on PATH.

The step's numbers are tested in ``test_langevin_step.py`` (every backend against the float64 oracle).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import ebm_fast

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCE = ROOT / "csrc" / "langevin_step_cuda.cu"
NVCC_FLAGS = ROOT / "csrc" / "nvcc_flags.txt"


def _nvcc() -> str | None:
    """The nvcc setup.py would use (CUDACXX, PATH, then the usual install places)."""
    for path in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc"):
        if path and os.path.isfile(path):
            return path
    return None


@pytest.fixture(scope="module")
def ext():
    try:
        from ebm_fast import _C
    except ImportError as exc:
        pytest.fail(f"ebm_fast._C is not built ({exc}): run `pip install --no-build-isolation -e .` first")
    return _C


def _run_python(code: str, env: dict | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_extension_version_matches_package(ext):
    # A stale .so from an older checkout fails here: rebuild with pip install --no-build-isolation -e .
    assert ext.__version__ == ebm_fast.__version__


def test_has_cuda_is_a_bool_and_names_the_architectures(ext):
    assert isinstance(ext.has_cuda, bool)
    if ext.has_cuda:
        assert ext.cuda_archs, "a CUDA build records the architectures it was compiled for"
        assert "native" not in ext.cuda_archs
    else:
        assert ext.cuda_archs == ""


def test_build_includes_cuda_when_nvcc_is_found(ext):
    if _nvcc() is None or os.environ.get("EBM_FAST_NO_CUDA", "0") not in ("", "0"):
        pytest.skip("no nvcc here (or EBM_FAST_NO_CUDA is set): a CPU-only build is expected")
    assert ext.has_cuda, "nvcc is available but ebm_fast._C was built without CUDA; rebuild it"


def test_cuda_source_compiles_without_warnings(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    flags = [line.strip() for line in NVCC_FLAGS.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    cmd = [nvcc, "-c", str(CUDA_SOURCE), "-o", str(tmp_path / "langevin_step_cuda.o"), "-std=c++17",
           "-Xcompiler=-fPIC", "-DEBM_FAST_WITH_CUDA", f"-I{ROOT / 'csrc'}", *flags,
           "-gencode", "arch=compute_90,code=sm_90"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "warning" not in output.lower(), output
    assert (tmp_path / "langevin_step_cuda.o").stat().st_size > 0


def test_extension_needs_no_cuda_library_at_load_time(ext):
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd not found")
    deps = subprocess.run([ldd, ext.__file__], capture_output=True, text=True, timeout=60).stdout
    assert "libcuda" not in deps and "libcudart" not in deps, deps  # cudart is linked statically
    assert "libtorch" not in deps and "libc10" not in deps, deps    # one wheel for every torch


def test_constants_match_the_python_side(ext):
    from ebm_fast import _native, program
    from ebm_fast.kernels import langevin_step as triton_step
    from ebm_fast.step_reference import ORDERS

    for name, want in _native.expected_constants().items():
        assert getattr(ext, name) == want, name
    assert (ext.MAX_NODES, ext.MAX_LEAVES) == (program.MAX_NODES, program.MAX_LEAVES)
    assert (triton_step.MAX_NODES, triton_step.MAX_LEAVES) == (ext.MAX_NODES, ext.MAX_LEAVES)
    assert (triton_step._COLS, triton_step._LEAF, triton_step._SUM) == (ext.TABLE_COLUMNS, ext.NODE_LEAF,
                                                                        ext.NODE_SUM)
    assert triton_step._ULA == ext.ORDER_ULA == ORDERS["ula"]


def test_a_constant_mismatch_names_the_constant_and_both_values(ext):
    from types import SimpleNamespace

    from ebm_fast import _native

    fake = SimpleNamespace(**{name: getattr(ext, name) for name in _native.expected_constants()})
    _native.check_constants(fake)
    fake.MAX_LEAVES = 16
    with pytest.raises(RuntimeError, match=r"MAX_LEAVES is 16 in the extension and 32 in Python .*pip install"):
        _native.check_constants(fake)


def test_imports_without_a_gpu_and_the_cuda_entry_point_raises(ext):
    code = (
        "import torch, ebm_fast._C as C\n"
        "x = torch.rand(1, 4); a = C.StepArgs()\n"
        "a.x = a.out = a.g = a.e = a.table = a.energy_out = a.flag = x.data_ptr()\n"
        "a.B, a.D, a.x_stride, a.out_stride, a.g_stride_n, a.g_stride_b, a.M, a.N = 1, 4, 4, 4, 4, 4, 1, 1\n"
        "try:\n"
        "    C.langevin_step_cuda(a, 0)\n"
        "except RuntimeError as exc:\n"
        "    print('raised', exc)\n"
        "print('has_cuda', C.has_cuda)\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = _run_python(code, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert f"has_cuda {ext.has_cuda}" in proc.stdout
    assert "raised" in proc.stdout, proc.stdout  # no GPU visible: an exception, never a crash or a launch


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("dtype", 7, "dtype must be"),
        ("M", 0, "M (table rows) must be in [1, 64]"),
        ("M", 65, "M (table rows) must be in [1, 64]"),
        ("N", 33, "N (leaves) must be in [1, 32]"),
        ("order", 2, "order must be"),
        ("x_stride", 3, "row strides"),  # x_stride < D with B > 1
        ("flag", 0, "must be non-null"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(ext, field, value, words):
    x = torch.rand(2, 4)
    out = torch.empty_like(x)
    grads = torch.rand(1, 2, 4)
    energies = torch.rand(1, 2)
    table = torch.tensor([[0.0, 0.0, -1.0, 0.0, 1.0]])
    energy = torch.empty(2)
    flag = torch.zeros(2, dtype=torch.int32)
    from ebm_fast import _native

    _native.load()
    args = _native.step_args(x, grads, energies, table, step_size=0.1, noise=0.0, seed=1, step=0, order=0,
                             grad_clip=None, clamp=None, out=out, energy_out=energy, flag=flag)
    assert (args.x, args.B, args.D, args.N, args.M, args.step_size) == (x.data_ptr(), 2, 4, 1, 1,
                                                                          pytest.approx(0.1))
    ext.langevin_step_cpu(args)  # the valid call runs
    torch.testing.assert_close(out, x - 0.1 * grads[0])
    setattr(args, field, value)
    with pytest.raises(ValueError, match=re.escape(words)):
        ext.langevin_step_cpu(args)


@pytest.mark.slow
def test_wheel_imports_where_no_compiler_is_on_path(tmp_path):
    """``pip wheel`` (no isolation: the test venv has the build requirements), then import ``_C`` from
    the unpacked wheel with PATH holding only the interpreter's folder and no CUDA libraries."""
    env = dict(os.environ, EBM_FAST_NO_CUDA=os.environ.get("EBM_FAST_NO_CUDA", "0"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, env=env,
                           timeout=1800)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    (wheel,) = (tmp_path / "dist").glob("ebm_fast-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "unpacked")
    assert any(n.startswith("ebm_fast/_C") and n.endswith(".so") for n in names), names
    assert "ebm_fast/kernels/__init__.py" in names
    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ebm_fast" / "paper" / "assets").rglob("*.pt"))
    assert shipped and all(name in names for name in shipped), (shipped, names)  # judges and concepts
    assert not any(n.startswith(("tests/", "benchmarks/", "csrc/", "kernels/")) for n in names)
    bare_path = str(tmp_path / "bin")
    os.mkdir(bare_path)
    env = {"PATH": bare_path, "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(tmp_path / "unpacked"), "PYTHONNOUSERSITE": "1"}
    code = ("import shutil, ebm_fast._C as C, ebm_fast.version as v\n"
            "assert shutil.which('gcc') is None and shutil.which('nvcc') is None\n"
            "assert C.__file__.startswith(%r), C.__file__\n"
            "print(C.__version__ == v.__version__, C.has_cuda)\n") % str(tmp_path / "unpacked")
    proc = _run_python(code, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("True"), proc.stdout
