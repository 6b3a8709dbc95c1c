#!/usr/bin/env bash
# Three replicas of `pointsman serve` on one real redis-server, behind a real nginx running
# deploy/nginx.conf, under wrk's load for DURATION seconds, while it
#   1. rebuilds the index in place (a second route table) and every replica hot-reloads it
#      (`--watch`), from a directory the replicas cannot write;
#   2. kills one replica (SIGKILL) and starts it again: it must come back on the new table;
#   3. restarts Redis (the spend counters persist in its append-only file);
#   4. marks a model down on one replica: another must skip it on its next decision.
# A probe beside the load sends decisions that show which table they came from, and spends a
# tenant's small daily cap. Fails on any client-visible error other than 429 (and the capped
# tenant's 402), on a decision that mixes the two tables, on a cap exceeded by more than one
# request's estimate, on a replica that comes back on a stale table, and on a mark another
# replica misses. Writes what it measured to OUT_FILE (default bench-results/replicas.md).
#
#   scripts/replicas.sh [DURATION]
#
# DURATION defaults to 60 s (at least 30). CONNECTIONS (default 16) sets wrk's concurrency;
# CARGO_LOCK, if set, names a lock file held (flock) around the cargo build; POINTSMAN_BIN, if
# set, is the binary to run instead of the release build's.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/lib.sh
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
need wrk wrk
need nginx nginx-light
need redis-server redis-server
export PATH="$PATH:/usr/sbin"

started_at=$(date +%s)
duration="${1:-60}"
[[ "$duration" =~ ^[0-9]+$ ]] && [ "$duration" -ge 30 ] || {
  echo "replicas: DURATION must be a whole number of seconds, at least 30" >&2
  exit 2
}
connections="${CONNECTIONS:-16}"
out_file="${OUT_FILE:-bench-results/replicas.md}"
key="replicas-$$-$RANDOM"
cap_usd=0.2

# POINTSMAN_BIN: a binary already built (the debug build of `cargo test`, say); otherwise
# the release build
if [ -n "${POINTSMAN_BIN:-}" ]; then
  bin="$POINTSMAN_BIN"
else
  build_release
  bin="$root/target/release/pointsman"
fi
work="$(mktemp -d)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}" ${loader:-} ${probe:-}; do kill -9 "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "${redis_pid:-}" ] && kill -9 "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ms() { date +%s%3N; }

# Two route tables. B renames a route and moves another to a different model, so a decision
# that mixed the two shows; both give each tenant a small daily cap, for the probe to spend.
for v in a b; do
  cp -r routes "$work/routes-$v"
  sed -i "s/{scope: tenant, period: day, limit_usd: 20.0}/{scope: tenant, period: day, limit_usd: $cap_usd}/" \
    "$work/routes-$v/customer-support.yaml"
  grep -q "limit_usd: $cap_usd}" "$work/routes-$v/customer-support.yaml"
done
sed -i 's/name: order_status$/name: order_tracking/' "$work/routes-b/customer-support.yaml"
sed -i 's/^    model: o3-mini$/    model: gpt-4o/' "$work/routes-b/assistant.yaml"
grep -q 'name: order_tracking' "$work/routes-b/customer-support.yaml"
for v in a b; do
  "$bin" build "$work/routes-$v" --out "$work/ref-$v" >/dev/null
  "$bin" route --index "$work/ref-$v" "hello" > "$work/ref-$v.json"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["route_table_sha256"])' \
    "$work/ref-$v/$(cat "$work/ref-$v/CURRENT")/manifest.json" > "$work/ref-$v.sha"
done

# The served index, built here (as in production: once, then copied or mounted). The replicas
# cannot write it: as root they run as `nobody`, which owns nothing here; otherwise it is made
# read-only.
index="$work/index"
"$bin" build "$work/routes-a" --out "$index" >/dev/null
if [ "$(id -u)" = 0 ]; then
  run_as=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  if "${run_as[@]}" touch "$index/written" 2>/dev/null; then
    echo "replicas: nobody can write the index directory; the read-only check means nothing" >&2
    exit 1
  fi
else
  run_as=()
  chmod -R a-w "$index"
fi

mkdir -p "$work/redis"
redis_port=$(free_port)
start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync always --save "" > "$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  echo "replicas: redis-server did not start" >&2
  cat "$work/redis.log" >&2
  exit 1
}
start_redis

