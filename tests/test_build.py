"""The compiled extension ``ebm_fast._C`` and its build: version, CUDA flag, clean nvcc compile, imports
without a GPU, argument checks, and (slow) a wheel that imports where no compiler is on PATH.

The step's numbers are tested elsewhere: the CPU kernel against the float64 oracle in
``test_langevin_step.py``, the CUDA kernel against the torch backend in ``test_langevin_step_cuda.py``.
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


def test_imports_without_a_gpu_and_the_cuda_entry_point_raises(ext):
    code = (
        "import ebm_fast._C as C\n"
        "args = [8, 8, 0, 1, 4, 4, 4, 8, 4, 4, 8, 8, 1, 1, 0, 0.1, 0, 0.0, 0, 1, 0, 0, 0, False, 0.0,"
        " False, 0.0, 0.0, 8, 8, 0]\n"
        "try:\n"
        "    C.langevin_step_cuda(*args)\n"
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
    "index, value, words",
    [
        (2, 7, "dtype_code"),       # dtype code
        (12, 0, "M (table rows)"),  # M
        (12, 65, "M (table rows)"),
        (13, 33, "N (leaves)"),     # N
        (22, 2, "order"),           # order
        (5, 3, "row strides"),      # x_stride < D with B > 1
    ],
)
def test_bad_arguments_raise_value_error_naming_them(ext, index, value, words):
    x = torch.rand(2, 4)
    out = torch.empty_like(x)
    grads = torch.rand(1, 2, 4)
    energies = torch.rand(1, 2)
    table = torch.tensor([[0.0, 0.0, -1.0, 0.0, 1.0]])
    energy = torch.empty(2)
    flag = torch.zeros(2, dtype=torch.int32)
    args = [x.data_ptr(), out.data_ptr(), 0, 2, 4, 4, 4, grads.data_ptr(), 8, 4, energies.data_ptr(),
            table.data_ptr(), 1, 1, 0, 0.1, 0, 0.0, 0, 1, 0, 0, 0, False, 0.0, False, 0.0, 0.0,
            energy.data_ptr(), flag.data_ptr()]
    ext.langevin_step_cpu(*args)  # the valid call runs
    torch.testing.assert_close(out, x - 0.1 * grads[0])
    args[index] = value
    with pytest.raises(ValueError, match=re.escape(words)):
        ext.langevin_step_cpu(*args)


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
    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ebm_fast" / "assets").rglob("*.pt"))
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
