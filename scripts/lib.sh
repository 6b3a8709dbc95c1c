# Shared by the scripts that run a server or install what they use: source it. `need CMD PACKAGE...`
# installs Debian's PACKAGEs when CMD is missing; `build_release` builds the binary;
# `start_server BIN INDEX [ARGS...]` sets $pid and $addr (http://127.0.0.1:PORT) once /readyz answers; logs go to $work/serve.*.
start_server() {
  local bin="$1" index="$2"
  shift 2
  "$bin" serve --index "$index" --addr 127.0.0.1:0 "$@" > "$work/serve.out" 2> "$work/serve.err" &
  pid=$!
  addr=""
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/^pointsman listening on //p' "$work/serve.out")
    [ -n "$addr" ] && curl -fs "$addr/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not start:" >&2
  cat "$work/serve.err" >&2
  return 2
}

# Builds the release binary, holding the lock file $CARGO_LOCK (flock) around it when set.
build_release() {
  if [ -n "${CARGO_LOCK:-}" ]; then
    flock "$CARGO_LOCK" cargo build --release --locked --quiet
  else
    cargo build --release --locked --quiet
  fi
}

# Installs Debian's packages $2... unless the command $1 is already there.
need() {
  local cmd="$1"
  shift
  command -v "$cmd" >/dev/null && return 0
  echo "${0##*/}: installing $* (Debian) for $cmd" >&2
  apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
}