ports=("" "$(free_port)" "$(free_port)" "$(free_port)")
start_replica() {
  local i=$1
  "${run_as[@]}" "$bin" serve --index "$index" --addr "127.0.0.1:${ports[$i]}" --watch \
    --redis-url "redis://127.0.0.1:$redis_port/0" --admin-key "$key" \
    >> "$work/replica-$i.out" 2>> "$work/replica-$i.err" &
  pids[i]=$!
}
wait_ready() {
  local i=$1
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:${ports[$i]}/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "replicas: replica $i did not become ready:" >&2
  cat "$work/replica-$i.err" >&2
  exit 1
}
table_of() {
  curl -fs "http://127.0.0.1:${ports[$1]}/v1/index" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["route_table_sha256"])'
}
for i in 1 2 3; do start_replica "$i"; done
for i in 1 2 3; do wait_ready "$i"; done

# nginx, on deploy/nginx.conf as it is but for the addresses
lb_port=$(free_port)
sed -e "s/pointsman-\([123]\):8080/127.0.0.1:PORT\1/" -e "s/listen 8080;/listen 127.0.0.1:$lb_port;/" \
  deploy/nginx.conf > "$work/site.conf"
for i in 1 2 3; do sed -i "s/PORT$i/${ports[$i]}/" "$work/site.conf"; done
grep -q "127.0.0.1:${ports[3]}" "$work/site.conf"
cat > "$work/nginx.conf" <<EOF
daemon on;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
worker_processes 1;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  include $work/site.conf;
}
EOF
nginx -t -c "$work/nginx.conf" -p "$work" > "$work/nginx-test.out" 2>&1 || {
  cat "$work/nginx-test.out" >&2
  exit 1
}
nginx -c "$work/nginx.conf" -p "$work"
lb="http://127.0.0.1:$lb_port"
for _ in $(seq 1 100); do curl -fs "$lb/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
echo "replicas: 3 replicas (ports ${ports[*]:1}), redis :$redis_port, nginx $lb; ${duration}s of wrk -c$connections"

wrk -t1 -c"$connections" -d"${duration}s" --timeout 10s -s benches/wrk-route.lua "$lb" \
  > "$work/wrk.out" 2>&1 &
loader=$!

