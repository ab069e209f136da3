#!/usr/bin/env bash
# Tests install.sh as a user runs it: it builds and installs both binaries into a temporary
# PREFIX, they run, running it again (even while an installed binary is running) replaces them
# and leaves nothing behind, the default PREFIX is ~/.local/bin for a user and /usr/local/bin for
# root, --uninstall removes them, and without cargo on PATH it stops with a message saying how to
# get cargo.
#
# The build goes through the same `cargo build --locked` as the default, with the dev profile
# (INSTALL_TEST_PROFILE, default dev): `cargo test` has built nearly all of it already, while a
# release build would cost CI ten minutes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$repo/tests/scripts/lib.sh"
install_sh=$repo/install.sh
profile=${INSTALL_TEST_PROFILE:-dev}

work=$(mktemp -d)
admin_pid=
cleanup() {
  if [ -n "$admin_pid" ]; then kill "$admin_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
prefix=$work/bin

step "install into a fresh PREFIX (given in the environment), building with cargo"
out=$(PREFIX=$prefix "$install_sh" --profile "$profile" 2>&1) || fail "install.sh failed: $out"
expect_contains "reports the installed admin" "$out" "installed $prefix/ravel_admin"
expect_contains "reports the installed replica" "$out" "installed $prefix/ravel_node"
expect_contains "warns that PREFIX is not on PATH" "$out" "$prefix is not on your PATH"
expect_contains "ravel_admin --version runs" "$("$prefix/ravel_admin" --version)" "ravel_admin "
expect_contains "ravel_node --version runs" "$("$prefix/ravel_node" --version)" "ravel_node "

step "install again while the installed ravel_admin is running"
"$prefix/ravel_admin" start --http 127.0.0.1:0 --grpc 127.0.0.1:0 --backupPath "$work/admin" \
  >"$work/admin.log" 2>&1 &
admin_pid=$!
# Once the process executes the installed file, copying over that file fails ("text file busy").
running_installed_admin() { [ "$(readlink "/proc/$admin_pid/exe")" = "$prefix/ravel_admin" ]; }
wait_for "the installed ravel_admin to run" 30 running_installed_admin \
  || fail "the installed ravel_admin did not start: $(cat "$work/admin.log")"
out=$(PATH=$prefix:$PATH "$install_sh" --prefix "$prefix" --profile "$profile" 2>&1) \
  || fail "re-running install.sh over a running binary failed: $out"
pass "re-running install.sh succeeds while the old binary runs"
kill -0 "$admin_pid" 2>/dev/null || fail "the running ravel_admin died during the re-install"
pass "the running ravel_admin kept running"
kill "$admin_pid"
wait "$admin_pid" 2>/dev/null || true
admin_pid=
case $out in
  *"not on your PATH"*) fail "warned about PATH although $prefix is on it: $out" ;;
  *) pass "no PATH warning when PREFIX is on PATH" ;;
esac
left=$(find "$prefix" -mindepth 1 -printf '%f\n' | sort | tr '\n' ' ')
[ "$left" = "ravel_admin ravel_node " ] || fail "PREFIX holds more than the two binaries: $left"
pass "PREFIX holds exactly ravel_admin and ravel_node (no temporary files left)"
"$prefix/ravel_node" --version >/dev/null || fail "ravel_node does not run after the re-install"
pass "the re-installed binaries run"

step "--prefix wins over PREFIX; --no-build installs what is built"
other=$work/other
PREFIX=$work/ignored "$install_sh" --prefix "$other" --profile "$profile" --no-build >/dev/null 2>&1 \
  || fail "install.sh --no-build failed"
if [ ! -x "$other/ravel_admin" ] || [ -e "$work/ignored" ]; then
  fail "--prefix did not win over PREFIX"
fi
pass "--prefix $other used, PREFIX ignored"
if out=$("$install_sh" --prefix "$other" --profile no-such-profile --no-build 2>&1); then
  fail "--no-build with nothing built succeeded: $out"
fi
expect_contains "--no-build with nothing built says what is missing" "$out" "does not exist"

step "the default PREFIX"
# As a user: ~/.local/bin. Run as that user when this runs as root (and the user can read the
# work tree); run as is otherwise.
home=$work/home
mkdir -p "$home"
as_user=()
if [ "$(id -u)" = 0 ]; then
  chown 65534:65534 "$home"
  chmod 711 "$work" # mktemp's 700 would keep the user out of its home
  as_user=(setpriv --reuid 65534 --regid 65534 --clear-groups)
fi
if "${as_user[@]}" test -x "$repo/target/debug/ravel_admin" 2>/dev/null; then
  "${as_user[@]}" env -u PREFIX HOME="$home" "$install_sh" --profile "$profile" --no-build >/dev/null 2>&1 \
    || fail "install.sh as a user failed"
  [ -x "$home/.local/bin/ravel_admin" ] || fail "as a user, nothing was installed into ~/.local/bin"
  pass "as a user, the default PREFIX is ~/.local/bin"
else
  echo "skipped: the unprivileged user cannot read $repo"
fi
# As root: /usr/local/bin, seen here through a private mount namespace with a scratch
# /usr/local/bin, so that the machine's own is left alone.
if [ "$(id -u)" = 0 ] && unshare --mount true 2>/dev/null; then
  out=$(unshare --mount bash -c 'mount -t tmpfs scratch /usr/local/bin && "$@" && ls /usr/local/bin' \
    _ env -u PREFIX "$install_sh" --profile "$profile" --no-build 2>&1) \
    || fail "install.sh as root without PREFIX failed: $out"
  expect_contains "as root, the default PREFIX is /usr/local/bin" "$out" "installed /usr/local/bin/ravel_node"
else
  echo "skipped: the root default (needs root and unshare)"
fi

step "--uninstall"
out=$("$install_sh" --prefix "$prefix" --uninstall 2>&1) || fail "--uninstall failed: $out"
expect_contains "reports the removed admin" "$out" "removed $prefix/ravel_admin"
if [ -e "$prefix/ravel_admin" ] || [ -e "$prefix/ravel_node" ]; then
  fail "--uninstall left a binary in $prefix"
fi
pass "both binaries are gone"
out=$("$install_sh" --prefix "$prefix" --uninstall 2>&1) || fail "a second --uninstall failed: $out"
expect_contains "a second --uninstall is harmless" "$out" "not installed: $prefix/ravel_node"

step "without cargo on PATH"
# A PATH with every command this machine has except cargo, wherever cargo lives.
nocargo=$work/nocargo-bin
mkdir -p "$nocargo"
IFS=: read -ra path_dirs <<<"$PATH"
for dir in "${path_dirs[@]}"; do
  for cmd in "$dir"/*; do
    name=$(basename "$cmd")
    if [ "$name" != cargo ] && [ -x "$cmd" ] && [ ! -e "$nocargo/$name" ]; then
      ln -s "$cmd" "$nocargo/$name"
    fi
  done
done
if out=$(PATH=$nocargo "$install_sh" --prefix "$work/nocargo-prefix" 2>&1); then
  fail "install.sh succeeded without cargo: $out"
fi
expect_contains "says cargo is missing" "$out" "cargo (the Rust toolchain) is not on PATH"
expect_contains "says how to install it" "$out" "rustup"
[ ! -e "$work/nocargo-prefix" ] || fail "installed something without cargo"
pass "nothing installed"

step "--help"
expect_contains "--help prints the usage" "$("$install_sh" --help)" "Usage: ./install.sh"

echo "install test: $checks_passed checks passed"
