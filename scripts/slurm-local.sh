#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests and for trying
# slurm/submit (Debian 12, as root; no systemd needed).
#
# Usage: scripts/slurm-local.sh start|stop|status
#   start   install slurm-wlm and munge if missing, write slurm.conf under
#           $ML_SLURM_DIR, start munged (if not running), slurmctld -c -i and
#           slurmd, wait until the node is idle, then print
#           `export SLURM_CONF=...` for the caller (eval "$(... start)").
#   stop    cancel this cluster's jobs and stop the daemons by the PIDs in their
#           pid files (munged only if this script started it).
#   status  print the daemons' PIDs and sinfo; exit 0 if the cluster is up.
# Environment:
#   ML_SLURM_DIR   state/spool/log/pid directory (default /tmp/mergelens-slurm)
#   ML_SLURM_PORT  slurmctld port (default 6817; slurmd uses PORT+1)
# Exit codes: 0 ok, 1 error, 77 Slurm cannot be installed or started here
# (tests skip on 77). All messages go to stderr; only `export ...` to stdout.
set -uo pipefail
dir=${ML_SLURM_DIR:-/tmp/mergelens-slurm}
port=${ML_SLURM_PORT:-6817}
conf=$dir/slurm.conf
host=$(hostname -s)

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $1"; exit "${2:-1}"; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -s "$1" ] && cat "$1" 2>/dev/null; }

install_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null &&
    command -v sbatch >/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || die "slurm-wlm/munge are not installed and installing them needs root" 77
  command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and apt-get is not available" 77
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # keep package scripts from starting services with the system-wide config
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  fi
  local ok=0 log
  log=$(mktemp)
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$log" 2>&1 ||
    { apt-get update -qq >>"$log" 2>&1 &&
      apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$log" 2>&1; } || ok=1
  [ -n "$policy" ] && rm -f "$policy"
  if [ $ok -ne 0 ]; then
    say "apt-get output: $(tail -n 3 "$log" | tr '\n' ' ')"
    rm -f "$log"
    die "cannot install slurm-wlm and munge with apt-get" 77
  fi
  rm -f "$log"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return 0; fi
  [ "$(id -u)" -eq 0 ] || die "munged is not running and starting it needs root" 77
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none || die "cannot write /etc/munge/munge.key"
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge /var/lib/munge /var/log/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged 2>"$dir/munged.err" || die "munged failed to start: $(head -n 1 "$dir/munged.err")" 77
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munged started but munge/unmunge does not work" 77
  # remember that we own it so that `stop` ends it (munged writes its pid file)
  local p
  p=$(pid_of /run/munge/munged.pid)
  [ -n "$p" ] && echo "$p" > "$dir/munged.pid"
}

write_conf() {
  local mem cpus
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  cpus=$(nproc)
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat > "$conf" <<EOF
# Single-node test cluster written by scripts/slurm-local.sh
ClusterName=mergelens
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
MailProg=/bin/true
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=300
ReturnToService=2
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

status() {
  local c d up=0
  c=$(pid_of "$dir/slurmctld.pid"); d=$(pid_of "$dir/slurmd.pid")
  if alive "$c"; then say "slurmctld running (pid $c)"; else say "slurmctld not running"; up=1; fi
  if alive "$d"; then say "slurmd running (pid $d)"; else say "slurmd not running"; up=1; fi
  if munge_ok; then say "munge works"; else say "munge does not work"; up=1; fi
  [ $up -eq 0 ] && SLURM_CONF=$conf sinfo >&2
  [ $up -eq 0 ] && echo "export SLURM_CONF=$conf"
  return $up
}

start() {
  mkdir -p "$dir" || die "cannot create $dir"
  if alive "$(pid_of "$dir/slurmctld.pid")" && alive "$(pid_of "$dir/slurmd.pid")"; then
    say "already running in $dir"
    echo "export SLURM_CONF=$conf"
    return 0
  fi
  local p
  for p in "$port" $((port + 1)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      die "port $p is in use (another Slurm cluster? scripts/slurm-local.sh status; or set ML_SLURM_PORT)" 77
    fi
  done
  install_slurm
  start_munge
  write_conf
  export SLURM_CONF=$conf
  slurmctld -c -i 2>"$dir/log/slurmctld.err" ||
    die "slurmctld failed to start: $(head -n 1 "$dir/log/slurmctld.err") (see $dir/log/slurmctld.log)" 77
  slurmd 2>"$dir/log/slurmd.err" ||
    die "slurmd failed to start: $(head -n 1 "$dir/log/slurmd.err") (see $dir/log/slurmd.log)" 77
  local state=""
  for _ in $(seq 200); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n 1)
    [ "$state" = idle ] && break
    sleep 0.1
  done
  if [ "$state" != idle ]; then
    say "node state '${state:-unknown}' after 20 s; last log lines:"
    tail -n 5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 2>/dev/null
    stop
    exit 77
  fi
  say "cluster up in $dir (node $host, $(nproc) CPUs, partition debug)"
  echo "export SLURM_CONF=$conf"
}

stop_pid() { # name pidfile
  local p
  p=$(pid_of "$2")
  if alive "$p"; then
    kill "$p" 2>/dev/null
    for _ in $(seq 50); do alive "$p" || break; sleep 0.1; done
    alive "$p" && kill -9 "$p" 2>/dev/null
    say "stopped $1 (pid $p)"
  fi
  rm -f "$2"
}

stop() {
  if [ -f "$conf" ] && alive "$(pid_of "$dir/slurmctld.pid")"; then
    local ids
    ids=$(SLURM_CONF=$conf squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$conf scancel $ids 2>/dev/null
      say "cancelled jobs: $ids"
    fi
  fi
  stop_pid slurmd "$dir/slurmd.pid"
  stop_pid slurmctld "$dir/slurmctld.pid"
  stop_pid munged "$dir/munged.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: scripts/slurm-local.sh start|stop|status" >&2; exit 1 ;;
esac
