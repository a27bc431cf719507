#!/usr/bin/env bash
# Start a single-node SLURM on localhost that looks like Snellius to Snakemake's executor plugin:
# munge, MariaDB + slurmdbd (accounting, so the plugin's default `sacct` status checks work),
# slurmctld and slurmd; partitions rome (default), genoa and gpu_h100, the last with one
# stand-in GPU (gres gpu:h100:1 backed by /dev/null) so that rules asking for `gpu` schedule.
# The node has the shape of a Snellius rome node whatever this machine has (2 x 64 cores,
# 224 GiB = 229376 MB; SlurmdParameters=config_overrides makes slurmd accept the configured
# size), and the partitions Snellius's 120 h limit with EnforcePartLimits=ALL, so that sbatch
# itself refuses what Snellius would refuse: more than 128 CPUs or 229376 MB on one node, or
# more than 5 days. Jobs on it share this machine's real cores: callers bound how many run at
# once (snakemake --jobs).
#
# Usage (as root): bash tests/slurm/up.sh      -- idempotent: starts only what is not running.
#   BFM_SLURM_BASE     state, spool and logs (default /tmp/bfm-slurm)
#   BFM_SLURM_ACCOUNT  account created for the current user (default x)
# Stop with tests/slurm/down.sh (same BFM_SLURM_BASE).
set -euo pipefail

BASE=${BFM_SLURM_BASE:-/tmp/bfm-slurm}
ACCOUNT=${BFM_SLURM_ACCOUNT:-x}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'slurm/up: %s\n' "$*" >&2; }
fail() {
	log "$1"
	for f in "$BASE"/log/*.log; do
		[ -f "$f" ] && { log "--- tail $f"; tail -n 15 "$f" >&2; }
	done
	exit 1
}
# wait_for SECONDS CMD...: poll CMD every 0.2 s.
wait_for() {
	local n=$(($1 * 5))
	shift
	for _ in $(seq "$n"); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}
# alive NAME: the daemon we started (PID file under $BASE) still runs.
alive() { [ -s "$BASE/$1.pid" ] && kill -0 "$(cat "$BASE/$1.pid")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || fail "needs root (daemons run as root, munged as user munge)"

# 1. Packages (Debian bookworm: Slurm 22.05, MariaDB 10.11); skipped when present.
need=()
for bin in slurmctld slurmd slurmdbd sinfo munged mysqld; do
	command -v "$bin" >/dev/null || need+=("$bin")
done
if [ ${#need[@]} -gt 0 ]; then
	log "installing packages (missing: ${need[*]})"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends \
		slurmctld slurmd slurmdbd slurm-client munge mariadb-server >/dev/null
fi

# 2. Configuration. Written every time; a change restarts the SLURM daemons below.
mkdir -p "$BASE"/{state,spool,log} /etc/slurm
conf=$(
	cat <<CONF
# Written by tests/slurm/up.sh: a single-node stand-in for Snellius (see profiles/snellius).
ClusterName=bfmci
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1792
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=128 Boards=1 SocketsPerBoard=2 CoresPerSocket=64 ThreadsPerCore=1 RealMemory=229376 Gres=gpu:h100:1 State=UNKNOWN
PartitionName=rome Nodes=localhost Default=YES MaxTime=5-00:00:00 State=UP
PartitionName=genoa Nodes=localhost MaxTime=5-00:00:00 State=UP
PartitionName=gpu_h100 Nodes=localhost MaxTime=5-00:00:00 State=UP
CONF
)
gres="NodeName=localhost Name=gpu Type=h100 File=/dev/null"
changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ] ||
	[ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$gres" ]; then
	changed=1
	printf '%s\n' "$conf" >/etc/slurm/slurm.conf
	printf '%s\n' "$gres" >/etc/slurm/gres.conf
fi
cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf

# 3. munge (authentication for every SLURM call). A marker file tells down.sh that we started
#    munged / MariaDB, so that it never stops ones that were running before.
mkdir -p /run/munge && chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
	mungekey -c -k /etc/munge/munge.key
	chown munge:munge /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
	runuser -u munge -- /usr/sbin/munged
	touch "$BASE/started-munged"
	wait_for 10 sh -c 'munge -n | unmunge' || fail "munged did not start"
fi

# 4. MariaDB + slurmdbd (accounting: sacct, sacctmgr).
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
	(setsid mysqld_safe --user=mysql >"$BASE/log/mysqld_safe.log" 2>&1 &)
	touch "$BASE/started-mysqld"
	wait_for 60 mysqladmin ping || fail "MariaDB did not start"
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
if ! alive slurmdbd; then
	slurmdbd
	wait_for 30 sacctmgr -n list cluster || fail "slurmdbd did not answer"
fi
user=$(id -un)
sacctmgr -n list cluster format=cluster | grep -qw bfmci || sacctmgr -i add cluster bfmci >/dev/null
sacctmgr -n list account format=account | grep -qw "$ACCOUNT" ||
	sacctmgr -i add account "$ACCOUNT" Description=ci Organization=ci >/dev/null
sacctmgr -n list user "$user" format=defaultaccount | grep -qw "$ACCOUNT" ||
	sacctmgr -i add user "$user" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null

# 5. slurmctld + slurmd (restarted when the configuration changed).
if [ "$changed" = 1 ]; then
	for d in slurmd slurmctld; do
		if alive "$d"; then
			log "configuration changed: restarting $d"
			pid=$(cat "$BASE/$d.pid")
			kill "$pid"
			wait_for 20 sh -c "! kill -0 $pid" || fail "$d ($pid) did not stop"
		fi
	done
fi
alive slurmctld || slurmctld
wait_for 30 scontrol ping || fail "slurmctld did not answer"
alive slurmd || slurmd -N localhost
node_ready() { sinfo -h -n localhost -o '%T' | grep -Eqx 'idle|mixed|allocated|completing'; }
if ! wait_for 30 node_ready; then
	# A node drained by an earlier configuration does not come back by itself.
	scontrol update nodename=localhost state=resume 2>/dev/null || true
	wait_for 15 node_ready || fail "node localhost not ready: $(sinfo -h -N -o '%T %E')"
fi
log "up: $(sinfo -h -o '%P %a %D %T' | tr '\n' ';') account $ACCOUNT, base $BASE"
