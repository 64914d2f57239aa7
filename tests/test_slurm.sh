#!/usr/bin/env bash
# Scale-out on a real scheduler (issue 34): README.md's Slurm job array
# (examples/slurm-array.sh, shown by README's <!-- slurm-array --> block) run on
# a one-node Slurm cluster on localhost that this test starts itself: munged,
# slurmctld and slurmd as its own background processes, with their config,
# keys, state and logs in a temporary folder, and a fake GPU per CPU (gres
# files that point at /dev/null) so that the script's --gres=gpu:1 is
# scheduled as on a GPU cluster: as many tasks at once as this machine has
# CPUs. Everything it started is stopped on exit, whatever happens.
#
# On the tiny model (2 steps, 32x32), over a 40-line prompt file:
#   1. an unsharded sdgen run: the reference images and --json lines;
#   2. `sbatch --array=0-3`: the folder holds exactly the reference's images,
#      byte for byte, and the tasks' logs one --json line per image;
#   3. failure: task 1's sdgen is killed (kill -9) mid-run and the task is
#      requeued (`scontrol requeue`), task 0 is cancelled (`scancel`, SIGTERM)
#      and resubmitted alone (`sbatch --array=0`): the folder ends as in 2,
#      with no temporary file, and no image generated twice;
#   4. a race: the same shard submitted twice at once into one folder never
#      leaves a corrupt PNG or a temporary file.
#
#   tests/test_slurm.sh BUILD_DIR SOURCE_DIR SHARED_DIR     (ctest: test_slurm, label slurm)
# Installs the Debian packages (slurmctld slurmd slurm-client munge) when
# missing and run as root; SDGEN_SLURM_INSTALL=0 never installs. Exit code 77
# (ctest: skipped), with the reason, when Slurm cannot be installed or started
# or the tiny model is missing.
set -euo pipefail

build=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
shared=${SDGEN_SHARED_DIR:-$3}  # as the C++ tests: the environment wins
. "$source_dir/tests/readme_block.sh"
script=$source_dir/examples/slurm-array.sh
model=$shared/models/sd1-tiny
export PATH=$PATH:/usr/sbin:/sbin

skip() {
  echo "test_slurm: skipped: $*"
  exit 77
}
fail() {
  echo "test_slurm: FAILED: $*" >&2
  exit 1
}
started=$SECONDS
# Fail (and clean up) before ctest's TIMEOUT of 600 s would kill the test.
deadline_all=$((SECONDS + 540))
say() { printf '== [%3ds] %s\n' $((SECONDS - started)) "$*"; }

# The documented script is the tested one (no Slurm needed for this check).
say "README's <!-- slurm-array --> block is $script"
diff -u <(readme_block slurm-array) "$script" || fail "README.md's slurm-array block differs from $script"

[ -x "$build/sdgen" ] || fail "$build/sdgen is missing: build it first"
[ -f "$model/model_index.json" ] || skip "the tiny model $model is missing (SDGEN_SHARED_DIR)"

# --- Slurm from Debian's packages ------------------------------------------
tools="munged mungekey slurmctld slurmd sbatch squeue sinfo scontrol scancel"
missing() {
  local t
  for t in $tools; do command -v "$t" >/dev/null || echo "$t"; done
}
if [ -n "$(missing)" ]; then
  [ "${SDGEN_SLURM_INSTALL:-1}" = 1 ] || skip "Slurm is not installed ($(missing | xargs)) and SDGEN_SLURM_INSTALL=0"
  [ "$(id -u)" = 0 ] || skip "Slurm is not installed ($(missing | xargs)) and installing needs root"
  command -v apt-get >/dev/null || skip "Slurm is not installed and there is no apt-get"
  say "installing slurmctld slurmd slurm-client munge"
  # The packages' init scripts must not start system daemons (none would be
  # stopped): a policy-rc.d refuses them while installing, unless one exists.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
  fi
  rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq \
        --no-install-recommends slurmctld slurmd slurm-client munge
  } >/tmp/sdgen-slurm-apt.$$.log 2>&1 || rc=$?
  [ -z "$policy" ] || rm -f "$policy"
  if [ "$rc" != 0 ]; then
    tail -n 20 /tmp/sdgen-slurm-apt.$$.log
    rm -f /tmp/sdgen-slurm-apt.$$.log
    skip "apt-get could not install Slurm (exit code $rc, log above)"
  fi
  rm -f /tmp/sdgen-slurm-apt.$$.log
  [ -z "$(missing)" ] || skip "Slurm's packages are installed but $(missing | xargs) are still missing"
