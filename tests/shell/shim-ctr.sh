#!/usr/bin/env bash
# (script(1) gives ctr the terminal -t needs; it echoes ^@ for the EOF of its /dev/null input.)
# containerd + ctr through containerd-shim-husk-v2 (runtime io.containerd.husk.v2):
# output, stdin, exit codes, exec with and without a tty, ps, metrics,
# pause and resume, kill, delete, and nothing left behind.
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_preflight
tmp=$(mktemp -d)
trap 'shim_cleanup; containerd_stop; rm -rf "$tmp"' EXIT
containerd_start || exit 1
shim_import_image "$tmp"
R=(--runtime io.containerd.husk.v2)

out=$(c run --rm "${R[@]}" "$IMAGE" t-echo echo hello-from-husk 2>&1); rc=$?
expect_eq "run output" "$out" "hello-from-husk"
expect_eq "run exit" "$rc" 0

# Runtime options (ctr --runtime-config-path = CRI's options.ConfigPath).
printf 'engine = "%s"\n' "${HUSK_ENGINE:-qemu}" >"$tmp/opts-good.toml"
printf 'engine = "warp-drive"\n' >"$tmp/opts-bad.toml"
out=$(c run --rm "${R[@]}" --runtime-config-path "$tmp/opts-bad.toml" "$IMAGE" t-badopt true 2>&1) \
  && fail "a bad engine in the runtime options was accepted"
grep -q 'warp-drive' <<<"$out" && echo "ok: runtime options are read" || fail "bad options: $out"
c container delete t-badopt >/dev/null 2>&1 || true
out=$(c run --rm "${R[@]}" --runtime-config-path "$tmp/opts-good.toml" "$IMAGE" t-exit sh -c 'echo to-err >&2; exit 3' 2>"$tmp/err"); rc=$?
expect_eq "exit code" "$rc" 3
expect_eq "stderr" "$(cat "$tmp/err")" "to-err"

out=$(echo piped-in | c run --rm "${R[@]}" "$IMAGE" t-stdin sh -c 'cat; echo done'); rc=$?
expect_eq "stdin" "$out" "piped-in
done"
# 4 MiB through stdin: CloseIO comes when the client is done writing, and
# must not cut what is still on its way to the guest.
head -c 4194304 /dev/urandom >"$tmp/in"
out=$(c run --rm "${R[@]}" "$IMAGE" t-stdin-big md5sum <"$tmp/in"); rc=$?
expect_eq "4 MiB stdin exit" "$rc" 0
expect_eq "4 MiB stdin byte-exact" "${out%% *}" "$(md5sum <"$tmp/in" | cut -d' ' -f1)"

# (isatty, not busybox tty: ttyname needs the pty in the container's devpts)
out=$(script -qec "ctr --address $CTR_ADDR run --rm -t ${R[*]} $IMAGE t-tty sh -c '[ -t 0 ] && [ -t 1 ] && echo is-a-tty; exit 5'" /dev/null </dev/null | tr -d '\r\0' | sed 's/\^@//g'); rc=${PIPESTATUS[0]}
expect_eq "run -t exit" "$rc" 5
expect_eq "run -t has a tty" "$out" "is-a-tty"

