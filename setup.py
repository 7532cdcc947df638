"""Build the one native extension: zlbfast._native from zlbfast/_native.pyx and csrc/*.c.

Every C file of the data plane is compiled into the extension so that the
Cython boundary module is the only thing Python imports from C.
ZLBFAST_DEBUG=1 builds with -O0 -g and sanitizers off; the default is -O2.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("ZLBFAST_DEBUG") == "1"
c_sources = sorted(glob.glob("csrc/*.c"))
extra_compile = ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"]
extra_compile += ["-O0", "-g"] if debug else ["-O2"]

ext = Extension(
    "zlbfast._native",
    sources=["zlbfast/_native.pyx", *c_sources],
    include_dirs=["csrc"],
    libraries=["ssl", "crypto", "pthread", "m"],
    extra_compile_args=extra_compile,
    depends=sorted(glob.glob("csrc/*.h")) + sorted(glob.glob("zlbfast/*.pxd")) + sorted(glob.glob("zlbfast/*.pxi")),
)

setup(ext_modules=cythonize([ext], language_level=3, compiler_directives={"embedsignature": True}))
