"""Build the C core; all metadata lives in pyproject.toml.

``SHAREDARRAY_WERROR=1`` (set by ``make ci``) turns compiler warnings into
errors.
"""
import os
import sys

from setuptools import Extension, setup

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-std=c11", "-D_GNU_SOURCE"]
if os.environ.get("SHAREDARRAY_WERROR") == "1":
    CFLAGS.append("-Werror")

setup(
    ext_modules=[
        Extension(
            "sharedarray._ext",
            sources=[
                "sharedarray/ext/segment.c",
                "sharedarray/ext/watch.c",
            ],
            extra_compile_args=CFLAGS,
            libraries=["rt"] if sys.platform.startswith("linux") else [],
        )
    ],
)
