#!/bin/sh
# Starts and stops a private RabbitMQ node for the broker tests, examples and
# benchmark: its own node name, its own free ports (AMQP, Erlang distribution,
# epmd, the command-line tools' distribution range), and its data, logs and
# configuration under DIR.  No system service is used or touched.
#
#   rabbitmq.sh start DIR   start the node (or reuse it if it already runs),
#                           wait until it answers, print its amqp:// URL
#   rabbitmq.sh stop DIR    stop the node, its epmd and everything they
#                           started; safe after a failed or partial start
#   rabbitmq.sh url DIR     print the URL of the node recorded in DIR
#   rabbitmq.sh tls-url DIR print its amqps:// URL (a TLS listener whose
#                           certificate, for host localhost, is signed by the
#                           test CA DIR/tls/ca.pem; made when openssl is
#                           there, else the command fails)
#   rabbitmq.sh ctl DIR ARGS...   run rabbitmqctl ARGS against the node
#
# The node takes messages up to 16 MiB (max_message_size), so tests can
# meet the broker's own limit without huge buffers.
# A start after a stop in the same DIR reuses the node name, the data and
# (when they are still free) the ports, so durable queues survive a restart
# and the URL stays the same.  CONC_RABBITMQ_TIMEOUT (seconds, default 90)
# bounds the wait for the node.
set -e
cmd=$1
dir=$2
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: rabbitmq.sh start|stop|url|ctl DIR [ARGS...]" >&2
  exit 2
fi
shift 2
bin=/usr/lib/rabbitmq/bin
if [ ! -x "$bin/rabbitmq-server" ]; then
  echo "rabbitmq.sh: rabbitmq-server is not installed (scripts/deps.sh build)" >&2
  exit 1
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
state="$dir/node.env"
timeout=${CONC_RABBITMQ_TIMEOUT:-90}

# Prints N distinct ports that are free on 127.0.0.1 right now.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Succeeds when every port given is free on 127.0.0.1.
ports_free() {
  python3 - "$@" <<'EOF'
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
EOF
}

# The environment both the node and the command-line tools read.
load_env() {
  . "$state"
  export HOME="$dir"
  export CONC_RABBITMQ_DIR="$dir"
  export RABBITMQ_NODENAME="$NODE"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$AMQP_PORT"
  export RABBITMQ_DIST_PORT="$DIST_PORT"
  export ERL_EPMD_PORT="$EPMD_PORT"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_CTL_DIST_PORT_MIN="$CTL_PORT"
  export RABBITMQ_CTL_DIST_PORT_MAX="$CTL_PORT"
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  export RABBITMQ_USE_LONGNAME=false
}

ctl() {
  "$bin/rabbitmqctl" -n "$NODE" "$@"
}

# Kills the process group recorded in FILE (TERM, then KILL), then forgets it.
# Succeeds when the process group recorded in FILE is still this node's: its
# leader carries DIR's marker in its environment (a number alone could have
# been reused by an unrelated group since).
group_ours() {
  [ -f "$1" ] || return 1
  pg=$(cat "$1")
  case "$pg" in ''|*[!0-9]*) return 1 ;; esac
  { tr '\0' '\n' < "/proc/$pg/environ"; } 2>/dev/null | grep -qx "CONC_RABBITMQ_DIR=$dir"
}

kill_group() {
  [ -f "$1" ] || return 0
  pg=$(cat "$1")
  case "$pg" in ''|*[!0-9]*) rm -f "$1"; return 0 ;; esac
  if group_ours "$1"; then
    /bin/kill -s TERM -- "-$pg" 2>/dev/null || true
    i=0
    while /bin/kill -s 0 -- "-$pg" 2>/dev/null && [ $i -lt 100 ]; do
      sleep 0.1
      i=$((i + 1))
    done
    /bin/kill -s KILL -- "-$pg" 2>/dev/null || true
  fi
  rm -f "$1"
  # erl_child_setup and inet_gethost run in process groups of their own: find
  # whatever still carries this node's marker in its environment.
  for e in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' < "$e"; } 2>/dev/null | grep -qx "CONC_RABBITMQ_DIR=$dir"; then
      p=${e#/proc/}
      /bin/kill -s KILL -- "${p%/environ}" 2>/dev/null || true
    fi
  done
}

print_url() {
  echo "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
}

