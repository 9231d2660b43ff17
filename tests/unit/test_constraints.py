"""constraints.txt pins every package `pip install -e '.[test]'` brings in, at the version installed.

The Makefile installs with `-c constraints.txt`, so CI and `make run` get the versions the suite
passed with. A dependency added to pyproject.toml without `make lock` would be installed at
whatever version is newest that day; a pin that no longer matches the environment means the
file was edited by hand or the environment was changed without it. Either fails here.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt pins exact versions only: {line!r}"
            found[canonicalize_name(name)] = version
    return found


def installed_requirements(root: str = "crm", extras: tuple[str, ...] = ("test",)) -> dict[str, str]:
    """Every distribution crm (with its test extra) needs, transitively, with the version installed."""
    seen: dict[str, str] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        if (canonicalize_name(name), frozenset(wanted)) in walked:
            continue
        walked.add((canonicalize_name(name), frozenset(wanted)))
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if requirement.marker is not None and not any(requirement.marker.evaluate(e) for e in environments):
                continue
            seen[canonicalize_name(requirement.name)] = metadata.version(requirement.name)
            todo.append((requirement.name, tuple(requirement.extras)))
    return seen


def test_constraints_pin_every_installed_requirement_at_its_installed_version() -> None:
    pinned, needed = pins(), installed_requirements()
    assert {"fastapi", "eventsourcing", "psycopg", "uvicorn", "pytest"} <= set(needed)  # the walk found them
    missing = sorted(set(needed) - set(pinned))
    assert not missing, f"not in constraints.txt (run `make lock`): {missing}"
    differing = {name: (pinned[name], version) for name, version in needed.items() if pinned[name] != version}
    assert not differing, f"constraints.txt vs installed: {differing}"
