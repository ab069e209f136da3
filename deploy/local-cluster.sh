#!/usr/bin/env bash
# Builds Ravel-rs and starts, on loopback, an admin (or a group of three) and 2 clusters x 3
# replicas. Data and logs go to ./.ravel-local (kept across runs: running this again resumes
# the same store). Ctrl-C stops every process. Environment overrides: RAVEL_HTTP (default
# 127.0.0.1:8080), RAVEL_ADMIN_GRPC (127.0.0.1:9090), RAVEL_ADMINS (1, or 3 for an admin
# group on the next ports: 8081/9091 and 8082/9092), RAVEL_DIR (./.ravel-local),
# RAVEL_PROFILE (release, or dev for a faster build).
set -euo pipefail
cd "$(dirname "$0")/.."

http=${RAVEL_HTTP:-127.0.0.1:8080}
admin_grpc=${RAVEL_ADMIN_GRPC:-127.0.0.1:9090}
dir=${RAVEL_DIR:-$PWD/.ravel-local}
profile=${RAVEL_PROFILE:-release}
admins=${RAVEL_ADMINS:-1}
case $admins in
  1 | 3) ;;
  *) echo "RAVEL_ADMINS must be 1 or 3, got $admins" >&2; exit 2 ;;
esac

echo "building ($profile profile)..."
cargo build --locked --profile "$profile" --bins
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
mkdir -p "$dir"
# A store's admin group is formed once: a directory made with one admin keeps one (grow it
# with `ravel_admin start ... --join` and `ravel_admin members add`).
if [ -f "$dir/admins" ] && [ "$(cat "$dir/admins")" != "$admins" ]; then
  echo "$dir was made with RAVEL_ADMINS=$(cat "$dir/admins"); use that, or another RAVEL_DIR" >&2
  exit 2
fi
echo "$admins" >"$dir/admins"

pids=()
stop_all() {
  echo
  echo "stopping..."
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Admin a (0-based) serves HTTP and gRPC on the base ports plus a.
http_host=${http%:*} http_port=${http##*:}
grpc_host=${admin_grpc%:*} grpc_port=${admin_grpc##*:}
peers=""
for a in $(seq 0 $((admins - 1))); do
  peers="${peers:+$peers,}$grpc_host:$((grpc_port + a))"
done
https=()
for a in $(seq 0 $((admins - 1))); do
  name=admin$([ "$a" = 0 ] || echo $((a + 1)))
  https+=("$http_host:$((http_port + a))")
  group=()
  [ "$admins" = 1 ] || group=(--peers "$peers")
  "$bin/ravel_admin" start --http "$http_host:$((http_port + a))" \
    --grpc "$grpc_host:$((grpc_port + a))" --backupPath "$dir/$name" "${group[@]}" \
    >>"$dir/$name.log" 2>&1 &
  pids+=($!)
done

# Replica i of cluster c listens on 7<c><i>0 (gRPC) and 7<c><i>1 (Raft). The first replica of
# each cluster creates it (-l); the others are placed by the admin. They start in turn so that
# each lands in the cluster its number says.
start_replica() {
  local c=$1 i=$2 flag=$3
  "$bin/ravel_node" start -s "$dir/c${c}n${i}" -g "127.0.0.1:7${c}${i}0" -r "127.0.0.1:7${c}${i}1" \
    -a "$peers" ${flag:+"$flag"} >>"$dir/c${c}n${i}.log" 2>&1 &
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

urls=""
for h in "${https[@]}"; do urls="$urls http://$h"; done
cat <<MSG

Ravel-rs is up: admin HTTP API on$urls (2 clusters x 3 replicas; logs in $dir).
Try:
  curl -d '{"key":"hello","val":"world"}' http://$http/put
  curl -d '{"key":"hello"}' http://$http/get
  curl http://$http/v1/cluster
Ctrl-C stops everything.
MSG
wait
