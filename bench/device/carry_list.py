"""Print ``name==version`` for each runtime dependency of topiary that the device image
lacks (``image_packages.txt``), at the version installed in this environment (what the
suite runs against). ``bundle.sh`` downloads them as Python 3.12 wheels.

    .venv/bin/python bench/device/carry_list.py [--skip NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

IMAGE = Path(__file__).with_name("image_packages.txt")


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: str = "topiary") -> dict[str, str]:
    """Every distribution ``root`` needs at run time (no extras of its own), by name."""
    found: dict[str, str] = {}
    pending = [(root, frozenset[str]())]
    while pending:
        name, extras = pending.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a dependency whose marker excludes this platform
        key = normalised(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            # Markers are read for this interpreter: the device's Python is 3.12, this
            # one 3.11; a difference would show as an import error in checks.sh's smoke.
            if requirement.marker is None or any(
                    requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras)):
                pending.append((requirement.name, frozenset(requirement.extras)))
    found.pop(normalised(root), None)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], help="distributions not to carry")
    options = parser.parse_args()
    on_image = {normalised(word) for line in IMAGE.read_text().splitlines()
                if not line.startswith("#") for word in line.split()}
    skipped = {normalised(name) for name in options.skip}
    for name, version in sorted(runtime_closure().items()):
        if name not in on_image and name not in skipped:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()
