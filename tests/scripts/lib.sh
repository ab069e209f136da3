# shellcheck shell=bash
# Helpers shared by the shell tests in this directory (sourced, not run): each check prints what
# it checked, a failure says what was expected and stops the test.

checks_passed=0

# Prints a heading for the next group of checks.
step() { echo "== $*"; }

# Records a passed check.
pass() {
  checks_passed=$((checks_passed + 1))
  echo "ok: $*"
}

# Reports a failed check and exits 1 (an EXIT trap still cleans up).
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

# Passes when the text $2 contains $3; otherwise fails with $1 and the text.
expect_contains() {
  local what=$1 text=$2 needle=$3
  case $text in
    *"$needle"*) pass "$what" ;;
    *) fail "$what: expected to find \"$needle\" in: $text" ;;
  esac
}

# Runs "$@" every half second until it succeeds or $2 seconds have passed; $1 names what is
# awaited. Returns 1 on timeout (the caller decides whether that is a failure).
wait_for() {
  local what=$1 timeout_s=$2
  shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${timeout_s}s waiting for: $what" >&2
      return 1
    fi
    sleep 0.5
  done
}
