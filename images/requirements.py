"""Print calltune's requirements for the given pyproject extras (comma-separated), one a line.

pyproject.toml is the one list of dependencies: the images install from this, never from a list of their own.
"""
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e]
unknown = [e for e in extras if e not in project["optional-dependencies"]]
if unknown:
    sys.exit(f"requirements.py: pyproject.toml has no extras {unknown}; it has {sorted(project['optional-dependencies'])}")
print("\n".join(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]))
