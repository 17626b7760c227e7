# Rig self-test (tests/e2e.rs, rig_stops_a_frozen_l1): stands in for a frozen
# L1 by stopping its heartbeat and going silent; run.sh must notice within
# its stall limit and exit 75 instead of waiting out this scenario.
echo "stopping the heartbeat (pid $(cat /run/kvmini-rig-heartbeat.pid))"
kill "$(cat /run/kvmini-rig-heartbeat.pid)" || exit 1
sleep 900
echo "still running: run.sh did not stop L1"
