"""Local bundling of the shared layer: the tokenkeeper package plus urllib3 and PySocks, without Docker."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsii
from aws_cdk import BundlingOptions, DockerImage, ILocalBundling

__all__ = ["SharedLayerBundling", "pinned_requirement", "shared_layer_bundling_options"]

# CDK falls back to Docker when local bundling returns False. This bundler never returns False, so
# the image is never pulled. It is the image AWS SAM builds Python 3.14 functions in.
FALLBACK_IMAGE = "public.ecr.aws/sam/build-python3.14"
# The layer is built for arm64 and Python 3.14. urllib3 and PySocks are pure Python wheels, but
# naming the target makes pip refuse a compiled wheel built for the machine that runs the synth.
TARGET_PLATFORM = "manylinux2014_aarch64"
TARGET_PYTHON_VERSION = "3.14"


def pinned_requirement(requirements_file: Path, package: str) -> str:
    """Return the ``package==version`` line of ``requirements_file``, or raise ValueError if it is not pinned."""
    pattern = re.compile(rf"^{re.escape(package)}==\S+$", re.IGNORECASE)
    for line in requirements_file.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if pattern.match(requirement):
            return requirement
    raise ValueError(f"{requirements_file} does not pin {package} with '=='. Add a line such as {package}==X.Y.Z.")


@jsii.implements(ILocalBundling)
class SharedLayerBundling:
    """Copy the tokenkeeper package into ``python/`` and pip-install the pinned requirements beside it."""

    def __init__(self, package_dir: Path, requirements: list[str]) -> None:
        self._package_dir = package_dir
        self._requirements = requirements

    def try_bundle(self, output_dir: str, options: BundlingOptions) -> bool:
        site = Path(output_dir) / "python"
        site.mkdir(parents=True, exist_ok=True)
        shutil.copytree(
            self._package_dir,
            site / self._package_dir.name,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )

        command = [
            sys.executable, "-m", "pip", "install",
            "--quiet", "--disable-pip-version-check",
            "--no-deps", "--no-compile",
            "--only-binary=:all:",
            "--platform", TARGET_PLATFORM,
            "--python-version", TARGET_PYTHON_VERSION,
            "--implementation", "cp",
            "--target", str(site),
            *self._requirements,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # Raising rather than returning False keeps CDK from falling back to Docker, which
            # would hide this message behind a failed image pull.
            raise RuntimeError(
                f"Installing {' '.join(self._requirements)} into the shared layer failed "
                f"(pip exit status {result.returncode}): {result.stderr.strip()}"
            )
        return True


def shared_layer_bundling_options(package_dir: Path, requirements: list[str]) -> BundlingOptions:
    return BundlingOptions(
        image=DockerImage.from_registry(FALLBACK_IMAGE),
        local=SharedLayerBundling(package_dir, requirements),
    )
