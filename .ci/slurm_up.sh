#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine (slurmctld + slurmd on localhost, munge auth)
# from Debian's packages, for tests/test_slurm.py. Idempotent: a second call finds it up and returns.
# Torn down by .ci/slurm_down.sh.
#
# Exit codes (CI skips the SLURM test on any of them and prints the reason this script gives):
#   0  the cluster is up: `sinfo` shows node localhost idle (or running jobs, on a second call)
#   2  not root (installing packages and running slurmd need root)
#   3  the packages are missing and there is no apt-get to install them (not a Debian-like machine)
#   4  apt-get could not install slurmctld / slurmd / slurm-client / munge
#   5  /etc/slurm/slurm.conf exists and was not written by this script (left alone)
#   6  a daemon did not start, or the node did not become idle (its log tail is printed)
#
# Everything it writes lives under $OPTLAB_SLURM_DIR (default /var/lib/optlab-slurm: state, spool,
# logs, pid files) plus /etc/slurm/slurm.conf (where Debian's slurm commands look for it).
set -uo pipefail

DIR=${OPTLAB_SLURM_DIR:-/var/lib/optlab-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by optlab .ci/slurm_up.sh"
WAIT_S=${OPTLAB_SLURM_WAIT_S:-120}

say() { echo "slurm_up: $*"; }
fail() { local code=$1; shift; echo "slurm_up: cannot bring up SLURM: $*" >&2; exit "$code"; }

# Wait (polling, bounded) until the command "$@" succeeds; 1 if it never did within WAIT_S seconds.
wait_for() {
    local end=$((SECONDS + WAIT_S))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.2
    done
}
# up = idle, or running jobs already (mix/alloc: a second call while a test runs)
node_up() { case "$(sinfo -h -n localhost -o %t 2>/dev/null)" in idle | mix | alloc) return 0 ;; esac; return 1; }
pid_running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || fail 2 "not root (uid $(id -u)): installing slurm-wlm/munge and running slurmd need root"

# ------------------------------------------------------------------ packages
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || fail 3 "packages missing (${need[*]}) and no apt-get to install them"
    say "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${need[@]}" >"/tmp/optlab-slurm-apt.log" 2>&1; then
        apt-get update -q >>"/tmp/optlab-slurm-apt.log" 2>&1
        apt-get install -y -q --no-install-recommends "${need[@]}" >>"/tmp/optlab-slurm-apt.log" 2>&1 ||
            fail 4 "apt-get install ${need[*]} failed: $(tail -n 3 /tmp/optlab-slurm-apt.log | tr '\n' ' ')"
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

# ------------------------------------------------------------------ config
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail 5 "$CONF exists and was not written by this script; not touching a real cluster's config"
fi
mkdir -p "$DIR"/{ctld,d,log,run} /run/munge
ncpu=$(nproc); [ "$ncpu" -gt 2 ] && ncpu=2
# the node's memory as slurmd will measure it, less a margin (a configured RealMemory above it drains the node)
mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
conf_text="$MARK
ClusterName=optlab
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
PropagateResourceLimits=NONE
ReturnToService=2
KillWait=5
MaxArraySize=1001
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
if [ "$(cat "$CONF" 2>/dev/null)" != "$conf_text" ]; then
    mkdir -p /etc/slurm
    printf '%s\n' "$conf_text" >"$CONF"
    say "wrote $CONF (CPUs=$ncpu RealMemory=$mem)"
fi

# ------------------------------------------------------------------ daemons
log_tail() { echo "--- $1"; tail -n 15 "$1" 2>/dev/null; }

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key || fail 6 "could not create /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key /run/munge && chmod 600 /etc/munge/munge.key
    mkdir -p /var/log/munge /var/lib/munge && chown munge:munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged || fail 6 "munged did not start: $(tail -n 3 /var/log/munge/munged.log 2>/dev/null)"
    wait_for sh -c 'munge -n | unmunge' || fail 6 "munge does not authenticate (munge -n | unmunge fails)"
    touch "$DIR/run/munged.ours"  # slurm_down stops munged only if this script started it
    say "munged started"
fi

if ! pid_running "$DIR/run/slurmctld.pid"; then
    slurmctld || { log_tail "$DIR/log/slurmctld.log"; fail 6 "slurmctld did not start"; }
    say "slurmctld started"
fi
wait_for scontrol ping || { log_tail "$DIR/log/slurmctld.log"; fail 6 "slurmctld does not answer scontrol ping"; }

if ! pid_running "$DIR/run/slurmd.pid"; then
    slurmd -N localhost || { log_tail "$DIR/log/slurmd.log"; fail 6 "slurmd did not start"; }
    say "slurmd started"
fi
if ! wait_for node_up; then
    sinfo -N -l 2>&1
    log_tail "$DIR/log/slurmd.log"
    log_tail "$DIR/log/slurmctld.log"
    fail 6 "node localhost did not become idle within ${WAIT_S} s (state: $(sinfo -h -n localhost -o %t 2>&1))"
fi
say "up: $(sinfo -h -o '%P %D %t %c CPUs %m MB' 2>&1)"