# The probe: one request every 40 ms through nginx, alternately a decision that shows its table
# and a request of the capped tenant; one line each: kind, status, body.
cat > "$work/probe.py" <<'PY'
import http.client, json, sys, time
host, port, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
shows = ["Where is my order #%d?", "Solve for x in %dx + 7 = 22", "Tell me about the weather on day %d"]
spends = "My package %d arrived damaged, the warranty expired yesterday and I paid with gift cards: how do I get a refund?"
conn = None
end = time.time() + seconds
n = 0
with open(out, "w") as f:
    while time.time() < end:
        n += 1
        kind = "cap" if n % 2 else "table"
        prompt = (spends if kind == "cap" else shows[(n // 2) % 3]) % n
        headers = {"content-type": "application/json"}
        if kind == "cap":
            headers["x-pointsman-tenant"] = "capped"
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=15)
            conn.request("POST", "/v1/route", json.dumps({"prompt": prompt}), headers)
            r = conn.getresponse()
            status, body = r.status, r.read().decode()
        except Exception as e:
            status, body = 0, repr(e)
            conn = None
        f.write(json.dumps({"t": time.time(), "kind": kind, "status": status, "body": body}) + "\n")
        f.flush()
        time.sleep(0.04)
PY
python3 "$work/probe.py" 127.0.0.1 "$lb_port" "$duration" "$work/probe.jsonl" &
probe=$!

t0=$(ms)
at() { while [ $(($(ms) - t0)) -lt $(($1 * duration * 10)) ]; do sleep 0.1; done; }
events="$work/events.tsv"

# 1. rebuild in place; every replica picks the new table up
at 20
b=$(cat "$work/ref-b.sha")
s=$(ms)
# (without root the directory is read-only to everyone: this builder lifts that meanwhile)
[ "$(id -u)" = 0 ] || chmod -R u+w "$index"
"$bin" build "$work/routes-b" --out "$index" >/dev/null
[ "$(id -u)" = 0 ] || chmod -R a-w "$index"
built=$(ms)
for i in 1 2 3; do
  until [ "$(table_of "$i" 2>/dev/null)" = "$b" ]; do
    [ $(($(ms) - built)) -lt 10000 ] || { echo "replicas: replica $i did not reload in 10 s" >&2; exit 1; }
    sleep 0.05
  done
done
printf 'rebuild\t%s\t%s\n' "$((built - s))" "$(($(ms) - built))" >> "$events"

# 2. kill one replica and start it again: it comes back on table B
at 40
kill -9 "${pids[2]}"
wait "${pids[2]}" 2>/dev/null || true
killed=$(ms)
sleep 1
start_replica 2
wait_ready 2
back=$(ms)
now=$(table_of 2)
[ "$now" = "$b" ] || { echo "replicas: replica 2 came back on a stale table ($now, not $b)" >&2; exit 1; }
printf 'replica_restart\t%s\t%s\n' "$((back - killed))" "$((back - killed - 1000))" >> "$events"

# 3. restart Redis (a clean shutdown writes its append-only file)
at 60
s=$(ms)
redis-cli -p "$redis_port" shutdown >/dev/null 2>&1 || true
wait "$redis_pid" 2>/dev/null || true
sleep 1
start_redis
printf 'redis_restart\t%s\t0\n' "$(($(ms) - s))" >> "$events"

# 4. a model marked down on replica 1 is skipped by replica 3's next decision
at 80
order='{"prompt": "Where is my order #777?"}'
model_of() {
  curl -fs "http://127.0.0.1:${ports[$1]}/v1/route" -H 'content-type: application/json' -d "$order" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["model"])'
}
small=$(model_of 3)
s=$(ms)
curl -fs -X POST -H "authorization: Bearer $key" -H 'content-type: application/json' \
  -d '{"ttl_s": 30}' "http://127.0.0.1:${ports[1]}/v1/admin/models/$small/down" > "$work/down.json"
marked=$(ms)
grep -q '"shared":true' "$work/down.json" || {
  echo "replicas: the mark did not reach Redis: $(cat "$work/down.json")" >&2
  exit 1
}
# the next decision of another replica skips it
next=$(model_of 3)
[ "$next" != "$small" ] || {
  echo "replicas: replica 3's next decision still chose $small after replica 1 marked it down" >&2
  exit 1
}
seen=$(ms)
curl -fs -X POST -H "authorization: Bearer $key" "http://127.0.0.1:${ports[1]}/v1/admin/models/$small/up" >/dev/null
printf 'mark_down\t%s\t%s\n' "$((marked - s))" "$((seen - marked))" >> "$events"

wait "$loader" || { echo "replicas: wrk failed:" >&2; cat "$work/wrk.out" >&2; exit 1; }
loader=""
wait "$probe" || true
probe=""
spent=$(redis-cli -p "$redis_port" --scan --pattern 'pointsman:budget:*capped*' |
  while read -r k; do redis-cli -p "$redis_port" get "$k"; done | sed -n 1p)
panics=$(cat "$work"/replica-*.err | grep -c 'panicked' || true)

python3 - "$work" "$cap_usd" "${spent:-0}" "$panics" "$(($(date +%s) - started_at))" "$duration" \
  "$connections" "$small" "$out_file" <<'PY'
import json, sys
work, cap, redis_spent, panics, wall, duration, connections, small, out_file = sys.argv[1:10]
cap, redis_spent, panics = float(cap), float(redis_spent), int(panics)
failures = []
if panics:
    failures.append(f"{panics} panics in the replicas' logs")

def signature(path):
    return {r["route"]: r["model"] for r in json.load(open(path))["routes"]}
tables = {"A": signature(f"{work}/ref-a.json"), "B": signature(f"{work}/ref-b.json")}

w = json.loads(next(l for l in open(f"{work}/wrk.out") if l.startswith("{")))
statuses = {int(k): v for k, v in w["statuses"].items()}
unanswered = w["socket_errors"] + w["timeouts"]
bad = {s: c for s, c in statuses.items() if s not in (200, 429)}
if unanswered:
    failures.append(f"load: {unanswered} requests unanswered (socket errors {w['socket_errors']}, timeouts {w['timeouts']})")
if bad:
    failures.append(f"load: answers other than 200 and 429: {bad}")

probe = [json.loads(l) for l in open(f"{work}/probe.jsonl")]
by_kind = {"table": {}, "cap": {}}
seen, mixed, spent, estimates = {"A": 0, "B": 0}, [], 0.0, []
for p in probe:
    by_kind[p["kind"]][p["status"]] = by_kind[p["kind"]].get(p["status"], 0) + 1
    if p["status"] != 200:
        continue
    d = json.loads(p["body"])
    if p["kind"] == "cap":
        cost = d["selection"]["estimated_cost_usd"] or 0.0
        spent += cost
        estimates.append(cost)
        continue
    pairs = {r["route"]: r["model"] for r in d["routes"]}
    names = set(pairs) | {n["route"] for n in d["neighbours"]}
    if d["outcome"] == "matched":
        names.add(d["route"])
    # a matched decision takes its route's first model, unless that one was skipped (down)
    any_model = d["outcome"] != "matched" or d["selection"]["skipped"]
    fits = [t for t, sig in tables.items() if pairs == sig and names <= set(sig)
            and (any_model or sig[d["route"]] == d["model"])]
    if len(fits) == 1:
        seen[fits[0]] += 1
    else:
        mixed.append(p["body"][:300])
for kind, allowed in (("table", {200, 429}), ("cap", {200, 402, 429})):
    wrong = {s: c for s, c in by_kind[kind].items() if s not in allowed}
    if wrong:
        failures.append(f"probe ({kind}): answers outside {sorted(allowed)}: {wrong}")
if mixed:
    failures.append(f"{len(mixed)} decisions mixed the two tables, e.g. {mixed[0]}")
if not (seen["A"] and seen["B"]):
    failures.append(f"the probe did not see both tables: {seen}")
largest = max(estimates, default=0.0)
if spent > cap + largest + 1e-9:
    failures.append(f"the capped tenant was let spend ${spent:.4f} against a ${cap} cap (largest estimate ${largest:.4f})")
if not by_kind["cap"].get(402):
    failures.append("the capped tenant never reached its cap: the cap was not tested")

events = {row[0]: (int(row[1]), int(row[2])) for row in
          (l.split("\t") for l in open(f"{work}/events.tsv").read().splitlines())}
lines = [
    "# Three replicas behind nginx, on one Redis",
    "",
    "`scripts/replicas.sh` (this file is its output): three `pointsman serve` replicas of the example "
    "routes on the default model, a real `redis-server` and Debian's nginx running "
    "`deploy/nginx.conf`, on this 2-core machine. "
    f"wrk -c{connections} for {duration} s through nginx, with distinct prompts; beside it a probe "
    "(one request every 40 ms) whose decisions show which route table they came from, and which "
    f"spends a tenant's ${cap} daily cap. The replicas serve an index directory they cannot write.",
    "",
    "| | |",
    "|---|---|",
    f"| requests (wrk) | {w['requests']} in {w['seconds']:.1f} s ({w['rps']:.0f}/s), p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, max {w['max_ms']:.0f} ms |",
    f"| answers (wrk) | {dict(sorted(statuses.items()))}; unanswered {unanswered} |",
    f"| probe decisions | {dict(sorted(by_kind['table'].items()))}: {seen['A']} from table A, {seen['B']} from table B, {len(mixed)} mixed |",
    f"| capped tenant | {dict(sorted(by_kind['cap'].items()))}; spent ${spent:.4f} of ${cap} by the 200 answers' estimates (largest ${largest:.4f}); Redis counter at the end ${redis_spent:.4f} |",
    f"| rebuild + hot reload | build {events['rebuild'][0]} ms, then all three replicas on the new table {events['rebuild'][1]} ms later |",
    f"| replica killed (SIGKILL), started 1 s later | ready again {events['replica_restart'][1]} ms after its start, on the new table |",
    f"| Redis restarted | down {events['redis_restart'][0]} ms (shutdown, 1 s, start) |",
    f"| `{small}` marked down on replica 1 | the admin call answered in {events['mark_down'][0]} ms (it waits for the replicas to read the mark); replica 3's next decision skipped it |",
    f"| wall time | {wall} s |",
    "",
    "Result: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)),
    "",
]
report = "\n".join(lines)
print(report)
if not failures:
    open(out_file, "w").write(report)
sys.exit(1 if failures else 0)
PY
