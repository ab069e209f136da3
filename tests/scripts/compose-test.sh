#!/usr/bin/env bash
# The compose cluster under faults: builds the image (and checks it holds exactly the binaries
# and the libraries ldd lists), starts deploy/docker-compose.yml (an admin, 2 clusters x 3
# replicas), then through the admin's published HTTP port:
#   1. writes keys and reads them back;
#   2. cuts a follower of cluster 1 off the network: every key is still served, new keys and
#      overwrites are accepted;
#   3. reconnects it: it catches up (its applied index reaches the leader's);
#   4. kills cluster 1's leader: a new leader takes over, and writes to cluster 1 succeed. With
#      the old leader dead, those writes need the reconnected replica's vote and its log to match
#      the new leader's, which a replica that had not caught up could not give;
#   5. restarts the killed replica and waits for all six to be healthy again.
# Everything it made (containers, network, volumes, image) is removed at the end, failed or not.
#
# Environment: BIN_DIR, where ravel_admin and ravel_node are (default target/debug, which
# `cargo test` builds; target/release works too).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$repo/tests/scripts/lib.sh"
bin_dir=${BIN_DIR:-$repo/target/debug}

project=ravel-compose-test-$$
export RAVEL_IMAGE_TAG=compose-test-$$
RAVEL_HTTP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export RAVEL_HTTP_PORT
api=http://127.0.0.1:$RAVEL_HTTP_PORT
compose() { docker-compose --ansi never -p "$project" -f "$repo/deploy/docker-compose.yml" "$@"; }

work=$(mktemp -d)
torn_down=no
teardown() {
  [ "$torn_down" = yes ] && return 0
  torn_down=yes
  compose down --volumes --remove-orphans --timeout 10 >"$work/down.log" 2>&1 \
    || cat "$work/down.log" >&2
  docker image rm "ravel-rs:$RAVEL_IMAGE_TAG" >/dev/null 2>&1 || true
}
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "--- the cluster as the admin sees it:" >&2
    curl -s "$api/v1/cluster" >&2 || true
    echo >&2
    echo "--- containers and their last log lines:" >&2
    compose ps >&2 || true
    compose logs --no-color --tail 25 >&2 || true
  fi
  teardown
  rm -rf "$work"
}
trap on_exit EXIT

# --- the HTTP API -------------------------------------------------------------------------------

# POSTs the JSON $2 to route $1; prints the status code, leaves the body in $work/body.
post() { curl -s -o "$work/body" -w '%{http_code}' -d "$2" "$api$1"; }
cluster_view() { curl -sf "$api/v1/cluster"; }

declare -A expected # key -> the value last written, as compact JSON

# Writes key $1 = JSON value $2 through /put. A 503 is a definite "not applied" (no leader yet,
# a move): retried for up to 60 s. Anything else but 200 fails the test.
put() {
  local key=$1 value=$2 code deadline=$((SECONDS + 60))
  while :; do
    code=$(post /put "{\"key\":\"$key\",\"val\":$value}")
    [ "$code" = 200 ] && break
    if [ "$code" != 503 ] || [ "$SECONDS" -ge "$deadline" ]; then
      fail "put $key answered $code: $(cat "$work/body")"
    fi
    sleep 0.5
  done
  expected[$key]=$(jq -c . <<<"$value")
}

# Reads every key written so far through /get and compares its value (503s retried as above).
check_all_keys() {
  local key code got deadline
  for key in "${!expected[@]}"; do
    deadline=$((SECONDS + 60))
    while :; do
      code=$(post /get "{\"key\":\"$key\"}")
      [ "$code" = 200 ] && break
      if [ "$code" != 503 ] || [ "$SECONDS" -ge "$deadline" ]; then
        fail "get $key answered $code: $(cat "$work/body")"
      fi
      sleep 0.5
    done
    got=$(jq -c .val "$work/body")
    [ "$got" = "${expected[$key]}" ] || fail "get $key returned $got, expected ${expected[$key]}"
  done
  pass "$1: all ${#expected[@]} keys read back with the values last written"
}

# --- the cluster view ---------------------------------------------------------------------------

# Field $2 (a jq path) of cluster $1 in /v1/cluster.
cluster_field() { cluster_view | jq -r --argjson c "$1" ".clusters[] | select(.id == \$c) | $2"; }
# Field $2 of replica id $1 in /v1/cluster.
replica_field() { cluster_view | jq -r --argjson r "$1" ".clusters[].replicas[] | select(.id == \$r) | $2"; }
# The compose service of replica id $1: the host of its gRPC address (c1n2:7000 -> c1n2).
service_of() { replica_field "$1" .grpc_addr | cut -d: -f1; }
container_of() { compose ps -q "$1"; }

