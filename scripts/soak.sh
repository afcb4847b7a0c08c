#!/usr/bin/env bash
# Soak test (issue 19, item 6): N cycles of create / up / exec / checkpoint / restore / down /
# delete of a 5-VM lab of tiny VMs through a running `kobako serve` (its API, as a member,
# plus the local CLI on the same state), then a check that nothing leaked: VM and helper
# processes, taps, bridges, the uplink veth, network namespaces, nft tables, cgroups, the
# server's open files, files under the state, run and warm-cache directories — each compared
# with before cycle 1 — and the server's RSS after the last cycle against cycle 10.
#
#   scripts/soak.sh [--short] [--cycles N] [--bin PATH] [--log FILE] [--until TIME] [--keep]
#
# --short: 3 cycles (what scripts/test.sh runs; the RSS figure is reported, not checked).
# --until: start no cycle that would end after TIME (`date -d` syntax); the checks run on the
#          cycles done. Default binary: $KOBAKO_BIN, else target/debug/kobako (scripts/test.sh's
#          build; the static agent must sit next to it, as scripts/build.sh leaves it).
# Everything runs in a private state/run/cache directory under /tmp (the kernel and tiny image
# are linked in from the real cache), so a user's labs are never touched; a trap stops the
# server, takes the lab down and removes the directory whatever happens. Per-cycle figures go
# to stdout and to the log (default target/soak.log). Needs root, like the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=200
short=0
bin=${KOBAKO_BIN:-target/debug/kobako}
log=target/soak.log
until_epoch=
keep=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
  --short) short=1 cycles=3 ;;
  --cycles) cycles=$2 && shift ;;
  --bin) bin=$2 && shift ;;
  --log) log=$2 && shift ;;
  --until) until_epoch=$(date -d "$2" +%s) && shift ;;
  --keep) keep=1 ;;
  -h | --help) usage && exit 0 ;;
  *) usage >&2 && exit 2 ;;
  esac
  shift
done
case $cycles in '' | *[!0-9]* | 0) echo "soak: --cycles needs a positive number" >&2 && exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "soak: needs root (namespaces, taps, jails)" >&2 && exit 2; }
[ -x "$bin" ] || { echo "soak: no kobako binary at $bin (scripts/build.sh, or --bin)" >&2 && exit 2; }
bin=$(realpath "$bin")
src_cache=${KOBAKO_CACHE:-/var/cache/kobako}
mkdir -p "$(dirname "$log")"
: >"$log"

# ---- the private environment ------------------------------------------------------------------
work=$(mktemp -d /tmp/kobako-soak.XXXXXX)
state=$work/state run=$work/run cache=$work/cache
mkdir -p "$state" "$run" "$cache" && mkdir -m 700 "$cache/warm"
# Guest kernel and tiny image from the real cache (read-only use); warm snapshots private.
for d in kernel images; do [ -d "$src_cache/$d" ] && ln -s "$src_cache/$d" "$cache/$d"; done
lab=soak$$
user=soak$$
netns=kb-$lab
kbu=kbu$(printf %s "$lab" | sha256sum | cut -c1-8)
srv=
tok=
code=
body=

k() { env KOBAKO_STATE="$state" KOBAKO_RUN="$run" KOBAKO_CACHE="$cache" "$bin" "$@"; }
say() { printf '%s\n' "$*" | tee -a "$log"; }
now_ms() { date +%s%3N; }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); } # milliseconds as seconds

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  trap - INT TERM
  if [ -n "$srv" ] && kill -0 "$srv" 2>/dev/null; then
    kill -TERM "$srv"
    for _ in $(seq 300); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$srv" 2>/dev/null
    wait "$srv" 2>/dev/null
  fi
  # Whatever a failed run left: the lab (local CLI on the same state), any VM of this run
  # directory, then (if even `down` failed) the lab's namespace, host veth and nft table.
  if [ -e "$state/kobako.db" ]; then k down "$lab" >/dev/null 2>&1; fi
  for d in "$run"/vms/*; do [ -e "$d" ] && k vm rm -f "${d##*/}" >/dev/null 2>&1; done
  if ip netns list | grep -q "^$netns\( \|$\)"; then
    echo "soak: cleanup: removing namespace $netns left behind" >&2
    ip netns delete "$netns"
  fi
  ip link show "$kbu" >/dev/null 2>&1 && ip link delete "$kbu"
  nft list table ip "kobako-$lab" >/dev/null 2>&1 && nft delete table ip "kobako-$lab"
  [ -f "$work/serve.log" ] && cp -f "$work/serve.log" "${log%.log}.serve.log"
  if [ "$keep" = 1 ]; then echo "soak: kept $work" >&2; else rm -rf --one-file-system "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  say "soak: FAILED: $*"
  if [ -f "$work/serve.log" ]; then
    echo "-- last lines of the server's log:" >&2
    tail -n 30 "$work/serve.log" >&2
  fi
  exit 1
}

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    [ -z "$(ss -Htuln "sport = :$p")" ] && echo "$p" && return
  done
}

