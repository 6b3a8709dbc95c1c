#!/usr/bin/env bash
# Soak test: sustained load on `pointsman serve` while its index is rebuilt in place and
# hot-reloaded ten times, alternating two variants of the example routes (odd reloads through
# POST /v1/admin/reload, even ones through SIGHUP). Passes when every request was answered
# (no socket errors or timeouts), no answer was a 5xx or any status but 200 and 429, all ten
# reloads succeeded, and every sampled decision came wholly from one variant's index.
#
#   scripts/soak.sh [DURATION]
#
# DURATION is the length of the load in seconds (default 60). CONNECTIONS (default 8) sets wrk's
# concurrency; CARGO_LOCK, if set, names a lock file held (flock) around the cargo build.
# Not part of scripts/test.sh: it takes a minute or two and loads the whole machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/lib.sh
# (assigned first: `eval "$(...)"` would ignore setup failing)
setup_env="$(scripts/setup.sh)"
eval "$setup_env"
need wrk wrk

soak_started=$(date +%s)
duration="${1:-60}"
[[ "$duration" =~ ^[0-9]+$ ]] && [ "$duration" -ge 20 ] || {
  echo "soak: DURATION must be a whole number of seconds, at least 20" >&2
  exit 2
}
connections="${CONNECTIONS:-8}"
reloads=10
key="soak-$$-$RANDOM"

