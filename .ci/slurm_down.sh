#!/usr/bin/env bash
# Tear down what .ci/slurm_up.sh brought up: cancel its jobs; stop slurmd, slurmctld and munged (the
# last only if slurm_up started it; by their pid files, nothing else); remove its state folder and
# its /etc/slurm/slurm.conf. The packages stay installed. Idempotent: nothing up, nothing done.
set -uo pipefail

DIR=${OPTLAB_SLURM_DIR:-/var/lib/optlab-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by optlab .ci/slurm_up.sh"
export PATH="$PATH:/usr/sbin:/sbin"

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm_down: $CONF was not written by .ci/slurm_up.sh; leaving this machine's SLURM alone" >&2
    exit 5
fi

# Stop the process of pid file $1 (SIGTERM, then SIGKILL after 20 s) and wait until it is gone.
stop() {
    local pidfile=$1 name=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    local end=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $end ]; then kill -KILL "$pid" 2>/dev/null; fi
        sleep 0.1
    done
    echo "slurm_down: stopped $name (pid $pid)"
}

if [ -e "$CONF" ]; then
    scancel --user=root --quiet 2>/dev/null || true
    stop "$DIR/run/slurmd.pid" slurmd
    stop "$DIR/run/slurmctld.pid" slurmctld
    rm -f "$CONF"
fi
[ -e "$DIR/run/munged.ours" ] && stop /run/munge/munged.pid munged
rm -rf "$DIR"
echo "slurm_down: down"