fi
[ "$(id -u)" = 0 ] || skip "slurmd runs jobs as their user and needs root"
say "$(slurmctld -V), $(munged -V 2>&1 | sed -n 1p)"

# --- a one-node cluster on localhost ---------------------------------------
tmp=$(mktemp -d /tmp/sdgen-slurm-test.XXXXXX)
chmod 755 "$tmp"  # munged wants its socket's folders searchable by all
mkdir -p "$tmp"/{etc,run,state,spool,log,dev,jobs,logs,cache}
chmod 700 "$tmp/etc"
munged_pid="" slurmctld_pid="" slurmd_pid=""

# Every process this test starts, directly or through Slurm, carries this
# variable: at exit, whatever is left of them is found by it and killed by id.
marker="SDGEN_SLURM_TEST=$tmp"
cleanup() {
  local rc=$? p i f
  set +e
  trap - EXIT
  if [ -n "$slurmctld_pid" ] && kill -0 "$slurmctld_pid" 2>/dev/null; then
    for p in $(squeue -h -o %A 2>/dev/null | sort -u); do scancel "$p"; done
    for i in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
    for f in "$tmp"/log/*.log "$tmp"/logs/*.err; do
      [ -s "$f" ] && { echo "--- last lines of $f"; grep -v pmix "$f" | tail -n 15; }
    done
  fi
  for p in $slurmd_pid $slurmctld_pid; do kill "$p" 2>/dev/null; done
  for i in $(seq 20); do
    kill -0 $slurmd_pid $slurmctld_pid 2>/dev/null || break
    sleep 0.5
  done
  for p in $slurmd_pid $slurmctld_pid; do kill -9 "$p" 2>/dev/null; done
  [ -n "$munged_pid" ] && kill "$munged_pid" 2>/dev/null
  wait 2>/dev/null
  for p in /proc/[0-9]*; do
    grep -qzxF "$marker" "$p/environ" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null
  done
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

host=$(hostname -s)
cpus=$(nproc)
[ "$cpus" -ge 2 ] || skip "one CPU: the array needs two tasks running at once"
# Two free TCP ports next to each other, away from Slurm's defaults (6817/6818)
# so that a system Slurm or a second run of this test does not collide.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 30000))
  if port_free "$p" && port_free $((p + 1)); then
    port=$p
    break
  fi
done
[ -n "$port" ] || skip "no two free TCP ports found for slurmctld and slurmd"

dd if=/dev/urandom of="$tmp/etc/munge.key" bs=1024 count=1 status=none
chmod 400 "$tmp/etc/munge.key"
for i in $(seq 0 $((cpus - 1))); do ln -s /dev/null "$tmp/dev/gpu$i"; done
cat >"$tmp/etc/slurm.conf" <<EOF
ClusterName=sdgentest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Its own munged; a requeued job may start again cred_expire s after it ended.
AuthInfo=socket=$tmp/run/munge.socket,cred_expire=10
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/run/slurmctld.pid
SlurmdPidFile=$tmp/run/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
# No systemd, no cgroups needed: processes tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=5
MinJobAge=600
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 Gres=gpu:$cpus State=UNKNOWN
PartitionName=sdgen Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
echo "Name=gpu File=$tmp/dev/gpu[0-$((cpus - 1))]" >"$tmp/etc/gres.conf"
export SLURM_CONF=$tmp/etc/slurm.conf XDG_CACHE_HOME=$tmp/cache

say "starting munged, slurmctld and slurmd ($host, $cpus CPUs and fake GPUs, ports $port-$((port + 1)))"
env "$marker" munged -F --socket="$tmp/run/munge.socket" --key-file="$tmp/etc/munge.key" \
  --log-file="$tmp/log/munged.log" --pid-file="$tmp/run/munged.pid" \
  --seed-file="$tmp/etc/munged.seed" >"$tmp/log/munged.out" 2>&1 &
munged_pid=$!
for _ in $(seq 50); do [ -S "$tmp/run/munge.socket" ] && break; sleep 0.2; done
if [ ! -S "$tmp/run/munge.socket" ]; then
  cat "$tmp/log/munged.out"
  skip "munged did not start (its output above)"
fi
env "$marker" slurmctld -D -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
slurmctld_pid=$!
env "$marker" slurmd -D -f "$SLURM_CONF" >"$tmp/log/slurmd.out" 2>&1 &
slurmd_pid=$!
state=""
for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  if ! kill -0 "$slurmctld_pid" 2>/dev/null || ! kill -0 "$slurmd_pid" 2>/dev/null; then break; fi
  sleep 0.5
done
if [ "$state" != idle ]; then
  for f in slurmctld slurmd; do
    echo "--- $f"
    cat "$tmp/log/$f.out" "$tmp/log/$f.log" 2>/dev/null | grep -v pmix | tail -n 15 || true
  done
  skip "the Slurm node did not become idle (state '${state:-none}'; daemon logs above)"
fi
say "node $host idle: $(sinfo -h -o '%P %D %c CPUs %G')"

# --- the prompts, the reference -------------------------------------------
colors=(red green blue yellow)
shapes=(circle square triangle star cross ring diamond heart arrow moon)
for i in $(seq 0 39); do
  echo "a ${colors[i % 4]} ${shapes[i / 4]} number $i"
done >"$tmp/prompts.txt"
n_images=40
shards=4
gen_args="-W 32 -H 32 --steps 2"

say "reference: one unsharded sdgen run over the 40 prompts"
# shellcheck disable=SC2086
timeout $((deadline_all - SECONDS)) "$build/sdgen" --model "$model" --prompt-file "$tmp/prompts.txt" --seed 1 $gen_args \
  -o "$tmp/ref/{index}-{prompt}.png" --json >"$tmp/ref.jsonl" 2>"$tmp/ref.err" ||
  { cat "$tmp/ref.err"; fail "the reference run failed"; }
(cd "$tmp/ref" && ls -A) >"$tmp/ref.list"
[ "$(wc -l <"$tmp/ref.list")" = $n_images ] || fail "the reference run wrote $(wc -l <"$tmp/ref.list") files, not $n_images"
[ "$(grep -c '^{' "$tmp/ref.jsonl")" = $n_images ] || fail "the reference run printed $(grep -c '^{' "$tmp/ref.jsonl") --json lines"
say "reference done: $n_images images"

# sbatch [options] for the script, the settings in the environment: the job id.
submit() {
  local out=$1
  shift
  (cd "$tmp/jobs" && env "$marker" SDGEN="$build/sdgen" SDGEN_MODEL="$model" \
    SDGEN_PROMPTS="$tmp/prompts.txt" SDGEN_OUT="$out" SDGEN_SHARDS=$shards SDGEN_ARGS="$gen_args" \
    sbatch --parsable --open-mode=append --output="$tmp/logs/%A_%a.out" \
    --error="$tmp/logs/%A_%a.err" "$@" "$script") | cut -d';' -f1
}
# Waits until none of the given jobs is pending or running (at most $1 s),
# showing their queue each time it changes.
wait_jobs() {
  local limit=$1 deadline=$((SECONDS + $1)) ids queue shown=""
  shift
  [ $deadline -le $deadline_all ] || deadline=$deadline_all
  ids=$(IFS=,; echo "$*")
  while :; do
    queue=$(squeue -h -j "$ids" -o '%i %T %r' 2>/dev/null | sort | paste -sd, - | sed 's/,/, /g' || true)
    [ -n "$queue" ] || break
    [ "$queue" = "$shown" ] || say "queue: $queue"
    shown=$queue
    [ $SECONDS -lt $deadline ] || fail "jobs $ids not done in time (${limit}s at most)"
    sleep 0.5
  done
}
# One line per array task: id, state, exit code, restarts.
show_jobs() {
  local id
  for id in "$@"; do
    scontrol -o show job "$id" | tr ' ' '\n' |
      awk -F= '$1 == "ArrayJobId" { a = $2 } $1 == "ArrayTaskId" { t = $2 } $1 == "JobState" { s = $2 }
               $1 == "ExitCode" { e = $2 } $1 == "Restarts" { r = $2 }
               $1 == "Partition" && a != "" { printf "   job %s_%s %-10s exit %s restarts %s\n", a, t, s, e, r; a = "" }'
  done
}
# The states of the given jobs' tasks, sorted, one word each.
job_states() {
  local id
  for id in "$@"; do scontrol -o show job "$id" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; done | sort | xargs
}
# Checks folder $1 holds exactly the reference's images named in $2 (default:
# all), byte for byte, and nothing else (no temporary file).
check_folder() {
  local dir=$1 list=${2:-$tmp/ref.list} name bad=0
  (cd "$dir" && ls -A) >"$tmp/got.list"
  if ! diff -u "$list" "$tmp/got.list"; then
    fail "$dir does not hold exactly the expected files (diff above: - missing, + extra)"
  fi
  while read -r name; do
    cmp -s "$tmp/ref/$name" "$dir/$name" || { echo "differs from the reference: $name"; bad=1; }
  done <"$list"
  [ $bad = 0 ] || fail "images in $dir differ from the unsharded run"
}
# The --json "index" of every line of the given logs, one a line.
json_indices() { cat "$@" | grep '^{' | grep -o '"index":[0-9]*' | cut -d: -f2; }
# Checks each index 0..n-1 occurs the number of times $1 allows ("1", "1-2")
# in the --json lines of the logs that follow.
check_counts() {
  local allowed=$1 i c lo hi
  shift
  lo=${allowed%-*} hi=${allowed#*-}
  json_indices "$@" | sort -n | uniq -c | awk '{ print $2, $1 }' >"$tmp/counts"
  for i in $(seq 0 $((n_images - 1))); do
    c=$(awk -v i="$i" '$1 == i { print $2 }' "$tmp/counts")
    c=${c:-0}
    if [ "$c" -lt "$lo" ] || [ "$c" -gt "$hi" ]; then fail "image $i: $c --json lines, expected $allowed"; fi
  done
}

# --- 2. the array ----------------------------------------------------------
say "array: sbatch --array=0-$((shards - 1)) $script"
job=$(submit "$tmp/out" --array=0-$((shards - 1)))
say "submitted job $job"
wait_jobs 300 "$job"
say "job $job done:"
show_jobs "$job"
[ "$(job_states "$job")" = "COMPLETED COMPLETED COMPLETED COMPLETED" ] || fail "job $job: states $(job_states "$job")"
check_folder "$tmp/out"
check_counts 1 "$tmp"/logs/"${job}"_*.out
# ... and the --json lines name those files.
cat "$tmp"/logs/"${job}"_*.out | grep '^{' | grep -o '"path":"[^"]*"' | sed 's|.*/||; s|"$||' | sort >"$tmp/json.list"
diff -u <(sort "$tmp/ref.list") "$tmp/json.list" || fail "the --json lines' paths differ from the files (diff above)"
say "array: $n_images images identical to the unsharded run, one --json line each"

# --- 3. a killed and a cancelled task, requeued and resubmitted -------------
say "failure: the array again into a new folder"
job=$(submit "$tmp/out2" --array=0-$((shards - 1)))
say "submitted job $job"
# The pid of task $1's sdgen (the script execs sdgen, so the task's process is
# sdgen's), found by its command line: one pgrep, fast enough to catch a task
# between two 0.1 s images (a walk over /proc from bash takes longer).
task_pid() {
  if command -v pgrep >/dev/null; then
    pgrep -f -- "--shard $1/$shards -o $tmp/out2/" | sed -n 1p
    return
  fi
  local p exe
  exe=$(readlink -f "$build/sdgen")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = "$exe" ] || continue
    grep -qzxF "SLURM_ARRAY_TASK_ID=$1" "$p/environ" 2>/dev/null || continue
    grep -qzxF "SLURM_ARRAY_JOB_ID=$job" "$p/environ" 2>/dev/null && echo "${p#/proc/}"
  done
}
wrote() { [ -f "$tmp/logs/${job}_$1.out" ] && grep -q '^{' "$tmp/logs/${job}_$1.out"; }
# Each task's sdgen is found while it loads the model and frozen (SIGSTOP) as
# soon as it has written its first image, so that neither can finish its
# shard before the kill and the cancel arrive, however fast the machine is.
pid0="" pid1="" stopped0="" stopped1=""
deadline=$((SECONDS + 120))
until [ -n "$stopped0" ] && [ -n "$stopped1" ]; do
  [ $SECONDS -lt $deadline ] || fail "tasks 0 and 1 of job $job wrote no image in 120 s"
  for k in 0 1; do
    var=pid$k stop=stopped$k
    [ -z "${!stop}" ] || continue
    [ -n "${!var}" ] || printf -v "$var" %s "$(task_pid $k)"
    wrote $k || continue
    [ -n "${!var}" ] || fail "the sdgen of task ${job}_$k was not found (it ended already?)"
    kill -STOP "${!var}" 2>/dev/null || fail "task ${job}_$k ended before it could be stopped"
    printf -v "$stop" 1
  done
  sleep 0.02
