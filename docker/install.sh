#!/bin/sh
# The container image's install steps: the Dockerfile runs this script, and tests/test_container.py runs it in a
# fresh virtualenv, so what the test proves is what the image does.
#
#   sh docker/install.sh VARIANT SOURCE     VARIANT: cpu or cuda; SOURCE: a copy of the project (default: .)
#
# $PYTHON is the interpreter whose environment receives the packages (default: python).
set -eu
variant="${1:-cpu}"
source="${2:-.}"
python="${PYTHON:-python}"
case "$variant" in
  cpu) requirements="$source/docker/requirements.txt" ;;
  cuda) requirements="$source/docker/requirements-cuda.txt" ;;
  *) echo "docker/install.sh: unknown variant '$variant' (use cpu or cuda)" >&2; exit 2 ;;
esac
# Every package pinned (the serving stack included), then the project itself without letting pip pick anything
# else; `pip check` fails the build if the pins do not satisfy pyproject.toml's dependencies.
"$python" -m pip install -r "$requirements"
"$python" -m pip install --no-deps "$source"
"$python" -m pip check
