"""The example provider package, installed by pip into a fresh venv, is found and conforms."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.kit.venv import EXAMPLE_PROJECT, create_venv, install_example

DISCOVER = """
import json, pluggy
from api.plugins import hookspecs
pm = pluggy.PluginManager(hookspecs.PROJECT)
pm.add_hookspecs(hookspecs)
pm.load_setuptools_entrypoints("branchpay.providers", name="example")
providers = [cls for result in pm.hook.register_providers() for cls in result]
module = pm.get_plugin("example")
print(json.dumps({
    "distributions": [dist.project_name for _, dist in pm.list_plugin_distinfo()],
    "providers": [[c.name, c.display_name, [m.value for m in c.methods]] for c in providers],
    "module_file": module.__file__,
    "plugin_api": module.BRANCHPAY_PLUGIN_API,
}))
"""


@pytest.fixture(scope="module")
def example_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("example-venv") / "venv"
    python = create_venv(root)
    yield root, python


def _run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=240, cwd=cwd
    )


def test_pip_installs_it_and_a_fresh_process_finds_it_by_entry_point(
    example_venv: tuple[Path, Path],
) -> None:
    root, python = example_venv
    before = _run(python, "-c", "import branchpay_example_provider")
    assert before.returncode != 0, "the example must not be importable before pip installs it"

    install_example(python)

    found = _run(python, "-c", DISCOVER)
    assert found.returncode == 0, found.stderr
    report = json.loads(found.stdout)
    assert report["distributions"] == ["branchpay-example-provider"]
    assert report["providers"] == [["example", "Example Pay", ["QR_CODE", "PAGE"]]]
    assert report["plugin_api"] == 2
    installed_at = Path(report["module_file"]).resolve()
    assert installed_at.is_relative_to(root.resolve()), "imported from outside the venv"
    assert not installed_at.is_relative_to(EXAMPLE_PROJECT), "imported from the source tree"
    assert not list(EXAMPLE_PROJECT.glob("src/*.egg-info")), "the build littered the source tree"


def test_its_conformance_suite_passes_in_that_venv(example_venv: tuple[Path, Path]) -> None:
    _, python = example_venv
    installed = _run(python, "-m", "pip", "show", "branchpay-example-provider")
    if installed.returncode != 0:
        install_example(python)
    result = _run(
        python,
        "-m",
        "pytest",
        str(EXAMPLE_PROJECT / "tests"),
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
        cwd=EXAMPLE_PROJECT,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 19, result.stdout[-2000:]
    # The example has no daily bills, counter sales or in-app pay (all optional): only the
    # kit's cases for those skip, each with its reason.
    skipped = re.search(r"(\d+) skipped", result.stdout)
    assert skipped and int(skipped.group(1)) == sum(OPTIONAL_SKIPS.values()), result.stdout[-2000:]
    reasons = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", result.stdout, re.MULTILINE)
    assert {reason: int(count) for count, reason in reasons} == OPTIONAL_SKIPS, result.stdout[
        -2000:
    ]


OPTIONAL_SKIPS = {
    # the conformance kit's test_bill_* and test_read_bill_* cases
    "ExamplePayProvider does not support daily bills "
    "(supports_bills is false: no download_bill/read_bill); bill cases not run": 4,
    # its counter-sale cases
    "ExamplePayProvider does not offer PAYMENT_CODE: counter cases not run": 6,
    # its in-app (JSAPI) case
    "ExamplePayProvider does not offer JSAPI: in-app cases not run": 1,
}

JOIN_DEMO = """
import contextlib, json, sys
from pathlib import Path
import httpx
from rich.console import Console
from api.plugins.manager import load_plugin_manager
from api.dev.demo import ensure_demo_keys, start_demo_simulators
secrets_dir = Path(sys.argv[1])
plugins = load_plugin_manager()
ensure_demo_keys(plugins, secrets_dir, 0)
with contextlib.ExitStack() as stack:
    started = start_demo_simulators(plugins, secrets_dir, 0, stack, Console(stderr=True))
    page = httpx.get(started["example"] + "/pay/unknown")
print(json.dumps({"started": sorted(started), "page": page.status_code}))
"""


def test_it_joins_the_demo_like_the_built_in_providers(
    example_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    _, python = example_venv
    if _run(python, "-m", "pip", "show", "branchpay-example-provider").returncode != 0:
        install_example(python)
    secrets_dir = tmp_path / "secrets"
    result = _run(python, "-c", JOIN_DEMO, str(secrets_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["started"] == ["alipay", "example", "sandbox", "unionpay", "wechatpay"]
    assert report["page"] == 404  # its simulator answered: no such attempt
    assert (secrets_dir / "example.key").stat().st_mode & 0o777 == 0o600
    gateway = (secrets_dir / "example.gateway").read_text().strip()
    assert gateway.startswith("http://127.0.0.1:") and not gateway.endswith(":0")


def test_the_project_environment_does_not_have_it() -> None:
    from importlib import metadata

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("branchpay-example-provider")