done
pid=$pid1
kill -9 "$pid"
# scancel sends SIGCONT before SIGTERM; continue it too, in case.
scancel "${job}_0"
kill -CONT "$pid0" 2>/dev/null || true
say "killed task ${job}_1's sdgen (pid $pid, kill -9) after $(grep -c '^{' "$tmp/logs/${job}_1.out") images, cancelled ${job}_0 after $(grep -c '^{' "$tmp/logs/${job}_0.out")"
for _ in $(seq 60); do
  [ -z "$(squeue -h -t R,CG -j "${job}_0,${job}_1" 2>/dev/null)" ] && break
  sleep 0.5
done
show_jobs "$job"
scontrol requeue "${job}_1"
job_b=$(submit "$tmp/out2" --array=0)
say "requeued ${job}_1 (scontrol requeue); resubmitted index 0 as job $job_b (sbatch --array=0)"
wait_jobs 300 "$job" "$job_b"
say "jobs $job and $job_b done:"
show_jobs "$job" "$job_b"
[ "$(job_states "$job")" = "CANCELLED COMPLETED COMPLETED COMPLETED" ] || fail "job $job: states $(job_states "$job")"
[ "$(job_states "$job_b")" = COMPLETED ] || fail "job $job_b: states $(job_states "$job_b")"
[[ "$(scontrol -o show job "${job}_1")" == *" Restarts=1 "* ]] || fail "task ${job}_1 was not run again once"
# sdgen writes each PNG to ".NAME.tmpPID" and renames it: a kill -9 can leave
# only such a file, of the killed pid, and only if it struck inside the write.
for leftover in "$tmp/out2"/.*.png.tmp"$pid"; do
  [ -e "$leftover" ] || continue
  say "the kill -9 struck inside a PNG write: ${leftover##*/} is left (never a partial PNG)"
  rm -f "$leftover"
