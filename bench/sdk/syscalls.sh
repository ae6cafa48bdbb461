#!/usr/bin/env bash
# Where a published event's time goes, by system call: `strace -f -c` attached to the daemon,
# koi-hello (the publisher) and koi-benchsub (the subscriber) while `koi hello publish --count
# EVENTS --size SIZE` runs through a private daemon (bench/daemon/common.sh: a copy of `koi`, only
# koi-hello and koi-benchsub, own KOI_HOME; loopback only). Prints each process's calls per event.
# strace slows everything down: read the counts, not the times. Needs strace.
# Usage: bash bench/sdk/syscalls.sh   (env: REL=target/release EVENTS=10000 SIZE=1024)
source "$(dirname "$0")/../daemon/common.sh"
EVENTS="${EVENTS:-10000}"
SIZE="${SIZE:-1024}"
command -v strace > /dev/null || { echo "strace is missing: apt-get install strace" >&2; exit 1; }
cp "$REL/bench-subscriber" "$WORK/plugins/koi-benchsub"
daemon_up
for _ in $(seq 100); do "$KOI" benchsub reset > /dev/null 2>&1 && break; sleep 0.1; done
hello_pid="$(pgrep -P "$DAEMON_PID" -x koi-hello | head -n1)"
sub_pid="$(pgrep -P "$DAEMON_PID" -x koi-benchsub | head -n1)"
tracers=()
for who in daemon:"$DAEMON_PID" koi-hello:"$hello_pid" koi-benchsub:"$sub_pid"; do
  strace -f -c -o "$WORK/strace-${who%%:*}.txt" -p "${who##*:}" 2> /dev/null &
  tracers+=($!)
done
sleep 1
"$KOI" --json hello publish --count "$EVENTS" --size "$SIZE" > /dev/null
sleep 1
for t in "${tracers[@]}"; do kill -INT "$t"; done
for t in "${tracers[@]}"; do wait "$t" || true; done
declare -A pid_of=([daemon]="$DAEMON_PID" [koi-hello]="$hello_pid" [koi-benchsub]="$sub_pid")
for who in daemon koi-hello koi-benchsub; do
  echo "== $who: system calls per event ($EVENTS events of $SIZE bytes), $(ls "/proc/${pid_of[$who]}/task" | wc -l) threads"
  awk -v n="$EVENTS" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" && $4 / n >= 0.05 {printf "  %-14s %6.2f\n", $NF, $4 / n}' "$WORK/strace-$who.txt"
done
