#!/usr/bin/env bash
# Starts N local processes of a command with the variables torchrun sets (RANK, WORLD_SIZE,
# LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), for a quick data-parallel run:
#   scripts/launch.sh 2 build/kosmosg train --stage instruct ...
# Rank 0 prints as usual; the other ranks' lines are prefixed with [rank R]. When one process
# fails the others are stopped, and the exit status is the first failure's.
# MASTER_PORT may be set; by default a free port on 127.0.0.1 is picked.
set -uo pipefail

if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/launch.sh N COMMAND [ARGS...]   (N >= 1 local processes)" >&2
  exit 2
fi
n=$1
shift

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${MASTER_PORT:-}" ]; then
  for _ in $(seq 50); do
    candidate=$((20000 + RANDOM % 40000))
    if ! port_in_use "$candidate"; then MASTER_PORT=$candidate; break; fi
  done
  [ -n "${MASTER_PORT:-}" ] || { echo "launch.sh: found no free port; set MASTER_PORT" >&2; exit 1; }
fi
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT WORLD_SIZE=$n LOCAL_WORLD_SIZE=$n

pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap 'stop_all; exit 130' INT TERM

for ((r = 0; r < n; r++)); do
  if [ "$r" -eq 0 ]; then
    RANK=$r LOCAL_RANK=$r "$@" &
  else
    RANK=$r LOCAL_RANK=$r "$@" > >(sed -u "s/^/[rank $r] /") 2>&1 &
  fi
  pids+=($!)
done

status=0
grace=""
remaining=$n
while [ "$remaining" -gt 0 ]; do
  wait -n -p done_pid "${pids[@]}" 2>/dev/null
  rc=$?
  [ -z "${done_pid:-}" ] && break
  remaining=$((remaining - 1))
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    echo "launch.sh: a process exited with status $rc; stopping the others" >&2
    # The others fail on their own within --dist-timeout, naming the rank; give them that chance
    # to say so before stopping them.
    (sleep "${LAUNCH_GRACE_S:-30}"; stop_all) &
    grace=$!
  fi
  unset done_pid
done
[ -n "$grace" ] && kill "$grace" 2>/dev/null
exit "$status"
