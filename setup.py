"""Build the C core; all metadata lives in pyproject.toml."""
import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sharedarray._ext",
            sources=["sharedarray/ext/segment.c", "sharedarray/ext/watch.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-std=c11",
                                "-D_GNU_SOURCE"],
            libraries=["rt"] if sys.platform.startswith("linux") else [],
        )
    ],
)
