# Sourced by the suites that drive a live node (ui.sh, apifuzz.sh); not a suite itself.
# start_test_node BIN NAME: starts `BIN node` with 2 small file-backed disks in a temp data dir
# on a free port of 127.0.0.1, stops it and removes the dir on exit, and waits until it prints
# its one-time admin password and serves the API. Sets work, port, pid and pw; the caller's
# fail() explains a node that exits or never gets ready.
start_test_node() {
  local bin=$1 node_name=$2
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" node --data "$work/data" --disks 2 --disk-size 256M --name "$node_name" \
    --api-listen "127.0.0.1:$port" >"$work/node.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
  pw=""
  for _ in $(seq 1 600); do
    pw=$(sed -n 's/.*one-time password: \([A-Za-z0-9]*\).*/\1/p' "$work/node.log" | head -1)
    if [ -n "$pw" ] && grep -q "Web UI and API" "$work/node.log"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/node.log"; fail "node exited"; }
    sleep 0.1
  done
  cat "$work/node.log"
  fail "no bootstrap password printed, or the API never came up"
}
