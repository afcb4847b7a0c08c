#!/usr/bin/env bash
# The main job: install what is missing, build kobako (and its web UI), the guest kernel and
# images (all cached: a second run takes seconds), start the server, bring up the web-stack demo
# lab (HTTP API + redis cache + rsyslog logger + a client), show it answering, print where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# PROFILE=dev scripts/demo.sh uses a debug build (faster to build, slower to run).
export PROFILE=${PROFILE:-release}
scripts/build.sh
if [ "$PROFILE" = release ]; then K=target/release/kobako; else K=target/debug/kobako; fi
$K image kernel
$K image tiny

host_ip() { ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p'; }
HOST=$(host_ip)
HOST=${HOST:-127.0.0.1}

# The server (REST API + web UI), in the background, unless one already runs.
SERVER=""
if $K serve --help >/dev/null 2>&1; then
  LOG=/var/log/kobako-serve.log
  if ! pgrep -f "$K serve" >/dev/null 2>&1; then
    echo "starting the server (log: $LOG)"
    setsid nohup "$K" serve --listen 0.0.0.0:8443 >"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
      grep -q "kobako serve: https" "$LOG" 2>/dev/null && break
      sleep 0.1
    done
  fi
  SERVER="https://$HOST:8443/"
fi

# The demo lab: built on first use (the debian-web image takes a few minutes, once).
echo
$K up examples/web-stack.yaml
echo
echo "the web-stack API, published on this host's port 8080 (its services may take a minute"
echo "to start after the VMs are ready under TCG):"
for _ in $(seq 1 120); do
  curl -s -m 2 "http://$HOST:8080/health" >/dev/null 2>&1 && break
  sleep 1
done
for _ in 1 2; do
  printf '  GET /item/hello -> '
  curl -s -m 10 "http://$HOST:8080/item/hello" || echo "(no answer yet)"
done
echo
$K ls
cat <<MSG

The lab 'web-stack' is running: an HTTP API VM answering through a redis cache VM, logging to
an rsyslog logger VM, and a client VM on the 'front' network. Try:
  curl http://$HOST:8080/item/kobako                              the API from the host
  $K exec client.pc -- wget -qO- http://10.20.0.10:8080/stats     from the client VM
  $K exec web.logger -- tail /var/log/kobako/remote.log           the request log on the logger
  $K inspect web-stack; $K graph web-stack; $K shell web.api
  $K down web-stack                                               take it all away
MSG
if [ -n "$SERVER" ]; then
  cat <<MSG

Web UI and REST API: $SERVER (self-signed certificate). Log in as 'admin' with the password in
/var/lib/kobako/server/initial-admin-password (made on the server's first start; change it with
\`$K user passwd admin\`). The API is described at ${SERVER}api/v1/openapi.json.
MSG
fi
