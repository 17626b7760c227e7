# Rig self-test (tests/e2e.rs, rig_stops_a_frozen_l1): like
# tests/rig-frozen/stop_heartbeat.sh, but L1's heartbeat stops while a
# kvmini runs a guest. run.sh must stop L1 AND say that a kvmini process
# was running (kvmini-running=yes): such a freeze counts against kvmini.
# Two beats (10 s) pass first, so the beats' own count of running kvmini
# processes is what tells (not only the start the wrapper records).
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 64M \
    --cmdline "quiet -- sleep 900" >/dev/null 2>&1 &
sleep 12
echo "stopping the heartbeat (pid $(cat /run/kvmini-rig-heartbeat.pid)) while kvmini runs"
kill "$(cat /run/kvmini-rig-heartbeat.pid)" || exit 1
sleep 900
echo "still running: run.sh did not stop L1"
