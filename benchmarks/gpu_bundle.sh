#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on the device tool's GPU image, fetched here into .whl/ (ignored by git):
# exactly benchmarks/gpu_bundle.txt's name==version lines, for CPython 3.12 on manylinux x86-64, each --no-deps.
# A package PyPI has only as an sdist is built here (pip wheel --no-deps), and must come out pure Python.
# Wheels already in .whl/ at their listed version are kept, anything else there is removed (two versions of one
# package stop the install on the machine). Fails if the bundle and the tree that travels with it (tracked and
# untracked files git does not ignore) exceed 48 MiB: the device carries at most 64 MiB a call.
#
#   benchmarks/gpu_bundle.sh     # then gpu_check.sh on the device, with carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
LIMIT_MIB=48
PY=${PIP_PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}  # fetches for 3.12 all the same
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DEST"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

keep=()
while read -r spec; do
  name=${spec%%==*} version=${spec#*==}
  stem=$(tr 'A-Z.-' 'a-z__' <<< "$name")-$version-  # a wheel's file name: the normalised name, then the version
  have=$(find "$DEST" -maxdepth 1 -iname "$stem*.whl" | head -n 1)
  if [[ -z $have ]]; then
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$build/bin" "$spec" 2> "$build/err"
    then
      grep -q "No matching distribution" "$build/err" || { cat "$build/err" >&2; exit 1; }
      "$PY" -m pip wheel -q --no-deps -w "$build/src" "$spec"  # no wheel on PyPI: build it from the sdist
    fi
    have=$(find "$build" -iname "$stem*.whl" | head -n 1)
    [[ -n $have ]] || { echo "gpu_bundle: $spec: pip produced no wheel" >&2; exit 1; }
    [[ $have != "$build/src/"* || $have == *-none-any.whl ]] || \
      { echo "gpu_bundle: $spec: its sdist built into compiled code here, which need not run there" >&2; exit 1; }
    mv "$have" "$DEST/"
    have=$DEST/$(basename "$have")
  fi
  keep+=("$have")
done < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' benchmarks/gpu_bundle.txt)

for f in "$DEST"/*; do  # one version of each package, and nothing else
  [[ -e $f ]] || continue
  [[ " ${keep[*]} " == *" $f "* ]] || { echo "gpu_bundle: removing $f (not in benchmarks/gpu_bundle.txt)"; rm -rf "$f"; }
done

bytes() { xargs -0 stat -c %s -- 2>/dev/null | awk '{s += $1} END {printf "%d\n", s}'; }
bundle=$(find "$DEST" -type f -print0 | bytes)
tree=$(git ls-files -z --cached --others --exclude-standard | bytes)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
total=$((bundle + tree))
echo "bundle: ${#keep[@]} wheels, $(mib "$bundle") MiB in $DEST/; tree: $(mib "$tree") MiB; together $(mib "$total") MiB" \
     "of the $LIMIT_MIB MiB allowed (the device carries at most 64 MiB a call)"
if (( total > LIMIT_MIB * 1048576 )); then
  echo "gpu_bundle: the bundle and the tree exceed $LIMIT_MIB MiB: drop a wheel or shrink the tree" >&2
  exit 1
fi
