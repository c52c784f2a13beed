"""Build of ebm_fast with its C++/CUDA extension ``ebm_fast._C`` (CMakeLists.txt, csrc/).

Metadata lives in pyproject.toml. Environment:
  CMAKE_ARGS                extra CMake arguments, e.g. "-DCMAKE_CUDA_ARCHITECTURES=90"
  EBM_FAST_NO_CUDA=1        build the CPU kernel only, even when nvcc is found
  EBM_FAST_CUDA_ARCHS       CUDA architectures (default "80-real;90")
  CUDACXX                   the nvcc to use (else nvcc on PATH, /usr/local/bin, /usr/local/cuda/bin)
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs (default: all cores)
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_namespace_packages, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__\s*=\s*"([^"]+)"', (ROOT / "ebm_fast" / "version.py").read_text()).group(1)


def _tool(module: str, attr: str, name: str) -> str:
    """cmake / ninja from their PyPI packages (build requirements) when importable, else from PATH."""
    try:
        return str(Path(getattr(__import__(module), attr)) / name)
    except (ImportError, AttributeError):
        return shutil.which(name) or name


def _nvcc() -> str | None:
    for path in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc"):
        if path and os.path.isfile(path):
            return path
    return None


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()  # source tree when inplace/editable
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        user_args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
        args = [
            "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'BIN_DIR', 'ninja')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DEBM_FAST_VERSION={VERSION}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("EBM_FAST_NO_CUDA", "0") not in ("", "0"):
            args.append("-DEBM_FAST_CUDA=OFF")
        else:
            args.append("-DEBM_FAST_CUDA=ON")  # explicit: a reused build folder may have cached OFF
            if not any(a.startswith("-DCMAKE_CUDA_COMPILER") for a in user_args) and (nvcc := _nvcc()):
                args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(self.parallel or os.cpu_count() or 1)
        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_temp), *args, *user_args], check=True)
        subprocess.run([cmake, "--build", str(build_temp), "-j", jobs], check=True)


# The shipped weights (judges, concepts) live in folders without __init__.py: listed as namespace
# packages of their own, each with its *.pt files.
ASSETS = find_namespace_packages(include=["ebm_fast.paper.assets", "ebm_fast.paper.assets.*"])

setup(
    packages=find_packages(include=["ebm_fast", "ebm_fast.*"]) + ASSETS
    + ["ebm_fast.kernels"] + [f"ebm_fast.kernels.{p}" for p in find_packages("kernels")],
    package_dir={"ebm_fast.kernels": "kernels"},
    package_data={p: ["*.pt"] for p in ASSETS},
    ext_modules=[Extension("ebm_fast._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
