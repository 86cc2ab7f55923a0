#!/bin/sh
# The tour of conc's examples: runs each example program with a short
# heading that says what it shows.
#
#   sh scripts/demo.sh [DIR]     DIR holds the example binaries (default build/examples)
#
# An example whose binary is missing is skipped with a note (later work adds
# more examples to the tour).  Exits non-zero when an example fails.

dir=${1:-build/examples}
if [ ! -d "$dir" ]; then
    echo "demo.sh: no such directory: $dir (build first: make build)" >&2
    exit 2
fi

ran=0
skipped=0
failed=""

# show NAME "HEADING" "WHAT IT SHOWS" [ARGS...]
show() {
    name=$1
    heading=$2
    what=$3
    shift 3
    echo
    echo "=== $name: $heading"
    echo "    $what"
    if [ ! -x "$dir/$name" ]; then
        echo "    (skipped: $dir/$name is not built)"
        skipped=$((skipped + 1))
        return 0
    fi
    echo "    \$ $name${*:+ $*}"
    if "$dir/$name" "$@"; then
        ran=$((ran + 1))
    else
        status=$?
        echo "demo.sh: $name failed (exit status $status)" >&2
        failed="$failed $name"
    fi
}

echo "conc: Python's concurrency toolkit for C -- the tour of examples"

show thread-basics "threading.Thread, Timer, local, current_thread, enumerate" \
    "Each step explains one call of conc/thread.h and prints what it does."

show traffic-light "threading.Event as a traffic light" \
    "A light thread sets (green) and clears (red) an Event; cars wait for green and pass at most once per green phase." \
    --cycles 3 --period 0.2 --cars 4

show condition-notify "threading.Condition: notify(n) wakes exactly n waiters" \
    "Six threads wait; main notifies 1, then 2, then 3 of them, and exactly that many run each time." \
    --threads 6 --batches 1,2,3

# ticket-grab's database: a JSON file made here and removed at the end.
db=$(mktemp "${TMPDIR:-/tmp}/conc-tickets.XXXXXX") || exit 1
trap 'rm -f "$db"' EXIT

printf '{"count": 3}\n' >"$db"
show ticket-grab "multiprocessing.Lock guards a ticket database shared by processes" \
    "Five buyer processes race for 3 tickets in a JSON file; the process-shared Lock makes exactly 3 of them get one." \
    --db "$db" --buyers 5

printf '{"count": 1}\n' >"$db"
show ticket-grab "the same race without the Lock" \
    "Four buyers read the last ticket at the same time, and each of them buys it: the ticket is oversold." \
    --db "$db" --buyers 4 --no-lock

show shared-counter "multiprocessing.Value and get_lock()" \
    "Four processes add 1 to a shared Value 20000 times each under the Value's lock: the total is exact." \
    --procs 4 --iters 20000

show process-basics "multiprocessing.Process: start methods, exit codes, daemons, zombies and orphans" \
    "Each step explains one call of conc/process.h; lines in [brackets] are printed by the child processes."

show pipe-ping "multiprocessing.Pipe: a parent and its child bounce messages" \
    "The parent sends 1000 messages of 4096 bytes over a duplex Pipe; a fork child echoes each back; every byte is checked both ways." \
    --messages 1000 --size 4096

show producer-consumer "multiprocessing.Queue: producer and consumer processes" \
    "Three producer processes put 20000 items each; two consumer processes take them until each gets a sentinel; main checks that every item was consumed exactly once." \
    --producers 3 --consumers 2 --items 20000

show producer-consumer "queue.Queue as a JoinableQueue between threads" \
    "The same with threads: consumers call task_done per item, main waits in join() and then shuts the queue down to stop them." \
    --producers 3 --consumers 2 --items 20000 --joinable --threads

show coro-sleepers "gevent: spawn, sleep, joinall on a hub" \
    "100000 greenlets each sleep 0.1 s in one thread; the sleeps overlap, so joining them all takes a fraction of a second plus the time to create them, not 10000 s." \
    --count 100000 --sleep 0.1

