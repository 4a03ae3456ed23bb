#!/usr/bin/env bash
# fsyncs-per-result.sh BINARY N [IMAGE]
#
# Runs `BINARY serve` (MQTT to a private mosquitto on a free loopback port,
# the shipped model, drift and feedback off) under strace, uploads N
# one-image slides that complete at once, waits for their N results on the
# broker, stops the daemon and prints the fsyncs of its SQLite WAL and main
# file. In WAL mode with synchronous=FULL every write transaction syncs the
# WAL once, so (wal(N) - wal(0)) / N is the write transactions per published
# result. Needs strace, mosquitto, mosquitto_sub, curl; run from the source
# tree after `make build` (BINARY: bin/scopewatch).
set -euo pipefail
BIN=$(realpath "$1"); N=$2; IMG=${3:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
BPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
HPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
printf "listener $BPORT 127.0.0.1\nallow_anonymous true\n" > $W/m.conf
/usr/sbin/mosquitto -c $W/m.conf >/dev/null 2>&1 & MPID=$!
sleep 0.5
mosquitto_sub -h 127.0.0.1 -p $BPORT -t 'scopewatch/v1/lab/scope1/result' -q 1 > $W/results.txt & SPID=$!
sleep 0.3
cat > $W/c.yaml <<YAML
site: lab
device: scope1
state_dir: $W/state
database: $W/state/scopewatch.db
log: {level: warn}
model: {path: $ROOT/models/default, keys: $ROOT/models/keys}
inbox: {enabled: false}
http: {listen: 127.0.0.1:$HPORT}
mqtt: {enabled: true, broker: tcp://127.0.0.1:$BPORT}
drift: {enabled: false}
feedback: {enabled: false}
YAML
cd "$ROOT"
strace -f -qq -y -e trace=fsync,fdatasync -o $W/strace.txt $BIN serve --config $W/c.yaml 2> $W/serve.log & SVPID=$!
for i in $(seq 1 100); do curl -fs http://127.0.0.1:$HPORT/healthz >/dev/null 2>&1 && break; curl -fs http://127.0.0.1:$HPORT/v1/health >/dev/null 2>&1 && break; sleep 0.2; done
sleep 1
if [ -z "$IMG" ]; then
  "$BIN" synth cells --out "$W/cells" --n 1 --seed 1 >/dev/null 2>&1
  IMG=$(ls "$W"/cells/*/*.png | head -1)
fi
for i in $(seq 1 $N); do
  curl -fs -X POST --data-binary @$IMG -H 'Content-Type: image/png' "http://127.0.0.1:$HPORT/v1/images?slide=t$i&name=a.png&complete=1" >/dev/null
done
for i in $(seq 1 100); do [ "$(wc -l < $W/results.txt)" -ge "$N" ] && break; sleep 0.1; done
sleep 2
kill -TERM $(pgrep -f -n "^$BIN serve --config $W/c.yaml"); wait $SVPID || true
kill $SPID $MPID 2>/dev/null || true
echo "results_received=$(wc -l < $W/results.txt) wal=$(grep -c "db-wal>" $W/strace.txt) db=$(grep -c "scopewatch.db>" $W/strace.txt)"
