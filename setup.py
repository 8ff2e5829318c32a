"""Build the optional CPU kernels of selective relevance; everything else is configured in pyproject.toml.

The kernels (``src/motion_relevance/explain/_selective_cpu.cpp``) form a plain C++ shared library loaded with
ctypes: no Python or PyTorch headers, about a second to compile. They are compiled here, at install time, never
at import or first use. On x86-64 a second copy is built for AVX2 and chosen at run time when the CPU has it
(``explain/_selective_kernel.py``). ``optional=True``: without a C++ compiler or OpenMP the install still
succeeds and selective relevance runs on its tensor-op implementation (same results, slower on CPU).
"""

import platform
import sys

from setuptools import Extension, setup

SOURCES = "src/motion_relevance/explain"

if sys.platform == "win32":
    COMPILE, LINK, AVX2 = ["/O2", "/openmp"], [], ["/arch:AVX2"]
else:
    # No -march=native: the library must run on any machine of the architecture it is copied to.
    # -ffp-contract=off keeps every product and sum rounded as written (no FMA): both copies compute the same G;
    # their statistics, summed in double in a different order, can differ only in the last bits of a double.
    COMPILE = ["-O3", "-fopenmp", "-ffp-contract=off", "-std=c++17", "-fvisibility=hidden"]
    LINK, AVX2 = ["-fopenmp"], ["-mavx2"]


def kernel(name: str, extra: list[str]) -> Extension:
    return Extension(
        f"motion_relevance.explain.{name}",
        sources=[f"{SOURCES}/{name}.cpp"],
        language="c++",
        extra_compile_args=COMPILE + extra,
        extra_link_args=LINK,
        optional=True,
    )


extensions = [kernel("_selective_cpu", [])]
if platform.machine().lower() in ("x86_64", "amd64"):
    extensions.append(kernel("_selective_cpu_avx2", AVX2))

setup(ext_modules=extensions)
