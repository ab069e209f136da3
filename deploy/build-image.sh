#!/usr/bin/env bash
# Builds the docker image ravel-rs:TAG FROM scratch: /ravel_admin, /ravel_node, exactly the
# shared libraries `ldd` lists for them (plus glibc's loader) and /etc/nsswitch.conf. Nothing is
# pulled from a registry: the image is made from local files only.
#
# Usage: deploy/build-image.sh [--bin-dir DIR] [--tag TAG]
#   --bin-dir DIR  where ravel_admin and ravel_node are, not built here (default
#                  target/release, under $CARGO_TARGET_DIR if set; target/debug works too,
#                  e.g. in CI after `cargo test` built it)
#   --tag TAG      image tag (default $RAVEL_IMAGE_TAG, else "latest")
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }

bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
tag=${RAVEL_IMAGE_TAG:-latest}
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --tag) tag=${2:?--tag needs a tag}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-image.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

command -v docker >/dev/null || { echo "build-image.sh: docker is not installed" >&2; exit 1; }
binaries=(ravel_admin ravel_node)
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || {
    echo "build-image.sh: $bin_dir/$b not found; build it first (cargo build --release --locked)" >&2
    exit 1
  }
done

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$context/data"
chmod 1777 "$rootfs/tmp"
cp "$repo/deploy/image/Dockerfile" "$context/"
cp "$repo/deploy/image/nsswitch.conf" "$rootfs/etc/"

# Prints the absolute path of every library (and the loader) that ldd resolves for $1; fails on
# a library ldd cannot find. A static binary has none.
shared_libraries() {
  local out
  out=$(ldd "$1" 2>&1) || {
    case $out in *"not a dynamic executable"* | *"statically linked"*) return 0 ;; esac
    echo "build-image.sh: ldd $1 failed: $out" >&2
    return 1
  }
  if grep -q "not found" <<<"$out"; then
    echo "build-image.sh: $1 needs libraries that are missing here:" >&2
    grep "not found" <<<"$out" >&2
    return 1
  fi
  # "libc.so.6 => /lib/.../libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)";
  # the kernel's linux-vdso has no path and is skipped.
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

for b in "${binaries[@]}"; do
  cp "$bin_dir/$b" "$rootfs/$b"
  libs=$(shared_libraries "$bin_dir/$b")
  for lib in $libs; do
    # Same path as on the host, so the loader's built-in search path finds it; symlinks
    # (the loader is one) are copied as the file they point to.
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done

echo "image ravel-rs:$tag from $bin_dir with:"
(cd "$rootfs" && find . -type f | sed 's|^\.|  |' | sort)
docker build --quiet --tag "ravel-rs:$tag" "$context" >/dev/null 2>"$context/build.log" || {
  cat "$context/build.log" >&2
  exit 1
}
echo "built ravel-rs:$tag ($(docker image inspect --format '{{.Size}}' "ravel-rs:$tag") bytes)"