show coro-tour "greenlet switch, gevent spawn/joinall, and a crawler on libcurl" \
    "The tutorials' coroutine programs: test1/test2 switch back and forth; greenlets interleave by sleep length; one greenlet per URL fetches from a local server that waits 0.2 s per answer, all at once (the server counts the connections it had open together)." \
    --urls 5 --delay 0.2

# serve NAME "HEADING" "WHAT IT SHOWS" "CLIENT INPUT" [CLIENT OPTIONS --] [SERVER ARGS...]
# Starts the server NAME on a free port (it prints "listening on HOST:PORT"),
# runs the client ($client, default echo-upper-client) against it with the
# input, then stops the server with SIGTERM and shows what it printed.
serve() {
    client=${client:-echo-upper-client}
    name=$1
    heading=$2
    what=$3
    input=$4
    shift 4
    copts=""
    case " $* " in
        *" -- "*)
            while [ "$1" != "--" ]; do copts="$copts $1"; shift; done
            shift ;;
    esac
    echo
    echo "=== $name: $heading"
    echo "    $what"
    if [ ! -x "$dir/$name" ] || [ ! -x "$dir/$client" ]; then
        echo "    (skipped: $dir/$name or $dir/$client is not built)"
        skipped=$((skipped + 1))
        return 0
    fi
    log=$(mktemp "${TMPDIR:-/tmp}/conc-serve.XXXXXX") || return 1
    echo "    \$ $name${*:+ $*} 0 &"
    "$dir/$name" "$@" 0 >"$log" &
    pid=$!
    port=""
    tries=0
    while [ -z "$port" ] && [ $tries -lt 200 ] && kill -0 "$pid" 2>/dev/null; do
        port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$log")
        [ -n "$port" ] || { sleep 0.05; tries=$((tries + 1)); }
    done
    sed 's/^/    /' "$log"
    if [ -z "$port" ]; then
        echo "demo.sh: $name did not start" >&2
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        failed="$failed $name"
        rm -f "$log"
        return 0
    fi
    echo "    \$ $client$copts 127.0.0.1 $port      (its input: the lines after >)"
    printf '%s\n' "$input" | sed 's/^/    > /'
    ok=1
    replies=$(printf '%s\n' "$input" | "$dir/$client" $copts 127.0.0.1 "$port") || ok=0
    [ -z "$replies" ] || printf '%s\n' "$replies" | sed 's/^/    /'
    kill -TERM "$pid"
    wait "$pid" || ok=0
    echo "    \$ kill -TERM %1"
    sed '1d; s/^/    /' "$log"
    rm -f "$log"
    if [ $ok = 1 ]; then
        ran=$((ran + 1))
    else
        echo "demo.sh: $name failed" >&2
        failed="$failed $name"
    fi
}

serve echo-upper-server "socket: a TCP server that upper-cases what it gets" \
    "One thread, a selector on epoll (conc/selector.h) over conc's sockets; the client sends each line and prints each reply." \
    "hello, world
sockets and selectors" --model epoll

serve echo-upper-server "the same server, one client at a time" \
    "The tutorials' first server: blocking calls, one client until it closes (the others wait in the listen queue)." \
    "sync model" --model sync

serve echo-upper-server "the same server as a loop over non-blocking sockets" \
    "No readiness call: it tries every socket in turn and sleeps, a little longer each time, when a pass found nothing to do." \
    "nonblocking model" --model nonblocking

serve udp-upper-server "socket over UDP: one datagram in, one datagram out" \
    "Each line goes as a datagram; the server sends it back upper-cased to its sender." \
    "datagram one
datagram two" --udp --

client=hotline-client
serve hotline-server "socketserver.ThreadingTCPServer: the 10086 phone menu" \
    "A thread per caller (conc/server.h's threading model): the greeting with the menu, 0 for the operator, anything else is asked again, exit hangs up." \
    "0
1001
exit"