# ---- the API (curl against the server's own certificate) ---------------------------------------
port=$(free_port)
base=https://127.0.0.1:$port/api/v1
cert=$state/server/tls/cert.pem

# api METHOD PATH [curl args...]: sets $code and $body.
api() {
  local meth=$1 p=$2 out hdr=()
  shift 2
  [ -n "$tok" ] && hdr=(-H "authorization: Bearer $tok")
  if ! out=$(curl -sS --max-time 600 --cacert "$cert" -X "$meth" "${hdr[@]}" "$@" -w '\n%{http_code}' "$base$p" 2>&1); then
    code=000 body=$out
    return 0
  fi
  code=${out##*$'\n'} body=${out%$'\n'*}
}
expect() { [ "$code" = "$1" ] || fail "$2: HTTP $code (expected $1): $body"; }
json() { api "$1" "$2" -H 'content-type: application/json' -d "$3"; }

login() {
  tok=
  json POST /auth/login "$(jq -nc --arg u "$1" --arg p "$2" '{username: $u, password: $p}')"
  expect 200 "login $1"
  tok=$(jq -r .access_token <<<"$body")
}

# Polls the operation in $body until it ends; fails unless it succeeded.
wait_op() {
  local id t0=$SECONDS st
  id=$(jq -r .id <<<"$body")
  while :; do
    api GET "/operations/$id"
    expect 200 "operation $id"
    st=$(jq -r .state <<<"$body")
    [ "$st" = running ] || break
    [ $((SECONDS - t0)) -lt 600 ] || fail "$1: operation $id still running after 600 s"
    sleep 0.2
  done
  [ "$st" = succeeded ] || fail "$1: operation $id $st: $body"
}
op() { # METHOD PATH WHAT [json body]
  if [ $# -gt 3 ]; then json "$1" "$2" "$4"; else api "$1" "$2"; fi
  expect 202 "$3"
  wait_op "$3"
}

# vm_exec VM EXPECTED-STDOUT ARGV...: over the API; exit code 0 and that output.
vm_exec() {
  local vm=$1 want=$2
  shift 2
  json POST "/vms/$lab.$vm/exec" "$(printf '%s\n' "$@" | jq -Rnc '{argv: [inputs]}')"
  expect 200 "exec in $vm"
  [ "$(jq -r .exit_code <<<"$body")" = 0 ] || fail "exec $* in $vm: $body"
  [ -z "$want" ] || [ "$(jq -r .stdout <<<"$body")" = "$want" ] ||
    fail "exec $* in $vm: expected '$want': $body"
}

# ---- what is measured --------------------------------------------------------------------------
# Processes of this run: whose command line or environment names the private directory (the
# server's children by KOBAKO_RUN, VM processes by KOBAKO_VM, supervisors by their arguments)
# or whose command line names one of the lab's VMs; the server itself and zombies excepted.
# The patterns come through a descriptor so grep's own command line does not match.
procs_list() {
  local - pid
  set +o pipefail
  grep -laFf <(printf '%s\n' "$work" "$lab.") /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null |
    cut -d/ -f3 | sort -un | while read -r pid; do
    [ "$pid" = "$srv" ] && continue
    [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" = Z ] && continue
    [ -d "/proc/$pid" ] || continue
    printf '%s: %s\n' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)"
  done
}
# Files of the state, run and warm-cache directories. The SQLite database (kobako.db, -wal,
# -shm) legitimately grows (events, audit, operations); everything else must come back to
# what it was. (The server's log is kept outside, in the work directory.)
files_list() {
  local -
  set +o pipefail
  find "$state" "$run" "$cache/warm" -xdev \
    ! -name kobako.db ! -name kobako.db-wal ! -name kobako.db-shm -printf '%p\n' 2>/dev/null |
    sed "s#^$work/##" | sort
}
fds_list() {
  local -
  set +o pipefail
  find "/proc/$srv/fd" -mindepth 1 -printf '%l\n' 2>/dev/null | sed 's/\[[0-9]*\]$//' | sort
}
count() { grep -c . || true; }

# sample: sets the figures of this run (m[...]) and host-wide ones for information (h[...]).
declare -A m h b
sample() {
  local -
  set +o pipefail
  m[procs]=$(procs_list | count)
  m[netns]=$(ip netns list | awk '{print $1}' | grep -cx "$netns" || true)
  m[taps]=0 m[bridges]=0
  if [ "${m[netns]}" != 0 ]; then
    m[taps]=$(ip -n "$netns" -o link show type tun 2>/dev/null | count)
    m[bridges]=$(ip -n "$netns" -o link show type bridge 2>/dev/null | count)
  fi
  m[veth]=$(ip -o link show "$kbu" 2>/dev/null | count)
  m[nft]=$(nft list tables 2>/dev/null | grep -cx "table ip kobako-$lab" || true)
  m[cgroups]=$(find /sys/fs/cgroup/kobako /sys/fs/cgroup/*/kobako -maxdepth 3 -type d \
    \( -name "user.$user" -o -name "lab.$lab" -o -name "$lab.*" \) 2>/dev/null | count)
  m[files]=$(files_list | count)
  m[fds]=$(fds_list | count)
  m[rss]=$(awk '/^VmRSS/{print $2}' "/proc/$srv/status")
  m[threads]=$(awk '/^Threads/{print $2}' "/proc/$srv/status")
  h[qemu]=$(pgrep -c qemu-system || true)
  h[netns]=$(ip netns list | count)
  h[root-taps]=$(ip -o link show type tun | count)
  h[nft]=$(nft list tables 2>/dev/null | grep -c kobako- || true)
}
checked="procs netns taps bridges veth nft cgroups files fds"
figures() {
  local n
  for n in $checked rss threads; do printf '%s=%s ' "$n" "${m[$n]}"; done
  printf '| host:'
  for n in qemu netns root-taps nft; do printf ' %s=%s' "$n" "${h[$n]}"; done
  printf ' load=%s' "$(cut -d' ' -f1 /proc/loadavg)"
}
# Waits (up to 15 s) for this run's processes to go: VM processes end a moment after `down`.
settle() {
  local i
  for i in $(seq 60); do
    [ -z "$(procs_list)" ] && return
    [ "$i" = 60 ] || sleep 0.25
  done
}

# ---- one cycle ---------------------------------------------------------------------------------
cycle() {
  local i=$1 v
  login "$user" "$user-password" # access tokens last 15 min: a fresh one per cycle
  api POST /labs -H 'content-type: application/yaml' --data-binary @"$work/lab.yaml"
  expect 201 "create lab $lab"
  op POST "/labs/$lab/up" "up"
  for v in a b c d e; do vm_exec "five.$v" "five-$v" hostname; done
  k exec "$lab/five.e" -- true >/dev/null || fail "kobako exec (local CLI) in five.e"
  vm_exec five.a "" sh -c "echo $i >/tmp/soak"
  op POST "/labs/$lab/checkpoints" "checkpoint" '{"name":"c"}'
  vm_exec five.a "" sh -c "echo after >/tmp/soak"
  op POST "/labs/$lab/checkpoints/c/restore" "restore"
  vm_exec five.a "$i" cat /tmp/soak
  for v in b c d e; do vm_exec "five.$v" "five-$v" hostname; done
  if [ "$i" -le 1 ]; then # the probes must see the lab while it is up, or they would miss a leak
    sample
    say "cycle $i, lab up: $(figures)"
    for v in procs netns taps bridges veth nft; do
      [ "${m[$v]}" -gt 0 ] || fail "while the lab is up the $v probe sees nothing: it would miss a leak"
    done
  fi
  api DELETE "/labs/$lab/checkpoints/c"
  expect 204 "delete checkpoint"
  op POST "/labs/$lab/down" "down"
  api DELETE "/labs/$lab"
  expect 204 "delete lab"
  settle
}

# ---- the run -----------------------------------------------------------------------------------
say "== soak: $cycles cycles of up/exec/checkpoint/restore/down of 5 tiny VMs (lab $lab, $bin, $work)"
pub=$(free_port)
cat >"$work/lab.yaml" <<EOF
name: $lab
defaults: { image: tiny, vcpus: 1, memory: 96M }
nodes:
  five:
    vms:
      a: { interfaces: { eth1: { network: lan } } }
      b: { interfaces: { eth1: { network: lan } } }
      c: {}
      d: {}
      e: {}
networks:
  lan: { subnet: 10.66.0.0/24 }
publish: ["$pub:five.a:8080/tcp"]
EOF

(cd "$state" && exec env KOBAKO_STATE="$state" KOBAKO_RUN="$run" KOBAKO_CACHE="$cache" \
  KOBAKO_LOG=info "$bin" serve --listen "127.0.0.1:$port") >"$work/serve.log" 2>&1 </dev/null &
srv=$!
for _ in $(seq 900); do
  kill -0 "$srv" 2>/dev/null || fail "kobako serve exited"
  if [ -f "$cert" ]; then
    api GET /health
    [ "$code" = 200 ] && break
  fi
  sleep 0.1
done
[ "$code" = 200 ] || fail "kobako serve did not answer within 90 s"
login admin "$(cat "$state/server/initial-admin-password")"
json POST /users "$(jq -nc --arg u "$user" \
  '{name: $u, password: ($u + "-password"), role: "member", max_vms: 20, max_memory_mib: 8192}')"
expect 201 "create user $user"

sample
say "before warm-up: $(figures)"
files_list >"$work/files.pre"
# Cycle 0 warms up: the warm snapshot of this VM configuration (one extra boot), directories and
# caches made once. It is not counted; what it left is listed for information.
t0=$(now_ms)
cycle 0
sample
say "cycle 0 (warm-up, $(secs $(($(now_ms) - t0))) s): $(figures)"
files_list >"$work/files.base"
fds_list >"$work/fds.base"
procs_list >"$work/procs.base"
comm -13 "$work/files.pre" "$work/files.base" | sed 's/^/  made once by the warm-up: /' | tee -a "$log"
for n in $checked; do b[$n]=${m[$n]}; done
say "before cycle 1: $(figures)"

done_cycles=0 total=0 last=0 rss_ref='' rss_ref_cycle=''
for i in $(seq "$cycles"); do
  if [ -n "$until_epoch" ] && [ $((($(now_ms) + last) / 1000 + 1)) -gt "$until_epoch" ]; then
    say "soak: stopping after $done_cycles cycles (--until)"
    break
  fi
  t0=$(now_ms)
  cycle "$i"
  last=$(($(now_ms) - t0))
  total=$((total + last))
  done_cycles=$i
  sample
  say "cycle $i ($(secs "$last") s): $(figures)"
  if [ "$i" = 1 ] || [ "$i" = 10 ]; then rss_ref=${m[rss]} rss_ref_cycle=$i; fi
done
[ "$done_cycles" -gt 0 ] || fail "no cycle done"

# ---- verdict -----------------------------------------------------------------------------------
leaks() {
  local n out=
  for n in $checked; do
    [ "${m[$n]}" -gt "${b[$n]}" ] && out+="$n ${b[$n]} -> ${m[$n]}; "
  done
  printf '%s' "$out"
}
leaked=$(leaks)
for _ in $(seq 10); do # a descriptor or process still closing: a moment more
  [ -z "$leaked" ] && break
  sleep 1
  sample
  leaked=$(leaks)
done
say "after cycle $done_cycles: $(figures)"
say "soak: $done_cycles cycles in $(secs "$total") s, $(secs $((total / done_cycles))) s per cycle (mean)"
rss_pct=$(awk -v a="$rss_ref" -v b="${m[rss]}" 'BEGIN { printf "%+.1f", (b - a) * 100 / a }')
say "soak: server RSS $rss_ref KiB at cycle $rss_ref_cycle, ${m[rss]} KiB after cycle $done_cycles ($rss_pct %)"
rc=0
if [ -n "$leaked" ]; then
  say "soak: LEAKED (before cycle 1 -> after the last): $leaked"
  { files_list | comm -13 "$work/files.base" - | sed 's/^/  file left: /'
    fds_list | comm -13 "$work/fds.base" - | sed 's/^/  server descriptor: /'
    procs_list | sed 's/^/  process: /'; } | tee -a "$log"
  rc=1
else
  say "soak: nothing leaked ($checked: each back to its value before cycle 1)"
fi
# The RSS goal (within 10 % of cycle 10 after the last cycle) needs the long run.
if [ "$short" = 0 ] && [ "$rss_ref_cycle" = 10 ] && awk -v p="$rss_pct" 'BEGIN { exit !(p > 10) }'; then
  say "soak: server RSS grew more than 10 % since cycle 10"
  rc=1
fi
[ "$rc" = 0 ] && say "soak: OK"
exit "$rc"