all_six_healthy() {
  [ "$(cluster_view | jq '[.clusters[].replicas[] | select(.healthy and .role != "learner")] | length')" = 6 ]
}
# True when /readyz of the admin answers 200.
admin_ready() { curl -sf "$api/readyz" >/dev/null; }

# --- 0. image and cluster -----------------------------------------------------------------------

step "build the image from $bin_dir"
"$repo/deploy/build-image.sh" --bin-dir "$bin_dir" --tag "$RAVEL_IMAGE_TAG" | tail -n 1
[ "$(docker run --rm "ravel-rs:$RAVEL_IMAGE_TAG" /ravel_admin --version)" != "" ] \
  || fail "docker run ravel-rs:$RAVEL_IMAGE_TAG /ravel_admin --version printed nothing"
pass "docker run --rm ravel-rs:$RAVEL_IMAGE_TAG /ravel_admin --version: $(docker run --rm "ravel-rs:$RAVEL_IMAGE_TAG" /ravel_admin --version)"

# What the image holds besides what docker adds to every container: the two binaries, the
# libraries ldd lists for them, nsswitch.conf; /data owned by the user the processes run as.
created=$(docker create "ravel-rs:$RAVEL_IMAGE_TAG" /ravel_admin --version)
docker export "$created" | tar -tv >"$work/image-files"
docker rm "$created" >/dev/null
files=$(awk '$1 ~ /^-/ { print "/" $6 }' "$work/image-files" \
  | grep -vE '^/(\.dockerenv|etc/(hostname|hosts|resolv\.conf)|dev/.*)$' | sort)
wanted=$({
  echo /ravel_admin /ravel_node /etc/nsswitch.conf | tr ' ' '\n'
  for b in ravel_admin ravel_node; do ldd "$bin_dir/$b" | grep -o '/[^ ]*'; done
} | sort -u)
[ "$files" = "$wanted" ] || fail "the image holds $(echo "$files" | tr '\n' ' ')but ldd wants $(echo "$wanted" | tr '\n' ' ')"
pass "the image holds exactly the binaries, nsswitch.conf and the libraries ldd lists: $(echo "$files" | tr '\n' ' ')"
grep -qE '^d\S+ 65532/65532 .* data/$' "$work/image-files" || fail "/data is not owned by 65532"
pass "/data belongs to uid 65532, the user the processes run as"

step "docker-compose up (project $project, admin on $api)"
compose up -d >"$work/up.log" 2>&1 || fail "docker-compose up failed: $(cat "$work/up.log")"
pass "every container started after the one before it was healthy"
wait_for "admin /readyz" 120 admin_ready || fail "the admin never became ready"
pass "the admin is ready"
wait_for "6 healthy voters" 120 all_six_healthy || fail "not all six replicas became healthy voters"
pass "6 replicas are healthy voters"
for c in 1 2; do
  members=$(cluster_view | jq -r --argjson c "$c" \
    '[.clusters[] | select(.id == $c) | .replicas[].grpc_addr | split(":")[0]] | sort | join(" ")')
  [ "$members" = "c${c}n1 c${c}n2 c${c}n3" ] || fail "cluster $c holds $members, expected c${c}n1..3"
  pass "cluster $c is c${c}n1 c${c}n2 c${c}n3 (the start order placed them)"
done

# --- 1. writes and reads ------------------------------------------------------------------------

step "write 40 keys through the admin, read them back"
for i in $(seq 1 40); do put "k$i" "{\"i\":$i,\"phase\":\"before\"}"; done
pass "40 puts answered 200"
check_all_keys "before any fault"

# --- 2. a follower cut off ----------------------------------------------------------------------

leader=$(cluster_field 1 .leader)
follower=$(cluster_field 1 "[.replicas[] | select(.id != $leader)][0].id")
cut_service=$(service_of "$follower")
cut_container=$(container_of "$cut_service")
network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$cut_container")
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$1"; }
cut_ip=$(ip_of "$cut_container")

step "cut $cut_service (replica $follower, a follower of cluster 1) off network $network"
docker network disconnect "$network" "$cut_container"
cut_off_seen() { [ "$(replica_field "$follower" .healthy)" = false ]; }
wait_for "the admin to see $cut_service unreachable" 30 cut_off_seen \
  || fail "the admin still sees $cut_service as healthy"
