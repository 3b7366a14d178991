# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Shared by .ci/run and scripts/test-unprivileged; sourced, not run.

# The README's two commands, verbatim: .ci/run fails at once if README.md no
# longer contains them, so the README and CI cannot drift apart.
AIOSPACES_RUN_CMD="python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/aiospaces run -U -r -p --ro-bind / / --proc /proc --as-pid-1 -- sh -c 'ps ax; exit'"
AIOSPACES_TEST_CMD="python3 -m venv .venv && .venv/bin/pip install -e '.[test,dev]' && .venv/bin/python -m pytest"

# The unprivileged user the second CI pass runs as.
AIOSPACES_CI_USER="${AIOSPACES_CI_USER:-aiospaces-ci}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Is there any test file under tests/? (pytest's exit 5, "no tests collected",
# is acceptable only while there is none.)
has_test_files() {
    compgen -G "$1/tests/test_*.py" >/dev/null || compgen -G "$1/tests/**/test_*.py" >/dev/null
}
