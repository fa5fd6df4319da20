#!/usr/bin/env bash
# API latency under a loopback load: `repdiff serve` (no in-process worker) on a scratch database with
# 500 queued jobs, loaded by wrk on list endpoints. Usage: scripts/bench_api.sh [path/to/repdiff]
# Needs wrk (apt install wrk), curl, and PostgreSQL at $PGURL (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
REPDIFF="${1:-target/release/repdiff}"
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432}"
DB="repdiff_bench_api_$$"
PORT="${PORT:-18181}"
DATA="$(mktemp -d)"
psql "$PGURL/postgres" -qc "CREATE DATABASE $DB"
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  rm -rf "$DATA"
}
trap cleanup EXIT
DATABASE_URL="$PGURL/$DB" REPDIFF_PASSWORD=bench-password-1 REPDIFF_LOG=warn \
  "$REPDIFF" serve --listen "127.0.0.1:$PORT" --workers 0 --data-dir "$DATA" >"$DATA/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/api/v1/health" >/dev/null && break; sleep 0.1; done
API="http://127.0.0.1:$PORT/api/v1"
curl -sf -c "$DATA/cookies" -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-password-1"}' "$API/auth/login" >/dev/null
TOKEN=$(curl -sf -b "$DATA/cookies" -H 'content-type: application/json' -d '{"name":"bench"}' "$API/tokens" |
  sed 's/.*"secret":"\([^"]*\)".*/\1/')
for i in $(seq 500); do
  curl -sf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"kind":"noop","params":{}}' "$API/jobs" >/dev/null
done
echo "| endpoint | connections | requests/s | p50 | p99 |"
echo "|---|---|---|---|---|"
for endpoint in "health" "jobs?limit=50" "jobs/250" "experiments"; do
  out=$(wrk -t2 -c16 -d10s --latency -H "Authorization: Bearer $TOKEN" "$API/$endpoint")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  echo "| GET /api/v1/$endpoint | 16 | $rps | $p50 | $p99 |"
done