case "$cmd" in
start)
  if [ -f "$state" ]; then
    . "$state"
    # A node already running is reused only when it answers; one that is
    # half gone (stopping, crashed with its epmd alive) is stopped first.
    if group_ours "$dir/group.pid"; then
      load_env
      if ctl --timeout 15 await_startup > "$dir/log/await.out" 2>&1; then
        print_url
        exit 0
      fi
      kill_group "$dir/group.pid"
      . "$state"
    fi
    ports_free "$AMQP_PORT" "$DIST_PORT" "$EPMD_PORT" "$CTL_PORT" ${TLS_PORT:-} || {
      set -- $(free_ports 5)
      AMQP_PORT=$1 DIST_PORT=$2 EPMD_PORT=$3 CTL_PORT=$4 TLS_PORT=$5
    }
    [ -n "${TLS_PORT:-}" ] || TLS_PORT=$(free_ports 1)
  else
    set -- $(free_ports 5)
    NODE="conc$1@localhost"
    AMQP_PORT=$1 DIST_PORT=$2 EPMD_PORT=$3 CTL_PORT=$4 TLS_PORT=$5
  fi
  cat > "$state" <<EOF
NODE=$NODE
AMQP_PORT=$AMQP_PORT
DIST_PORT=$DIST_PORT
EPMD_PORT=$EPMD_PORT
CTL_PORT=$CTL_PORT
TLS_PORT=$TLS_PORT
EOF
  mkdir -p "$dir/mnesia" "$dir/log"
  : > "$dir/rabbitmq-env.conf"
  echo "[]." > "$dir/enabled_plugins"
  echo "[]." > "$dir/advanced.config"
  cat > "$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users = none
max_message_size = 16777216
log.file.level = warning
log.console = false
EOF
  # A TLS listener, with a test CA and a certificate for localhost.
  if command -v openssl >/dev/null 2>&1; then
    t="$dir/tls"
    if [ ! -s "$t/server.pem" ]; then
      mkdir -p "$t"
      (
        cd "$t" &&
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
          -subj "/CN=conc test CA" &&
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
          -subj "/CN=localhost" &&
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
          -out server.pem -days 3650 -extfile server.ext
      ) > "$dir/log/tls.out" 2>&1 || rm -f "$t/server.pem"
    fi
    if [ -s "$t/server.pem" ]; then
      cat >> "$dir/rabbitmq.conf" <<EOF
listeners.ssl.default = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $t/ca.pem
ssl_options.certfile = $t/server.pem
ssl_options.keyfile = $t/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
    fi
  fi
  # The cookie the node and the tools share: private to DIR.
  if [ ! -f "$dir/.erlang.cookie" ]; then
    python3 -c 'import secrets; print(secrets.token_hex(16).upper(), end="")' > "$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
  fi
  load_env
  # The node and its epmd in one new process group, so stop reaches them all.
  setsid sh -c 'echo $$ > "$1/group.pid"
    epmd -port "$ERL_EPMD_PORT" -address 127.0.0.1 &
    i=0
    while ! epmd -port "$ERL_EPMD_PORT" -names >/dev/null 2>&1 && [ $i -lt 100 ]; do
      sleep 0.1; i=$((i + 1))
    done
    exec "$2/rabbitmq-server"' sh "$dir" "$bin" > "$dir/log/node.out" 2>&1 < /dev/null &
  i=0
  while [ ! -s "$dir/group.pid" ] && [ $i -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  # The node registers with its epmd early in its boot; await_startup then
  # waits for the broker itself.  A node that dies stops the wait at once.
  short=${NODE%@*}
  i=0
  while ! epmd -port "$EPMD_PORT" -names 2>/dev/null | grep -q "name $short "; do
    if [ $i -ge $((timeout * 10)) ] || ! /bin/kill -s 0 -- "-$(cat "$dir/group.pid" 2>/dev/null)" 2>/dev/null; then
      break
    fi
    sleep 0.1
    i=$((i + 1))
  done
  if ! ctl --timeout "$timeout" await_startup > "$dir/log/await.out" 2>&1; then
    echo "rabbitmq.sh: the node did not start within ${timeout}s; its output:" >&2
    tail -n 30 "$dir/log/node.out" "$dir/log/await.out" >&2 || true
    kill_group "$dir/group.pid"
    exit 1
  fi
  print_url
  ;;
stop)
  if [ -f "$state" ]; then
    load_env
  fi
  kill_group "$dir/group.pid"
  ;;
url)
  [ -f "$state" ] || { echo "rabbitmq.sh: no node in $dir" >&2; exit 1; }
  load_env
  print_url
  ;;
tls-url)
  [ -f "$state" ] || { echo "rabbitmq.sh: no node in $dir" >&2; exit 1; }
  [ -s "$dir/tls/server.pem" ] || { echo "rabbitmq.sh: no TLS listener in $dir" >&2; exit 1; }
  load_env
  echo "amqps://guest:guest@localhost:$TLS_PORT/%2f"
  ;;
ctl)
  [ -f "$state" ] || { echo "rabbitmq.sh: no node in $dir" >&2; exit 1; }
  load_env
  ctl "$@"
  ;;
*)
  echo "rabbitmq.sh: unknown command '$cmd'" >&2
  exit 2
  ;;
esac
