# The functions spilo's user data calls (sourced, not run). Each step says what it does and
# fails with a message naming what is wrong. A failure is reported by `governor boot-failed`:
# a FAILURE signal to the stack (so a creation fails at once instead of timing out) and the
# boot log in etcd (`/service/<cluster>/boot/<instance>`, which `spilo apply` prints).
#
# Set by the boot entry: INSTANCE_ID, LOCAL_IP, VPC_CIDRS (space separated), SPILO_BOOT_LOG.

SPILO_CONFIG=/etc/spilo/governor.yaml
SPILO_ETCD_CONFIG=/etc/spilo/etcd-member.yaml
SPILO_GOVERNOR=/usr/local/bin/governor

spilo_log() { echo "spilo boot: $*" >&2; }

# Reports `$1` (with the boot log) as this instance's failure, once the configuration is
# written; CloudFormation ignores a signal once the stack no longer waits.
spilo_report_failure() {
  spilo_log "$1"
  if [ -r "$SPILO_CONFIG" ] && [ -x "$SPILO_GOVERNOR" ]; then
    "$SPILO_GOVERNOR" boot-failed --config "$SPILO_CONFIG" --name "$INSTANCE_ID" \
      --reason "$1" --log "${SPILO_BOOT_LOG:-/dev/null}" || spilo_log "could not report the failure"
  fi
}

# Reports `$1` and ends the boot.
spilo_fail() {
  spilo_report_failure "$1"
  exit 1
}

# The image must carry the spilo version that rendered the user data.
spilo_require_version() {
  local have
  have=$(cat /usr/lib/spilo/VERSION 2>/dev/null || echo unknown)
  if [ "$have" != "$1" ]; then
    spilo_fail "this image carries spilo $have but the cluster was applied with spilo $1: use the image of spilo $1 (or apply with spilo $have)"
  fi
}

# spilo_mount_data DEVICE FILESYSTEM OPTIONS MOUNTPOINT [OWNER]: waits for the EBS data
# volume, refuses an instance-store disk, makes the filesystem on a blank volume only, and
# mounts it (again at every boot; nothing happens when it is mounted already) for OWNER
# (postgres by default; etcd for an etcd member).
spilo_mount_data() {
  local dev=$1 fs=$2 opts=$3 dir=$4 owner=${5:-postgres} real model label
  for _ in $(seq 1 240); do [ -b "$dev" ] && break; sleep 0.5; done
  [ -b "$dev" ] || spilo_fail "the data volume $dev did not appear within 120 s"
  real=$(readlink -f "$dev")
  model=$(cat "/sys/class/block/$(basename "$real")/device/model" 2>/dev/null || true)
  case "$model" in
    *"Instance Storage"*) spilo_fail "$dev is an instance-store disk ($model), not the EBS data volume" ;;
  esac
  mkdir -p "$dir"
  if mountpoint -q "$dir"; then
    spilo_log "$dir is mounted already"
  else
    # Only a volume blkid finds nothing on (exit status 2: no filesystem, no partition table,
    # no other signature) is blank; anything else, an error included, is never formatted.
    local probe=0
    blkid -p "$real" >/dev/null 2>&1 || probe=$?
    case "$probe" in
      2)
        spilo_log "making a $fs filesystem on the blank volume $dev ($real)"
        mkfs -t "$fs" -L spilo-data "$real" >/dev/null || spilo_fail "mkfs -t $fs $dev failed"
        ;;
      0) ;;
      *) spilo_fail "cannot tell whether $dev holds data (blkid exit status $probe): not formatting it" ;;
    esac
    if [ -z "$(blkid -p -o value -s TYPE "$real" 2>/dev/null || true)" ]; then
      spilo_fail "$dev holds no filesystem spilo can mount ($(blkid -p -o export "$real" 2>/dev/null | tr '\n' ' ')): not formatting it"
    fi
    label=$(blkid -o value -s LABEL "$real" || true)
    [ "$label" = spilo-data ] || spilo_log "note: $dev has the label '$label', not spilo-data"
    mount -t "$fs" -o "$opts" "$real" "$dir" || spilo_fail "cannot mount $dev on $dir"
    spilo_log "mounted $dev ($real) on $dir"
  fi
  chown "$owner:$owner" "$dir"
}

# Writes the governor configuration from standard input.
spilo_write_config() {
  install -d -m 750 -o root -g postgres /etc/spilo
  cat >"$SPILO_CONFIG.new"
  chown root:postgres "$SPILO_CONFIG.new"
  chmod 640 "$SPILO_CONFIG.new"
  mv "$SPILO_CONFIG.new" "$SPILO_CONFIG"
}

