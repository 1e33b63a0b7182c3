#!/usr/bin/env bash
# Instructions per proxied request in `ten serve`, counted by valgrind's callgrind: the
# deterministic figure behind bench/proxy.py's requests/s, which this shared machine makes
# noisy. Same setup as bench/proxy.py (one fixture instance, GET / through the front door,
# 8 keep-alive connections); the count covers the whole process, start-up included (< 1%).
#
# Usage: bench/proxy_instructions.sh [seconds]   (needs valgrind; prints a markdown table)
# To compare nginx: run it under valgrind the same way with the config bench/proxy.py writes.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v valgrind >/dev/null || { echo "SKIPPED: valgrind is not installed" >&2; exit 0; }
target=target/callgrind
CARGO_TARGET_DIR=$target RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=1 \
  cargo build --release --locked --bin ten --bin tenement-fixture --bin tenement-loadgen >&2
bin=$target/release
tmp=$(mktemp -d /tmp/ten-callgrind-XXXX)
cat > "$tmp/tenement.toml" <<TOML
[settings]
data_dir = "$tmp/data"
health_check_interval = 60

[service.tiny]
command = "$PWD/$bin/tenement-fixture"
socket = "$tmp/{name}-{id}.sock"
health = "/health"
isolation = "process"
TOML
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TENEMENT_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$tmp/callgrind.out" \
  "$bin/ten" serve --config "$tmp/tenement.toml" --port "$port" --bind 127.0.0.1 --domain bench.test \
  >"$tmp/serve.log" 2>&1 &
serve=$!
for _ in $(seq 1 600); do [ -S "$tmp/data/ten.sock" ] && break; sleep 0.1; done
curl -sf --unix-socket "$tmp/data/ten.sock" -XPOST -H 'content-type: application/json' \
  -d '{"service":"tiny","id":"a"}' http://ten/api/instances >/dev/null
total=0
for run in warm measured; do
  out=$("$bin/tenement-loadgen" --tcp "127.0.0.1:$port" --host a.tiny.bench.test -c 8 -d "$secs")
  total=$((total + $(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$out")))
done
kill -INT "$serve"; wait "$serve" || true
ir=$(callgrind_annotate "$tmp/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "| instructions (whole process) | proxied requests | instructions per request |"
echo "|---|---|---|"
echo "| $ir | $total | $((ir / total)) |"
rm -rf "$tmp"
