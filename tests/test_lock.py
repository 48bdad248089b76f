"""lock/requirements.txt, the versions the images and CI install, is current: every requirement of pyproject.toml
(its dependencies and the extras the lock is compiled from) is pinned there, by a version that satisfies it.
Offline: it reads the two files (lock/compile.sh refreshes the lock)."""
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKED_EXTRAS = re.findall(r"--extra (\S+)", (ROOT / "lock" / "compile.sh").read_text())
# The environment the lock is for (lock/compile.sh: --python-version 3.11 --python-platform x86_64-manylinux_2_28).
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux", "os_name": "posix",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython"}


def pins(text: str) -> dict[str, Version]:
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "-")):
            name, _, version = line.split(";")[0].strip().partition("==")
            assert version, f"lock line without an exact pin: {line!r}"
            found[canonicalize_name(name)] = Version(version)
    return found


def unmet(requirements: list[str], locked: dict[str, Version], extra: str = "") -> list[str]:
    """The requirements (for this target) the lock lacks or pins to a version outside their range."""
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({**TARGET, "extra": extra}):
            continue
        version = locked.get(canonicalize_name(req.name))
        if version is None:
            out.append(f"{text}: not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            out.append(f"{text}: the lock pins {version}")
    return out


def test_the_lock_covers_the_extras_the_images_and_ci_install():
    assert set(LOCKED_EXTRAS) == set(PROJECT["optional-dependencies"]) - {"gpu"}  # gpu: the CUDA trainer only


@pytest.mark.parametrize("extra", ["", *LOCKED_EXTRAS])
def test_every_requirement_is_pinned_by_a_version_that_satisfies_it(extra):
    locked = pins((ROOT / "lock" / "requirements.txt").read_text())
    requirements = PROJECT["optional-dependencies"][extra] if extra else PROJECT["dependencies"]
    assert unmet(requirements, locked, extra) == [], "run `sh lock/compile.sh` to refresh lock/requirements.txt"
    assert locked[canonicalize_name("torch")].local == "cpu"  # never a CUDA build pulled by a free choice


def test_a_stale_lock_is_caught():
    locked = pins("torch==2.13.0+cpu\nkfp==2.16.0\n")
    assert unmet(["kfp==2.17.0", "torch==2.13.0", "openai==3.54.0", "colorama; sys_platform == 'win32'"], locked) == [
        "kfp==2.17.0: the lock pins 2.16.0", "openai==3.54.0: not in the lock"]