# Runs the governor as postgres and starts it again when it exits, after a pause that
# doubles from 1 s to 60 s (back to 1 s after it ran for 5 minutes). SIGTERM reaches the
# governor itself (setpriv execs it; runuser would SIGKILL it 2 s after forwarding the signal)
# and it stops gracefully, handing the leader key over. Failures are reported with the last
# error line: when the governor says its configuration cannot work (exit status 2, e.g. a
# password it may not read) three times in a row, or when it has failed for 5 minutes (a
# passing outage of etcd or DNS at boot is no reason to fail the stack).
spilo_run_governor() {
  local pause=1 started rc child="" failures=0 doomed=0 failing_since="" reported=""
  local out why fd tee_pid cidr networks=()
  for cidr in ${VPC_CIDRS:-}; do networks+=(--allowed-network "$cidr"); done
  out="$(dirname "${SPILO_BOOT_LOG:-/run/spilo/boot.log}")/governor.out"
  trap 'spilo_log "stopping the governor"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
  while true; do
    started=$SECONDS
    spilo_log "starting the governor ($("$SPILO_GOVERNOR" --version))"
    # The governor's output goes to the boot's own output and to $out, whose last error
    # line names a failure; tee is waited for, so $out is complete before it is read.
    exec {fd}> >(tee "$out")
    tee_pid=$!
    HOME=/home/postgres setpriv --reuid=postgres --regid=postgres --init-groups -- \
      "$SPILO_GOVERNOR" run --config "$SPILO_CONFIG" \
      --name "$INSTANCE_ID" --connect-host "$LOCAL_IP" "${networks[@]}" >&"$fd" 2>&1 &
    child=$!
    rc=0
    wait "$child" || rc=$?
    child=""
    exec {fd}>&-
    wait "$tee_pid" || true
    if [ $((SECONDS - started)) -ge 300 ]; then
      pause=1; failures=0; doomed=0; failing_since=""; reported=""
    fi
    failures=$((failures + 1))
    if [ "$rc" -eq 2 ]; then doomed=$((doomed + 1)); else doomed=0; fi
    failing_since=${failing_since:-$SECONDS}
    spilo_log "the governor exited with status $rc; starting it again in ${pause}s"
    if [ -z "$reported" ] && { [ "$doomed" -ge 3 ] || [ $((SECONDS - failing_since)) -ge 300 ]; }; then
      why=$(grep -a 'error' "$out" | tail -n 1 | cut -c1-400)
      spilo_report_failure "the governor failed $failures times in a row: ${why:-status $rc}"
      reported=yes
    fi
    sleep "$pause"
    pause=$((pause * 2 > 60 ? 60 : pause * 2))
  done
}

# Writes an etcd member's keeper configuration from standard input.
spilo_write_etcd_config() {
  install -d -m 755 -o root -g root /etc/spilo
  cat >"$SPILO_ETCD_CONFIG.new"
  chown root:etcd "$SPILO_ETCD_CONFIG.new"
  chmod 640 "$SPILO_ETCD_CONFIG.new"
  mv "$SPILO_ETCD_CONFIG.new" "$SPILO_ETCD_CONFIG"
}

# Runs the etcd keeper (`governor etcd-member`, which runs etcd as its child) as the etcd user
# and starts it again when it exits, after a pause that doubles from 1 s to 60 s (back to 1 s
# after it ran for 5 minutes). SIGTERM reaches the keeper, which stops etcd.
spilo_run_etcd_member() {
  local pause=1 started rc child=""
  trap 'spilo_log "stopping the etcd keeper"; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
  while true; do
    started=$SECONDS
    spilo_log "starting the etcd keeper ($("$SPILO_GOVERNOR" --version))"
    HOME=/var/lib/etcd setpriv --reuid=etcd --regid=etcd --init-groups -- \
      "$SPILO_GOVERNOR" etcd-member --config "$SPILO_ETCD_CONFIG" \
      --name "$INSTANCE_ID" --connect-host "$LOCAL_IP" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    child=""
    if [ $((SECONDS - started)) -ge 300 ]; then pause=1; fi
    spilo_log "the etcd keeper exited with status $rc; starting it again in ${pause}s"
    sleep "$pause"
    pause=$((pause * 2 > 60 ? 60 : pause * 2))
  done
}
