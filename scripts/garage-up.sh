# Waiting for a freshly started Garage server, shared by scripts/testbed.sh and bench/scale.sh
# (sourced, not run). Each caller says how to run the garage CLI against its own server.

# garage_node_id CMD...: print the node id of the server that `CMD node id` reaches, once it also
# answers over RPC; fail after about 20 s. `node id` only reads the key file, which can exist
# before the server listens, so without `status` the layout commands that follow race its start.
garage_node_id() {
  local node
  for _ in $(seq 1 200); do
    if node="$("$@" node id -q 2>/dev/null)" && "$@" status >/dev/null 2>&1; then
      echo "$node"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# wait_for_port HOST PORT: wait until HOST:PORT accepts a TCP connection; fail after about 11 s.
# bash's /dev/tcp: a refused connect fails at once, and `timeout` bounds one that hangs.
wait_for_port() {
  for _ in $(seq 1 100); do
    if timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# fail_with_log MESSAGE FILE...: stop the calling script with MESSAGE (through its own `log`),
# then the log FILEs that say why.
fail_with_log() { log "$1"; cat "${@:2}" >&2; exit 1; }
