"""Install provider packages with pip into throwaway virtual environments.

Tests use it to prove that a provider package works the way its users get it:
installed by pip, found through its ``branchpay.providers`` entry point by a
fresh Python process. Everything runs offline.

:func:`create_venv` makes a venv without system site-packages that reaches
this environment's packages (branchpay and its dependencies, pip, setuptools,
pytest) through one ``.pth`` file calling :func:`site.addsitedir`, so nothing
is downloaded; whatever pip installs into the venv lives in the venv's own
site-packages and takes precedence. :func:`install_example` installs the
example package (``examples/branchpay-example-provider``) into any Python
environment, given that environment's interpreter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "examples" / "branchpay-example-provider"

_BUILD_LEFTOVERS = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*")


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def create_venv(path: Path) -> Path:
    """A new venv at ``path`` that sees the current environment's packages; returns its python."""
    venv.EnvBuilder(system_site_packages=False, with_pip=False, clear=True).create(path)
    python = venv_python(path)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parent = sysconfig.get_path("purelib")
    # addsitedir (not a bare path line) so the parent's own .pth files, such as
    # branchpay's editable-install finder, are processed too.
    (Path(purelib) / "_branchpay_parent_env.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n"
    )
    return python


def pip_install(python: Path, project: Path) -> None:
    """``pip install`` the project at ``project`` into ``python``'s environment, offline.

    The project is copied first so the build leaves nothing in its source tree.
    Raises :class:`subprocess.CalledProcessError` (with pip's output) on failure.
    """
    with tempfile.TemporaryDirectory(prefix="bp-pip-") as scratch:
        source = Path(scratch) / project.name
        shutil.copytree(project, source, ignore=_BUILD_LEFTOVERS)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-build-isolation",
                "--disable-pip-version-check",
                str(source),
            ],
            check=True,
            capture_output=True,
            text=True,
        )


def install_example(python: Path) -> None:
    """Install ``branchpay-example-provider`` into the environment of ``python``."""
    pip_install(python, EXAMPLE_PROJECT)