build_release
bin="$root/target/release/pointsman"
echo "soak: release binary ready after $(($(date +%s) - soak_started)) s"
work="$(mktemp -d)"
cleanup() {
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
  [ -n "${loader:-}" ] && kill "$loader" 2>/dev/null || true
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Two variants of the example routes. B renames a route and moves another to a different model,
# so a decision that mixed the two tables (a route of one with a model of the other) shows.
cp -r routes "$work/routes-a"
cp -r routes "$work/routes-b"
sed -i 's/name: order_status$/name: order_tracking/' "$work/routes-b/customer-support.yaml"
sed -i 's/^    model: o3-mini$/    model: gpt-4o/' "$work/routes-b/assistant.yaml"
grep -q 'name: order_tracking' "$work/routes-b/customer-support.yaml"
grep -q '^    model: gpt-4o$' "$work/routes-b/assistant.yaml"

# Reference indexes of each variant, apart from the one served: the expected (route, model)
# pairs of each variant come from them, not from the server under test.
for v in a b; do
  "$bin" build "$work/routes-$v" --out "$work/ref-$v" >/dev/null
  "$bin" route --index "$work/ref-$v" "hello" > "$work/ref-$v.json"
done

index="$work/index"
"$bin" build "$work/routes-a" --out "$index" >/dev/null
start_server "$bin" "$index" --admin-key "$key"
echo "soak: serving $index at $addr (pid $pid) for ${duration}s, wrk -c$connections, $reloads reloads"

# Sustained load for the whole run (distinct prompts, so each request pays a forward pass).
wrk -t1 -c"$connections" -d"${duration}s" --timeout 10s -s benches/wrk-route.lua "$addr" \
  > "$work/wrk.out" 2>&1 &
loader=$!

# Sampled decisions, one a line: epoch seconds, HTTP status, body. Prompts aimed at the two
# routes that differ between the variants, and one that falls back.
(
  prompts=("Where is my order #%d?" "Solve for x in %dx + 7 = 22" "Tell me about the weather on day %d")
  n=0
  while :; do
    n=$((n + 1))
    # shellcheck disable=SC2059
    p=$(printf "${prompts[$((n % 3))]}" "$n")
    out=$(curl -s --max-time 15 -w '\t%{http_code}' "$addr/v1/route" \
      -H 'content-type: application/json' -d "{\"prompt\": \"$p\"}" || echo -e "\t000")
    printf '%s\t%s\t%s\n' "$(date +%s.%N)" "${out##*$'\t'}" "${out%$'\t'*}" >> "$work/samples.tsv"
    sleep 0.05
  done
) &
sampler=$!

# Rebuild and reload, evenly spread over the run: B, A, B, ... (the tenth leaves A live).
interval=$((duration * 1000 / (reloads + 1)))
started=$(date +%s%3N)
reload_log="$work/reloads.tsv"
for i in $(seq 1 "$reloads"); do
  while [ $(($(date +%s%3N) - started)) -lt $((i * interval)) ]; do sleep 0.1; done
  if [ $((i % 2)) = 1 ]; then v=b; else v=a; fi
  t0=$(date +%s%3N)
  if ! "$bin" build "$work/routes-$v" --out "$index" > "$work/build.$i.out" 2>&1; then
    echo "soak: build $i (variant $v) failed:" >&2
    cat "$work/build.$i.out" >&2
    exit 1
  fi
  t1=$(date +%s%3N)
  generation="$index/$(cat "$index/CURRENT")"
  if [ $((i % 2)) = 1 ]; then
    how=admin
    status=$(curl -s -o "$work/reload.$i.json" -w '%{http_code}' -X POST \
      -H "authorization: Bearer $key" "$addr/v1/admin/reload")
    if [ "$status" != 200 ] || ! grep -qF "\"generation\":\"$generation\"" "$work/reload.$i.json"; then
      echo "soak: reload $i through the admin endpoint answered $status: $(cat "$work/reload.$i.json")" >&2
      exit 1
    fi
  else
    how=sighup
    kill -HUP "$pid"
    ok=""
    for _ in $(seq 1 300); do
      ok=$(curl -s "$addr/metrics" | sed -n 's/^pointsman_reloads_total{result="ok"} //p')
      [ "$ok" = "$i" ] && break
      sleep 0.1
    done
    if [ "$ok" != "$i" ]; then
      echo "soak: reload $i by SIGHUP not counted after 30 s (ok reloads: ${ok:-?})" >&2
      exit 1
    fi
  fi
  t2=$(date +%s%3N)
  # the live table is the variant just built
  want=order_status
  [ "$v" = b ] && want=order_tracking
  curl -s "$addr/v1/routes" | grep -qF "\"name\":\"$want\"" || {
    echo "soak: after reload $i, /v1/routes does not list $want" >&2
    exit 1
  }
  printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$v" "$how" "$((t1 - t0))" "$((t2 - t1))" >> "$reload_log"
  echo "soak: reload $i/$reloads: variant $v via $how (build $((t1 - t0)) ms, reload $((t2 - t1)) ms)"
done

wait "$loader" || { echo "soak: wrk failed:" >&2; cat "$work/wrk.out" >&2; exit 1; }
loader=""
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=""
metrics=$(curl -s "$addr/metrics")
kill -TERM "$pid"
code=0
wait "$pid" || code=$?
pid=""

panics=$(grep -c 'panicked' "$work/serve.err" || true)

python3 - "$work" "$reloads" "$code" "$metrics" "$panics" "$(($(date +%s) - soak_started))" <<'PY'
import json, sys
work, reloads, serve_code, metrics = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
panics, wall_s = int(sys.argv[5]), int(sys.argv[6])
failures = []
if panics:
    failures.append(f"{panics} panics in the server log")

def signature(path):
    v = json.load(open(path))
    return {r["route"]: r["model"] for r in v["routes"]}

variants = {"a": signature(f"{work}/ref-a.json"), "b": signature(f"{work}/ref-b.json")}
assert variants["a"] != variants["b"]

# load
line = next(l for l in open(f"{work}/wrk.out") if l.startswith("{"))
w = json.loads(line)
statuses = {int(k): v for k, v in w["statuses"].items()}
answered = sum(statuses.values())
unanswered = w["socket_errors"] + w["timeouts"]
fivexx = sum(c for s, c in statuses.items() if s >= 500)
other = sum(c for s, c in statuses.items() if s not in (200, 429))
if unanswered:
    failures.append(f"{unanswered} requests not answered (socket errors {w['socket_errors']}, timeouts {w['timeouts']})")
if answered != w["requests"]:
    failures.append(f"wrk counted {w['requests']} requests but {answered} statuses")
if fivexx:
    failures.append(f"{fivexx} 5xx answers")
if other:
    failures.append(f"{other} answers other than 200 and 429: {statuses}")

# sampled decisions: each one wholly from one variant
seen = {"a": 0, "b": 0}
sample_statuses = {}
mixed = []
for line in open(f"{work}/samples.tsv"):
    _, status, body = line.rstrip("\n").split("\t", 2)
    sample_statuses[status] = sample_statuses.get(status, 0) + 1
    if status != "200":
        continue
    d = json.loads(body)
    pairs = {r["route"]: r["model"] for r in d["routes"]}
    names = set(pairs) | {n["route"] for n in d["neighbours"]}
    if d["outcome"] == "matched":
        names.add(d["route"])
    fits = [
        v for v, sig in variants.items()
        if pairs == sig
        and names <= set(sig)
        and (d["outcome"] != "matched" or sig[d["route"]] == d["model"])
    ]
    if len(fits) == 1:
        seen[fits[0]] += 1
    else:
        mixed.append(body[:300])
bad_samples = sum(c for s, c in sample_statuses.items() if s not in ("200", "429"))
if mixed:
    failures.append(f"{len(mixed)} sampled decisions not from one complete index, e.g. {mixed[0]}")
if bad_samples:
    failures.append(f"sampled statuses {sample_statuses}")
if not (seen["a"] and seen["b"]):
    failures.append(f"the samples did not see both variants: {seen}")

# reloads
rows = [l.split("\t") for l in open(f"{work}/reloads.tsv").read().splitlines()]
def counter(result):
    for l in metrics.splitlines():
        if l.startswith(f'pointsman_reloads_total{{result="{result}"}} '):
            return int(float(l.split()[-1]))
    return None
ok, failed = counter("ok"), counter("failed")
if len(rows) != reloads or ok != reloads or failed != 0:
    failures.append(f"reloads: {len(rows)} done, server counted ok={ok} failed={failed}")
if serve_code != 0:
    failures.append(f"serve exited {serve_code} after SIGTERM")

build_ms = sorted(int(r[3]) for r in rows)
reload_ms = sorted(int(r[4]) for r in rows)
print(f"soak: {w['requests']} requests in {w['seconds']:.1f} s ({w['rps']:.1f}/s, p50 {w['p50_ms']:.1f} ms, "
      f"p99 {w['p99_ms']:.1f} ms, max {w['max_ms']:.1f} ms); statuses {dict(sorted(statuses.items()))}; "
      f"unanswered {unanswered}")
print(f"soak: {ok}/{reloads} reloads ok, {failed} failed ({sum(r[2] == 'admin' for r in rows)} admin, "
      f"{sum(r[2] == 'sighup' for r in rows)} SIGHUP); build {build_ms[0]}-{build_ms[-1]} ms, "
      f"reload {reload_ms[0]}-{reload_ms[-1]} ms")
print(f"soak: {sum(sample_statuses.values())} sampled decisions {sample_statuses}: {seen['a']} from A, "
      f"{seen['b']} from B, {len(mixed)} mixed; serve exited {serve_code}; {wall_s} s in all")
if failures:
    for f in failures:
        print(f"soak: FAIL: {f}", file=sys.stderr)
    sys.exit(1)
print("soak: PASS")
PY
