#!/usr/bin/env bash
# Installs the ravel_admin and ravel_node binaries into ~/.cargo/bin (or $CARGO_HOME/bin).
# Needs only the Rust toolchain: the protobuf files are compiled in pure Rust (no protoc).
set -euo pipefail
cd "$(dirname "$0")"
cargo install --locked --path . --bins "$@"
echo "installed: $(command -v ravel_admin || echo ravel_admin) $(command -v ravel_node || echo ravel_node)"