# ftp-server's root and ftp-client's directory: made here, removed at the end.
ftp=$(mktemp -d "${TMPDIR:-/tmp}/conc-ftp.XXXXXX") || exit 1
mkdir "$ftp/root" "$ftp/local"
printf 'conc ftp demo: notes\n' >"$ftp/root/notes.txt"
seq 1 200000 >"$ftp/root/numbers.txt"
printf 'sent by ftp-client\n' >"$ftp/upload.txt"
client=ftp-client
for model in threading forking coroutine; do
    serve ftp-server "a file transfer on socketserver's $model model" \
        "ls, get and put over a small line protocol; each file goes with its size and SHA-256 (libsodium), which the receiver checks before it renames the file from a temporary name to its own." \
        "ls
get numbers.txt
put $ftp/upload.txt
ls" --dir "$ftp/local" -- --root "$ftp/root" --model $model
    rm -f "$ftp/root/upload.txt" "$ftp/local/numbers.txt"
done
rm -rf "$ftp"
client=echo-upper-client
show custom-thread-pool "the tutorial's hand-made thread pool, and multiprocessing.pool.ThreadPool" \
    "A task queue, worker threads made on demand, a StopEvent sentinel and close/terminate, built on conc's Queue and threads; then the same 200 tasks (every tenth fails) on ThreadPool: both print the same figures." \
    --workers 5 --tasks 200

show parallel-map "multiprocessing.Pool: map and imap_unordered, with progress" \
    "Sums i*i for i = 0..99999 on 4 worker processes, with map and with imap_unordered reading its input lazily; both give n(n-1)(2n-1)/6. The progress goes to stderr." \
    --tasks 100000 --workers 4 --chunksize 100 --progress

show manager-counter "multiprocessing.Manager: a dict in a manager process, under a manager Lock" \
    "A manager holds {\"count\": 100}; 20 processes each take the manager Lock and take one off through their proxies: count=80." \
    --procs 20 --start 100

# The queue served across machines: queue-server on a free TCP port with a
# key file, a queue-client that puts, one that gets, and one with the wrong
# key (refused), then SIGTERM to the server.
echo
echo "=== queue-server, queue-client: a manager's queue shared over TCP, with an authkey"
echo "    The server serves one named queue; each client proves it holds the key (an HMAC challenge both ways) before it may put or get."
if [ ! -x "$dir/queue-server" ] || [ ! -x "$dir/queue-client" ]; then
    echo "    (skipped: $dir/queue-server or $dir/queue-client is not built)"
    skipped=$((skipped + 1))
else
    qdir=$(mktemp -d "${TMPDIR:-/tmp}/conc-queue.XXXXXX") || exit 1
    printf 'abracadabra\n' >"$qdir/key"
    printf 'not the key\n' >"$qdir/wrong"
    echo "    \$ queue-server --address 127.0.0.1:0 --authkey-file key &"
    "$dir/queue-server" --address 127.0.0.1:0 --authkey-file "$qdir/key" >"$qdir/log" &
    qpid=$!
    addr=""
    tries=0
    while [ -z "$addr" ] && [ $tries -lt 200 ] && kill -0 "$qpid" 2>/dev/null; do
        addr=$(sed -n 's/^serving on //p' "$qdir/log")
        [ -n "$addr" ] || { sleep 0.05; tries=$((tries + 1)); }
    done
    sed 's/^/    /' "$qdir/log"
    ok=1
    if [ -z "$addr" ]; then
        echo "demo.sh: queue-server did not start" >&2
        ok=0
    else
        q="$dir/queue-client --address $addr"
        echo "    \$ queue-client --address $addr --authkey-file key put 'hello from afar'"
        $q --authkey-file "$qdir/key" put 'hello from afar' || ok=0
        echo "    \$ queue-client --address $addr --authkey-file key get"
        $q --authkey-file "$qdir/key" get | sed 's/^/    /' || ok=0
        echo "    \$ queue-client --address $addr --authkey-file wrong get"
        if $q --authkey-file "$qdir/wrong" get 2>&1 | sed 's/^/    /'; then :; fi
    fi
    kill -TERM "$qpid" 2>/dev/null
    wait "$qpid" || ok=0
    echo "    \$ kill -TERM %1"
    rm -rf "$qdir"
    if [ $ok = 1 ]; then
        ran=$((ran + 1))
    else
        echo "demo.sh: queue-server/queue-client failed" >&2
        failed="$failed queue-server"
    fi
