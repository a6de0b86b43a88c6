# Shared by tests/bench.sh and tests/nested/bench-in-l1.sh (sourced).

# exit_path_ms ROOT ID: starts the created container ID (`$HUSK --root
# ROOT`, HUSK defaulting to `husk`) and prints the ms from the monitor's
# `container init exited` log line (the exit known on the host) to the
# monitor process being gone (husk-vmm exited: engine, daemons and guest
# memory released). The monitor's end is seen through a pidfd (Python,
# since bash has none), so nothing polls; both clocks are the host's
# realtime clock. Needs python3 and jq.
exit_path_ms() {
  local root=$1 id=$2 mon t0 t1 husk=${HUSK:-husk}
  mon=$("$husk" --root "$root" state "$id" | jq .pid) || return 1
  coproc W {
    python3 -c 'import os, select, sys, time
fd = os.pidfd_open(int(sys.argv[1]))
print("ready", flush=True)
select.select([fd], [], [])
print(time.time_ns(), flush=True)' "$mon"
  }
  read -r _ <&"${W[0]}" || return 1
  "$husk" --root "$root" start "$id" || return 1
  read -r t1 <&"${W[0]}"
  wait "$W_PID"
  t0=$(grep -m1 'container init exited' "$root/$id/husk-vmm.log" | cut -d' ' -f1)
  [ -n "$t1" ] && [ -n "$t0" ] || return 1
  echo $(( (t1 - $(date -d "$t0" +%s%N)) / 1000000 ))
}
