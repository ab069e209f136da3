#!/usr/bin/env bash
# Checks the files in deploy/ offline, without a cluster or a running systemd:
# - the Kubernetes manifests against the API schemas (kubernetes-validate, strict: an unknown
#   field fails) and against what Ravel-rs needs (check_k8s_manifests.py);
# - the compose file as docker-compose reads it;
# - the systemd units with systemd-analyze verify, in a scratch root holding the units and the
#   binaries (BIN_DIR, default target/debug) where the units expect them.
# A tool that is missing is reported and its check skipped; CI installs them all.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir=${BIN_DIR:-$repo/target/debug}
# The oldest Kubernetes these manifests support (policy/v1 budgets, the pod-index label) and
# the newest the pinned kubernetes-validate knows.
k8s_versions=(1.30.0 1.37.0)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== Kubernetes manifests (deploy/k8s)"
if command -v kubernetes-validate >/dev/null; then
  for v in "${k8s_versions[@]}"; do
    kubernetes-validate --strict --quiet -k "$v" "$repo"/deploy/k8s/*.yaml
    echo "ok: schemas of Kubernetes $v"
  done
else
  echo "skipped: kubernetes-validate is not installed (pip install kubernetes-validate)"
fi
python3 "$repo/tests/scripts/check_k8s_manifests.py" "$repo/deploy/k8s" | tail -n 1

echo "== compose file (deploy/docker-compose.yml)"
if command -v docker-compose >/dev/null; then
  docker-compose -f "$repo/deploy/docker-compose.yml" config --quiet
  echo "ok: docker-compose reads it"
else
  echo "skipped: docker-compose is not installed"
fi

echo "== systemd units (deploy/systemd)"
if command -v systemd-analyze >/dev/null; then
  root=$work/root
  mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
  cp "$bin_dir/ravel_admin" "$bin_dir/ravel_node" "$root/usr/local/bin/"
  cp "$repo"/deploy/systemd/*.service "$root/etc/systemd/system/"
  # The targets the units order themselves after (multi-user, network-online, ...).
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
  # verify prints unknown keys and bad values as warnings but still exits 0: any output fails.
  if ! out=$(systemd-analyze verify --root="$root" ravel-admin.service ravel-node@c1n1.service 2>&1) \
    || [ -n "$out" ]; then
    echo "FAILED: systemd-analyze verify: $out" >&2
    exit 1
  fi
  echo "ok: systemd-analyze verify ravel-admin.service ravel-node@c1n1.service"
else
  echo "skipped: systemd-analyze is not installed (apt-get install systemd)"
fi
# The units pass every setting in the environment: each RAVEL_* variable they or their example
# environment files set must be one that `start` reads (its --help lists them as [env: NAME=]).
for pair in ravel-admin.service:admin.env:ravel_admin ravel-node@.service:node.env:ravel_node; do
  IFS=: read -r unit env_file binary <<<"$pair"
  help=$("$bin_dir/$binary" start --help)
  names=$(grep -ohE '\bRAVEL_[A-Z_]+=' "$repo/deploy/systemd/$unit" "$repo/deploy/systemd/$env_file" \
    | sort -u | tr -d =)
  for name in $names; do
    case $help in
      *"[env: $name="*) ;;
      *) echo "FAILED: $unit or $env_file sets $name, which $binary start does not read" >&2; exit 1 ;;
    esac
  done
  echo "ok: $unit and $env_file set only variables $binary start reads ($(echo "$names" | wc -l))"
done