fi

# crawler's web: python3's http.server on a free port, serving a temporary
# directory with two pages; port 1 on 127.0.0.1 refuses connections.
web=$(mktemp -d "${TMPDIR:-/tmp}/conc-web.XXXXXX") || exit 1
server_pid=""
trap 'rm -f "$db"; [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$web"' EXIT
if command -v python3 >/dev/null 2>&1; then
    printf '<html><body>conc crawler demo</body></html>\n' >"$web/index.html"
    head -c 100000 /dev/zero | tr '\0' x >"$web/big.txt"
    python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$web" \
        >"$web/server.out" 2>/dev/null &
    server_pid=$!
    port=""
    tries=0
    while [ -z "$port" ] && [ $tries -lt 100 ]; do
        port=$(sed -n 's/^Serving HTTP on 127\.0\.0\.1 port \([0-9]*\).*/\1/p' "$web/server.out")
        [ -n "$port" ] || sleep 0.1
        tries=$((tries + 1))
    done
fi
if [ -n "${port:-}" ]; then
    show crawler "multiprocessing.Pool.apply_async with a callback: a crawler" \
        "Three worker processes fetch five URLs from a local server with libcurl; the callback in the parent prints each status (a 404 too) as it arrives, and an error when nothing answered." \
        --procs 3 "http://127.0.0.1:$port/index.html" "http://127.0.0.1:$port/big.txt" \
        "http://127.0.0.1:$port/missing.html" "http://127.0.0.1:1/" "http://127.0.0.1:$port/"
else
    echo
    echo "=== crawler: multiprocessing.Pool.apply_async with a callback: a crawler"
    echo "    (skipped: no local HTTP server: python3 -m http.server did not start)"
    skipped=$((skipped + 1))
fi

# The broker examples: a queue in RabbitMQ.  CONC_BROKER_URL names an
# existing broker to use; otherwise a private node is started under the
# build tree (scripts/rabbitmq.sh; about 5-10 s) and stopped afterwards.
node_dir=""
broker_url=${CONC_BROKER_URL:-}
if [ -x "$dir/broker-queue" ] && [ -z "$broker_url" ]; then
    node_dir="$dir/../rabbitmq-demo"
    trap 'rm -f "$db"; [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$web"; sh "$(dirname "$0")/rabbitmq.sh" stop "$node_dir" >/dev/null 2>&1' EXIT
    echo
    echo "=== starting a private RabbitMQ node for the broker examples (scripts/rabbitmq.sh)"
    broker_url=$(sh "$(dirname "$0")/rabbitmq.sh" start "$node_dir") || broker_url=""
fi
if [ -x "$dir/broker-queue" ] && [ -z "$broker_url" ]; then
    echo "demo.sh: no RabbitMQ node (scripts/rabbitmq.sh start failed)" >&2
    failed="$failed broker-queue"
else
    q="conc-demo-$$"
    show broker-queue "a queue on a RabbitMQ broker: the producer" \
        "Three persistent messages go to a durable queue; each is printed once the broker confirmed it (it is on the broker's disk)." \
        --url "$broker_url" --queue "$q" put "task one" "task two" "task three"
    show broker-queue "the consumer, which may run on another machine" \
        "It takes the messages in order and acknowledges each (task_done) after printing it; a consumer killed before that gives its message back." \
        --url "$broker_url" --queue "$q" get --count 3
    show distributed-map "concurrent.futures across machines: a distributed executor on RabbitMQ" \
        "Three worker processes take the tasks f(i) = i*i for i < 1000 from a work queue; the results come back as futures and are summed. One worker is killed (kill -9) in the middle of a task: the broker gives the task to another and the sum is still right." \
        --url "$broker_url" --queue "$q-map" --tasks 1000 --workers 3 --kill-one
fi
if [ -n "$node_dir" ]; then
    sh "$(dirname "$0")/rabbitmq.sh" stop "$node_dir" >/dev/null 2>&1
fi

echo
echo "=== tour done: $ran ran, $skipped skipped${failed:+, failed:$failed}"
[ -z "$failed" ]
