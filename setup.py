"""Only the compiled part of kvsweep; everything else is in pyproject.toml.

The fused KL reduction (workers/_kl_fused.c) is an optional extension: where it cannot be
built (no C compiler, not x86-64), the install goes on and workers/kl_math.py uses numpy.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kvsweep.workers._kl_fused",
            sources=["workers/_kl_fused.c"],
            depends=["workers/_kl_fused_simd.h"],
            include_dirs=["workers"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
