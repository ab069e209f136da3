#!/usr/bin/env bash
# Builds Ravel-rs and starts, on loopback, an admin and 2 clusters x 3 replicas.
# Data and logs go to ./.ravel-local (kept across runs: running this again resumes the same
# store). Ctrl-C stops every process. Environment overrides: RAVEL_HTTP (default
# 127.0.0.1:8080), RAVEL_ADMIN_GRPC (127.0.0.1:9090), RAVEL_DIR (./.ravel-local),
# RAVEL_PROFILE (release, or dev for a faster build).
set -euo pipefail
cd "$(dirname "$0")/.."

http=${RAVEL_HTTP:-127.0.0.1:8080}
admin_grpc=${RAVEL_ADMIN_GRPC:-127.0.0.1:9090}
dir=${RAVEL_DIR:-$PWD/.ravel-local}
profile=${RAVEL_PROFILE:-release}

echo "building ($profile profile)..."
cargo build --locked --profile "$profile" --bins
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
mkdir -p "$dir"

pids=()
stop_all() {
  echo
  echo "stopping..."
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM

"$bin/ravel_admin" start --http "$http" --grpc "$admin_grpc" --backupPath "$dir/admin" \
  >>"$dir/admin.log" 2>&1 &
pids+=($!)

# Replica i of cluster c listens on 7<c><i>0 (gRPC) and 7<c><i>1 (Raft). The first replica of
# each cluster creates it (-l); the others are placed by the admin. They start in turn so that
# each lands in the cluster its number says.
start_replica() {
  local c=$1 i=$2 flag=$3
  "$bin/ravel_node" start -s "$dir/c${c}n${i}" -g "127.0.0.1:7${c}${i}0" -r "127.0.0.1:7${c}${i}1" \
    -a "$admin_grpc" ${flag:+"$flag"} >>"$dir/c${c}n${i}.log" 2>&1 &
  pids+=($!)
}
wait_replicas() {
  local want=$1
  for _ in $(seq 1 300); do
    got=$(curl -s "http://$http/v1/cluster" | python3 -c \
      'import json,sys; print(sum(len(c["replicas"]) for c in json.load(sys.stdin)["clusters"]))' \
      2>/dev/null || echo 0)
    [ "$got" -ge "$want" ] && return 0
    sleep 0.2
  done
  echo "replicas did not register; see $dir/*.log" >&2
  return 1
}
n=0
for i in 1 2 3; do
  for c in 1 2; do
    if [ "$i" = 1 ]; then start_replica "$c" "$i" -l; else start_replica "$c" "$i" ""; fi
    n=$((n + 1))
    wait_replicas "$n"
  done
done

echo "waiting for the store to be ready..."
for _ in $(seq 1 300); do
  curl -sf "http://$http/readyz" >/dev/null && break
  sleep 0.2
done
curl -sf "http://$http/readyz" >/dev/null || { echo "not ready; see $dir/*.log" >&2; exit 1; }

cat <<MSG

Ravel-rs is up: admin HTTP API on http://$http (2 clusters x 3 replicas; logs in $dir).
Try:
  curl -d '{"key":"hello","val":"world"}' http://$http/put
  curl -d '{"key":"hello"}' http://$http/get
  curl http://$http/v1/cluster
Ctrl-C stops everything.
MSG
wait