# A foreground `ctr run` in the background: its exit code is the task's.
c run "${R[@]}" "$IMAGE" t-bg sh -c 'trap "echo got-term; exit 42" TERM; echo up; while :; do sleep 1; done' >"$tmp/bg.out" 2>&1 </dev/null &
bg=$!
for _ in $(seq 150); do grep -q up "$tmp/bg.out" 2>/dev/null && break; sleep 0.2; done
expect_eq "task status" "$(c task ls | awk '$1=="t-bg"{print $3}')" RUNNING
out=$(c task exec --exec-id e1 t-bg sh -c 'echo exec-out; echo exec-err >&2; exit 4' 2>"$tmp/err"); rc=$?
expect_eq "exec output" "$out" "exec-out"
expect_eq "exec stderr" "$(cat "$tmp/err")" "exec-err"
expect_eq "exec exit" "$rc" 4
# ctr sends the window size (ResizePty) only after Start, and the exec spec
# has no consoleSize: until it arrives the pty is 0x0 and busybox `stty
# size` fails, so the process waits for it (up to 10 s) rather than racing.
sized='s=; for i in $(seq 100); do s=$(stty size 2>/dev/null); [ -n "$s" ] && break; sleep 0.1; done; echo "$s"'
out=$(script -qec "stty cols 91 rows 17; ctr --address $CTR_ADDR task exec -t --exec-id e2 t-bg sh -c '[ -t 0 ] && echo is-a-tty; $sized; exit 6'" /dev/null </dev/null | tr -d '\r\0' | sed 's/\^@//g'); rc=${PIPESTATUS[0]}
expect_eq "exec -t exit" "$rc" 6
expect_eq "exec -t has a sized tty" "$out" "is-a-tty
17 91"
n=$(c task ps t-bg | tail -n +2 | wc -l)
[ "$n" -ge 1 ] && echo "ok: task ps lists $n process(es)" || fail "task ps: $(c task ps t-bg)"
c task metrics t-bg >"$tmp/metrics" 2>&1 || fail "task metrics: $(cat "$tmp/metrics")"
grep -qi "memory" "$tmp/metrics" && echo "ok: task metrics" || fail "metrics: $(cat "$tmp/metrics")"
c task kill -s SIGTERM t-bg || fail "task kill"
wait "$bg"; rc=$?
expect_eq "exit code after SIGTERM" "$rc" 42
expect_eq "output of the killed task" "$(cat "$tmp/bg.out")" "up
got-term"
c task delete t-bg >/dev/null 2>&1 || true
c container delete t-bg || fail "container delete"

# Pause freezes the task's cgroup in the guest (Pause/Resume of the shim):
# the task is PAUSED, an exec into it is refused, its ticking loop leaves a
# gap as long as the pause, and after resume it is RUNNING and ticks again.
c run -d "${R[@]}" "$IMAGE" t-pause sh -c 'while :; do date +%s >> /ticks; sleep 0.2; done' >/dev/null \
  || fail "run -d t-pause"
ticks() { c task exec --exec-id "w$1" t-pause sh -c 'wc -l < /ticks' 2>/dev/null; }
n=0; for i in $(seq 150); do n=$(ticks "$i"); [ "${n:-0}" -ge 3 ] && break; sleep 0.2; done
[ "${n:-0}" -ge 3 ] || fail "t-pause never ticked ($n)"
c task pause t-pause || fail "task pause"
expect_eq "paused task status" "$(c task ls | awk '$1=="t-pause"{print $3}')" PAUSED
c task exec --exec-id x1 t-pause true >/dev/null 2>&1 && fail "an exec into a paused task ran"
sleep 4
c task resume t-pause || fail "task resume"
expect_eq "resumed task status" "$(c task ls | awk '$1=="t-pause"{print $3}')" RUNNING
sleep 1
gap=$(c task exec --exec-id gap t-pause awk 'NR > 1 && $1 - p > m { m = $1 - p } { p = $1 } END { print m + 0 }' /ticks)
[ "${gap:-0}" -ge 3 ] && echo "ok: the paused task did not run for ${gap}s" || fail "no gap in the paused task's ticks: $gap"
after=$(ticks 200); sleep 1
[ "$(ticks 201)" -gt "${after:-0}" ] && echo "ok: the resumed task ticks again" || fail "the resumed task does not tick"
c task kill -s SIGKILL t-pause
for _ in $(seq 100); do
  st=$(c task ls | awk '$1=="t-pause"{print $3}'); [ "$st" = STOPPED ] && break; sleep 0.2
done
expect_eq "t-pause stopped" "$st" STOPPED
c task delete t-pause >/dev/null; c container delete t-pause

# A task that is killed while created (never started).
c container create "${R[@]}" "$IMAGE" t-created sleep 100 >/dev/null || fail "container create"
c task start -d t-created >/dev/null || fail "task start -d"
c task kill -s SIGKILL t-created
for _ in $(seq 100); do
  st=$(c task ls | awk '$1=="t-created"{print $3}'); [ "$st" = STOPPED ] && break; sleep 0.2
done
expect_eq "SIGKILL stops" "$st" STOPPED
c task delete t-created >/dev/null; c container delete t-created

shim_expect_nothing_left
echo "ok: nothing left behind"