pass "the admin reports $cut_service unreachable"
check_all_keys "with $cut_service cut off"
for i in $(seq 1 40); do put "p$i" "{\"i\":$i,\"phase\":\"cut off\"}"; done
for i in $(seq 1 10); do put "k$i" "{\"i\":$i,\"phase\":\"overwritten while cut off\"}"; done
pass "40 new keys and 10 overwrites accepted while $cut_service is cut off"
check_all_keys "with $cut_service cut off, after the writes"
leader_applied=$(replica_field "$leader" .last_applied)

# --- 3. reconnected, it catches up --------------------------------------------------------------

step "reconnect $cut_service"
# With its service name as alias, or the name stops resolving for its peers.
docker network connect --alias "$cut_service" "$network" "$cut_container"
# The replica's gRPC listener is bound to the address its name resolved to at start.
[ "$(ip_of "$cut_container")" = "$cut_ip" ] \
  || fail "$cut_service came back as $(ip_of "$cut_container"), not $cut_ip: its listener is lost"
pass "$cut_service is back on $cut_ip"
caught_up() {
  [ "$(replica_field "$follower" .healthy)" = true ] \
    && [ "$(replica_field "$follower" .last_applied)" -ge "$leader_applied" ]
}
wait_for "$cut_service to catch up to applied index $leader_applied" 60 caught_up \
  || fail "$cut_service did not catch up: applied $(replica_field "$follower" .last_applied) < $leader_applied"
pass "$cut_service applied index $(replica_field "$follower" .last_applied) >= the leader's $leader_applied from before the reconnect"

# --- 4. the leader killed -----------------------------------------------------------------------

# The leader may have changed: the reconnected replica's election attempts raised its term.
leader=$(cluster_field 1 .leader)
leader_service=$(service_of "$leader")
leader_container=$(container_of "$leader_service")
step "kill $leader_service (replica $leader, the leader of cluster 1)"
# Kept down (no restart policy) until step 5.
docker update --restart=no "$leader_container" >/dev/null
docker kill "$leader_container" >/dev/null
new_leader_elected() {
  local l
  l=$(cluster_field 1 .leader)
  [ "$l" != null ] && [ "$l" != "$leader" ] && [ "$(replica_field "$l" .role)" = leader ]
}
wait_for "a new leader of cluster 1" 60 new_leader_elected || fail "no new leader in cluster 1"
new_leader=$(cluster_field 1 .leader)
pass "replica $new_leader ($(service_of "$new_leader")) leads cluster 1 now"
# Winning an election takes a log as up to date as a majority's.
if [ "$leader" = "$follower" ]; then
  why="$cut_service had won an election since the reconnect; committed by the other two"
elif [ "$new_leader" = "$follower" ]; then
  why="committed by $cut_service, elected leader, and its one live peer"
else
  why="committed by $cut_service and its one live peer, so with its log matching the leader's"
fi
keys_before=$(cluster_field 1 .keys)
for i in $(seq 1 30); do put "a$i" "{\"i\":$i,\"phase\":\"after the leader was killed\"}"; done
[ "$(docker inspect -f '{{.State.Running}}' "$leader_container")" = false ] \
  || fail "$leader_service is running again: the writes above do not prove anything"
keys_after=$(cluster_field 1 .keys)
[ "$keys_after" -gt "$keys_before" ] || fail "cluster 1 holds $keys_after keys, not more than $keys_before"
pass "30 writes accepted with $leader_service dead; cluster 1 went from $keys_before to $keys_after keys, $why"
check_all_keys "with $leader_service dead"

# --- 5. the killed replica back -----------------------------------------------------------------

step "restart $leader_service"
docker update --restart=unless-stopped "$leader_container" >/dev/null
docker start "$leader_container" >/dev/null
wait_for "6 healthy voters" 120 all_six_healthy || fail "$leader_service did not rejoin"
pass "$leader_service rejoined: 6 healthy voters"
check_all_keys "after the restart"

# --- teardown -----------------------------------------------------------------------------------

step "tear down"
teardown
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
left+=$(docker volume ls -q --filter "label=com.docker.compose.project=$project")
left+=$(docker network ls -q --filter "label=com.docker.compose.project=$project")
[ -z "$left" ] || fail "left behind: $left"
! docker image inspect "ravel-rs:$RAVEL_IMAGE_TAG" >/dev/null 2>&1 || fail "image ravel-rs:$RAVEL_IMAGE_TAG left behind"
pass "no container, volume, network or image of $project is left"
echo "compose test: $checks_passed checks passed"
