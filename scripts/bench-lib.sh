# Shared by the benchmark scripts (sourced): throw-away daemons under $work,
# each with a `port` file, and a cleanup that leaves nothing behind.
# Needs: $s (the sandstone binary), $work, and the array pids.

# start_daemon NAME PORT SETUP-ARGS... -- SERVE-ARGS...
start_daemon() {
  local name=$1 port=$2; shift 2
  local setup=()
  while [ "$1" != "--" ]; do setup+=("$1"); shift; done; shift
  # CRIU is unpacked once, outside (a daemon that wants it gets --criu).
  "$s" setup --no-debian --no-criu --data-dir "$work/$name" "${setup[@]}" >/dev/null 2>&1
  echo "$port" > "$work/$name/port"
  # Networking is on by default, on the pool setup recorded; daemons of one
  # script would all record the same one, so only a daemon given its own
  # --egress-pool is networked (bench-egress.sh measures the network).
  local net=(--no-network)
  case " $* " in *" --egress-pool "*) net=() ;; esac
  SANDSTONE_LOG=warn "$s" serve --data-dir "$work/$name" --listen "127.0.0.1:$port" "${net[@]}" "$@" &
  pids+=($!)
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "daemon $name did not start" >&2
  exit 1
}

# start_fake_model SCRIPTS-DIR: the scripted Messages API
# (tests/fake_model/server.py) on a free port, requiring the key it writes
# to $work/model.key; sets model_port and model_pid.
start_fake_model() {
  local key="sk-bench-model-$RANDOM$RANDOM"
  printf '%s' "$key" > "$work/model.key"
  FAKE_MODEL_KEY="$key" python3 tests/fake_model/server.py 127.0.0.1 0 "$1" > "$work/model.out" &
  model_pid=$!
  pids+=("$model_pid")
  model_port=""
  for _ in $(seq 100); do
    model_port=$(sed -n 's/^ready //p' "$work/model.out")
    [ -n "$model_port" ] && return
    sleep 0.1
  done
  echo "the fake model did not start" >&2
  exit 1
}

# on NAME CLI-ARGS...: the CLI against daemon NAME.
on() {
  local name=$1; shift
  SANDSTONE_DATA_DIR="$work/$name" SANDSTONE_URL="http://127.0.0.1:$(cat "$work/$name/port")" "$s" "$@"
}

# Deletes what the runs left, stops the daemons (which empties their warm
# pools and removes their firewall tables), then removes the pools.
bench_cleanup() {
  for d in "$work"/*/; do
    [ -f "$d/port" ] || continue
    local name ids
    name=$(basename "$d")
    ids=$(on "$name" ls --json 2>/dev/null \
      | python3 -c 'import json,sys; print(" ".join(x["id"] for x in json.load(sys.stdin)["sandboxes"]))' || true)
    [ -n "$ids" ] && on "$name" rm $ids >/dev/null 2>&1 || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # The pool image, or the dir driver's nosuid,nodev binds of its own dirs.
  for d in "$work"/*/pool "$work"/*/sandboxes "$work"/*/snapshots "$work"/*/captures; do
    mountpoint -q "$d" && umount -l "$d" 2>/dev/null || true
  done
  rm -rf "$work"
}
