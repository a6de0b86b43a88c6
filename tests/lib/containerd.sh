# Starts a private containerd for a test (sourced). Sets CTR_ADDR and
# CONTAINERD_DIR; containerd_stop kills it and removes its directories.
# usage: containerd_start [EXTRA_CRI_CONFIG]
#   EXTRA_CRI_CONFIG: TOML lines appended inside the CRI plugin's table.
#   CONTAINERD_WRAP: a command prefix that execs containerd (e.g.
#   `nsenter --net=PATH` to run it in a test's network namespace).
containerd_start() {
  CONTAINERD_DIR=$(mktemp -d /tmp/husk-containerd.XXXXXX)
  CTR_ADDR=$CONTAINERD_DIR/containerd.sock
  cat > "$CONTAINERD_DIR/config.toml" <<CFG
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
[grpc]
  address = "$CTR_ADDR"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
${1:-}
CFG
  # shellcheck disable=SC2086 # the wrapper is a word list
  ${CONTAINERD_WRAP:-} containerd --config "$CONTAINERD_DIR/config.toml" >"$CONTAINERD_DIR/log" 2>&1 &
  CONTAINERD_PID=$!
  for _ in $(seq 100); do
    ctr --address "$CTR_ADDR" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "containerd did not start:" >&2; tail -20 "$CONTAINERD_DIR/log" >&2
  return 1
}
containerd_stop() {
  if [ -n "${CONTAINERD_PID:-}" ]; then
    kill "$CONTAINERD_PID" 2>/dev/null || true
    wait "$CONTAINERD_PID" 2>/dev/null || true
  fi
  # containerd leaves its snapshot mounts behind if it dies mid-way.
  grep -o "$CONTAINERD_DIR[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r | xargs -r umount -l 2>/dev/null || true
  rm -rf "$CONTAINERD_DIR"
  return 0
}
