#!/usr/bin/env bash
# Fuzz the REST API from its own OpenAPI document with schemathesis (PyPI, in a venv under
# /var/cache/kobako made by scripts/setup.sh): a fresh `kobako serve` on 127.0.0.1 with
# temporary state, logged in as its admin; fails on any 5xx, any response that does not match
# the schema, or an undocumented status code or content type. Bounded: MAX_EXAMPLES per
# operation (default 30) and 15 minutes at most. Usage: scripts/api-fuzz.sh [path/to/kobako]
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-target/debug/kobako}
ST=/var/cache/kobako/venv-api/bin/st
if ! [ -x "$ST" ] || ! [ -f /var/cache/kobako/venv-api/.kobako-req ]; then KOBAKO_API_FUZZ=1 scripts/setup.sh; fi
STATE=$(mktemp -d /tmp/kobako-fuzz-state.XXXXXX)
RUN=$(mktemp -d /tmp/kobako-fuzz-run.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KOBAKO_LOG=${KOBAKO_LOG:-info} KOBAKO_STATE=$STATE KOBAKO_RUN=$RUN "$K" serve --listen "127.0.0.1:$PORT" >"$STATE/serve.log" 2>&1 &
SERVER=$!
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -f "$STATE/serve.log" ]; then
    # For a failed run: what the server said (a dropped connection leaves no HTTP status).
    echo "api-fuzz: failed (rc $rc); server log: $( { grep -ci panicked "$STATE/serve.log" || true; } ) panic line(s), last warnings:"
    grep -iE "warn|error|panick" "$STATE/serve.log" | tail -20 || true
  fi
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  # Nothing may outlive the run: stop any VM it started (none are expected: see the excludes).
  for d in "$RUN"/vms/*; do
    if [ -e "$d" ]; then KOBAKO_STATE=$STATE KOBAKO_RUN=$RUN "$K" vm rm -f "$(basename "$d")" >/dev/null 2>&1 || true; fi
  done
  rm -rf "$STATE" "$RUN"
}
trap cleanup EXIT
for _ in $(seq 600); do
  [ -s "$STATE/server/initial-admin-password" ] && grep -q "kobako serve: https" "$STATE/serve.log" && break
  sleep 0.1
done
CERT=$STATE/server/tls/cert.pem
BASE=https://127.0.0.1:$PORT/api/v1
PW=$(cat "$STATE/server/initial-admin-password")
TOKEN=$(curl -sf --cacert "$CERT" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PW\"}" "$BASE/auth/login" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
# A stored lab (not started) so lab paths have something to find.
printf 'name: srvfuzz\nnodes:\n  n:\n    vms:\n      a: {image: tiny}\n' |
  curl -sf --cacert "$CERT" -H "authorization: Bearer $TOKEN" --data-binary @- "$BASE/labs" >/dev/null
# Excluded: the endless event stream, WebSocket upgrades, image builds (minutes of CPU) and
# lab up/down/restart: lab namespaces (kb-<lab>) are host-wide, and a lab made from generated
# text must never start next to other labs of this machine.
timeout 900 "$ST" run "$BASE/openapi.json" \
  --url "https://127.0.0.1:$PORT" \
  -H "Authorization: Bearer $TOKEN" \
  --tls-verify "$CERT" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /api/v1/events \
  --exclude-path '/api/v1/vms/{name}/console' \
  --exclude-path '/api/v1/vms/{name}/tty' \
  --exclude-path /api/v1/images/build \
  --exclude-path '/api/v1/labs/{name}/up' \
  --exclude-path '/api/v1/labs/{name}/down' \
  --exclude-path '/api/v1/labs/{name}/restart' \
  --max-examples "${MAX_EXAMPLES:-30}" \
  --request-timeout 30 \
  --workers 1 \
  --seed "${SEED:-1}"
echo "api-fuzz: server log $( { grep -ci panicked "$STATE/serve.log" || true; } ) panic line(s)"
