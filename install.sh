#!/usr/bin/env bash
# Builds Ravel-rs from source and installs ravel_admin and ravel_node into PREFIX.
#
# Usage: ./install.sh [--prefix DIR] [--profile NAME] [--no-build] [--uninstall] [--help]
#   --prefix DIR    where the binaries go (default: $PREFIX if set, else /usr/local/bin as root,
#                   ~/.local/bin otherwise)
#   --profile NAME  cargo profile to build (default release; "dev" builds faster, unoptimised)
#   --no-build      install what target/<profile> (under $CARGO_TARGET_DIR if set) already
#                   holds instead of building
#   --uninstall     remove both binaries from PREFIX
#   --help          print this help
#
# Running it again replaces the binaries atomically (copy to a temporary name, then rename), so
# even a running ravel_node keeps its old binary until it restarts. Needs only the Rust
# toolchain: the protobuf files are compiled in pure Rust (no protoc).
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)
binaries=(ravel_admin ravel_node)

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
die() {
  echo "install.sh: $*" >&2
  exit 1
}

default_prefix() {
  if [ "$(id -u)" = 0 ]; then echo /usr/local/bin; else echo "$HOME/.local/bin"; fi
}

prefix=${PREFIX:-}
profile=release
build=yes
action=install
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --profile) profile=${2:?--profile needs a name}; shift 2 ;;
    --no-build) build=no; shift ;;
    --uninstall) action=uninstall; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
prefix=${prefix:-$(default_prefix)}

# cargo puts the dev profile in target/debug and every other profile in target/<name>, under
# $CARGO_TARGET_DIR when that is set.
target_dir() {
  local target=${CARGO_TARGET_DIR:-$repo/target}
  case $target in /*) ;; *) target=$repo/$target ;; esac
  if [ "$profile" = dev ]; then echo "$target/debug"; else echo "$target/$profile"; fi
}

build_binaries() {
  command -v cargo >/dev/null 2>&1 || die "cargo (the Rust toolchain) is not on PATH.
Install it with rustup (https://rustup.rs):
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell (or run: . \"\$HOME/.cargo/env\") and run ./install.sh again."
  echo "building ravel_admin and ravel_node (cargo profile $profile)..."
  (cd "$repo" && cargo build --locked --profile "$profile" --bins)
}

# Copies $1 to $prefix under a temporary name, then renames it over the old one: a rename is
# atomic, and unlike copying over the old file it works while the old binary is running.
install_binary() {
  local src=$1 name tmp
  name=$(basename "$src")
  tmp=$(mktemp "$prefix/.$name.XXXXXX")
  if ! { cp "$src" "$tmp" && chmod 755 "$tmp" && mv -f "$tmp" "$prefix/$name"; }; then
    rm -f "$tmp"
    die "could not install $prefix/$name"
  fi
  echo "installed $prefix/$name"
}

warn_if_not_on_path() {
  case ":$PATH:" in
    *":$prefix:"* | *":${prefix%/}:"*) ;;
    *) echo "warning: $prefix is not on your PATH; add it, e.g.: export PATH=\"$prefix:\$PATH\"" >&2 ;;
  esac
}

install_all() {
  if [ "$build" = yes ]; then build_binaries; fi
  local dir
  dir=$(target_dir)
  for b in "${binaries[@]}"; do
    [ -x "$dir/$b" ] || die "$dir/$b does not exist; run without --no-build to build it"
  done
  mkdir -p "$prefix" || die "cannot create $prefix (try --prefix DIR, or run as root)"
  for b in "${binaries[@]}"; do install_binary "$dir/$b"; done
  "$prefix/ravel_admin" --version >/dev/null || die "$prefix/ravel_admin does not run"
  warn_if_not_on_path
}

uninstall_all() {
  for b in "${binaries[@]}"; do
    if [ -e "$prefix/$b" ]; then
      rm -f "$prefix/$b" || die "could not remove $prefix/$b"
      echo "removed $prefix/$b"
    else
      echo "not installed: $prefix/$b"
    fi
  done
}

case $action in
  install) install_all ;;
  uninstall) uninstall_all ;;
esac
