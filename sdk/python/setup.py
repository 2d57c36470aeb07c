"""Build hook: generates the stubs (generate.py) before setuptools collects the package.

Everything else about the package is declared in pyproject.toml. The protos
live at the repository's root (../../proto), so the package builds from a
checkout of the repository; a build without them uses stubs already present
in asyncgate/_proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402


class BuildWithStubs(build_py):
    """`build_py` that regenerates `asyncgate/_proto` first."""

    def run(self) -> None:
        if (generate.DEFAULT_PROTOS / "asyncgate" / "v1").is_dir():
            generate.generate()
        elif not (generate.DEFAULT_OUT / "v1" / "ticket_pb2.py").exists():
            raise SystemExit("asyncgate: neither the protos (../../proto) nor generated stubs are present")
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
