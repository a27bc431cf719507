#!/usr/bin/env bash
# Stop the single-node SLURM started by tests/slurm/up.sh (same BFM_SLURM_BASE): only the
# daemons it started, by their PID files. Idempotent. The packages, the accounting database
# and $BASE stay, so the next up.sh takes seconds; BFM_SLURM_PURGE=1 also removes $BASE and
# drops the accounting database.
set -uo pipefail

BASE=${BFM_SLURM_BASE:-/tmp/bfm-slurm}

log() { printf 'slurm/down: %s\n' "$*" >&2; }
# stop NAME PIDFILE: TERM the process, wait up to 20 s for it to exit.
stop() {
	local pid
	[ -s "$2" ] || return 0
	pid=$(cat "$2")
	kill -0 "$pid" 2>/dev/null || return 0
	log "stopping $1 ($pid)"
	kill "$pid"
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
	log "$1 ($pid) still running after 20 s"
}

command -v scancel >/dev/null && [ -s "$BASE/slurmctld.pid" ] && scancel --user "$(id -un)" 2>/dev/null
stop slurmd "$BASE/slurmd.pid"
stop slurmctld "$BASE/slurmctld.pid"
stop slurmdbd "$BASE/slurmdbd.pid"
if [ "${BFM_SLURM_PURGE:-0}" = 1 ] && command -v mysql >/dev/null; then
	mysql -e "DROP DATABASE IF EXISTS slurm_acct_db" 2>/dev/null
fi
if [ -f "$BASE/started-mysqld" ]; then
	log "stopping MariaDB"
	mysqladmin shutdown 2>/dev/null || true
	rm -f "$BASE/started-mysqld"
fi
if [ -f "$BASE/started-munged" ]; then
	stop munged /run/munge/munged.pid
	rm -f "$BASE/started-munged"
fi
if [ "${BFM_SLURM_PURGE:-0}" = 1 ]; then
	rm -rf "$BASE"
fi
exit 0