done
check_folder "$tmp/out2"
# Nothing generated twice: each image has one --json line across all the
# logs (the killed task's, its requeued run's, the cancelled one's and the
# resubmission's), except that a kill -9 between the rename and the --json
# line leaves one image of shard 1 written without one (it is then skipped).
logs=("$tmp"/logs/"${job}"_*.out "$tmp"/logs/"${job_b}"_*.out)
check_counts 0-1 "${logs[@]}"
missing_json=$(json_indices "${logs[@]}" | sort | comm -13 - <(seq 0 $((n_images - 1)) | sort))
if [ -n "$missing_json" ]; then
  if [ "$(echo "$missing_json" | wc -l)" != 1 ] || [ $((missing_json % shards)) != 1 ]; then
    fail "images without a --json line: $(echo "$missing_json" | xargs)"
  fi
  say "image $missing_json was written just before the kill -9, without its --json line"
fi
say "failure: $n_images images identical to the unsharded run, none generated twice"

# --- 4. the same shard twice at once ---------------------------------------
say "race: shard 1 submitted twice at once into one folder"
job_c=$(submit "$tmp/out3" --array=1)
job_d=$(submit "$tmp/out3" --array=1)
say "submitted jobs $job_c and $job_d"
wait_jobs 300 "$job_c" "$job_d"
show_jobs "$job_c" "$job_d"
[ "$(job_states "$job_c" "$job_d")" = "COMPLETED COMPLETED" ] || fail "jobs $job_c $job_d: states $(job_states "$job_c" "$job_d")"
awk -F- -v n=$shards '$1 % n == 1' "$tmp/ref.list" >"$tmp/shard1.list"
check_folder "$tmp/out3" "$tmp/shard1.list"
twice=$(json_indices "$tmp"/logs/"${job_c}"_*.out "$tmp"/logs/"${job_d}"_*.out | sort | uniq -d | wc -l)
say "race: $(wc -l <"$tmp/shard1.list") images identical to the reference, $twice generated by both jobs"

say "test_slurm: passed"
