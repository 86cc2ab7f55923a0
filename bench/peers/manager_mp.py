#!/usr/bin/env python3
"""Python peer of bench_manager: multiprocessing's Manager, over a Unix
socket and over TCP on the loopback.

usage: manager_mp.py [--system NAME] [--reps N] [--cpus A,B] [SCALE] [METRIC ...]

SCALE multiplies every iteration count (default 1.0); METRICs select a subset
(default: all).  --system selects python-unix or python-tcp (default: both).
Prints METRIC<TAB>SYSTEM<TAB>VALUE<TAB>UNIT lines with the definitions of
bench_manager.c, every one in ops/s, one client process unless said:

  manager_dict_set      d[key] = value on a manager dict (16-byte bytes
                        keys from a set of 64, 16-byte values)
  manager_dict_get      d[key] on the same dict
  manager_lock          acquire() + release() of a manager Lock (one op)
  manager_queue_putget  put(item) + get() on a manager Queue (one op)
  manager_dict_set_c8   8 client processes setting keys of one dict at
                        once, total ops/s
  manager_c8_server_cpus  CPUs: the manager process's CPU time per second
                        of wall time while the clients of
                        manager_dict_set_c8 run their loops
  manager_c8_client_cpus  CPUs: the 8 clients' CPU time in their loops per
                        second of wall time

The manager runs in its own process (SyncManager.start()), with an authkey,
as bench_manager's conc manager does.  A wrong result (a lost item, a dict
that does not hold what was set) prints VALUE "failed".
"""
import multiprocessing
import multiprocessing.managers
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerlib import WrongResult, now, pin  # noqa: E402
import peerlib  # noqa: E402

AUTHKEY = b"bench-manager-authkey"
KEYS = [("key-%012d" % i).encode() for i in range(64)]
VALUE = b"v" * 16
CLIENTS = 8

_managers = {}
_dirs = []


def manager(transport):
    """One manager per transport for the whole run (started once)."""
    m = _managers.get(transport)
    if m is None:
        if transport == "unix":
            d = tempfile.mkdtemp(prefix="bench-manager-")
            _dirs.append(d)
            address = os.path.join(d, "socket")
            m = multiprocessing.managers.SyncManager(address=address, authkey=AUTHKEY)
        else:
            m = multiprocessing.managers.SyncManager(address=("127.0.0.1", 0),
                                                     authkey=AUTHKEY)
        m.start()
        _managers[transport] = m
    return m


def dict_set(transport):
    def body(n):
        d = manager(transport).dict()
        keys = KEYS
        t0 = now()
        for i in range(n):
            d[keys[i & 63]] = VALUE
        ns = now() - t0
        if d[keys[0]] != VALUE:
            raise WrongResult("the dict lost a value")
        return ns
    return body


def dict_get(transport):
    def body(n):
        d = manager(transport).dict()
        for k in KEYS:
            d[k] = VALUE
        keys = KEYS
        t0 = now()
        for i in range(n):
            v = d[keys[i & 63]]
        ns = now() - t0
        if v != VALUE:
            raise WrongResult("got %r" % (v,))
        return ns
    return body


def lock(transport):
    def body(n):
        lk = manager(transport).Lock()
        acquire, release = lk.acquire, lk.release
        t0 = now()
        for _ in range(n):
            acquire()
            release()
        return now() - t0
    return body


def queue_putget(transport):
    def body(n):
        q = manager(transport).Queue()
        put, get = q.put, q.get
        t0 = now()
        for i in range(n):
            put(VALUE)
            if get() != VALUE:
                raise WrongResult("the queue gave something else")
        return now() - t0
    return body


def c8_worker(slot, d, count, barrier, times, cpus):
    pin(slot)
    keys = KEYS
    tag = b"%d" % slot
    barrier.wait()
    c0 = time.process_time()
    t0 = now()
    for i in range(count):
        d[keys[i & 63] + tag] = VALUE
    times[2 * slot] = t0
    times[2 * slot + 1] = now()
    cpus[slot] = time.process_time() - c0


def proc_cpu(pid):
    """CPU seconds (user + system) a process has used, from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dict_set_c8(transport, cpus=None):
    """The c8 body; cpus, when given, names the CPU figure the body returns
    instead of the time: "server" or "client", the CPU seconds per second of
    the clients' loops (returned as n * 1e9 / CPUs, so that peerlib's ops/s
    conversion prints the CPUs)."""
    def body(n):
        m = manager(transport)
        d = m.dict()
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(CLIENTS + 1)
        times = ctx.RawArray("q", 2 * CLIENTS)
        used = ctx.RawArray("d", CLIENTS)
        per = max(n // CLIENTS, 1)
        procs = [ctx.Process(target=c8_worker, args=(s, d, per, barrier, times, used))
                 for s in range(CLIENTS)]
        for p in procs:
            p.start()
        barrier.wait()
        s0 = proc_cpu(m._process.pid)
        for p in procs:
            p.join()
        s1 = proc_cpu(m._process.pid)
        for p in procs:
            if p.exitcode != 0:
                raise WrongResult("client exit code %r" % p.exitcode)
        want = CLIENTS * min(per, 64)
        if len(d) != want:
            raise WrongResult("dict has %d keys, expected %d" % (len(d), want))
        ns = max(times[1::2]) - min(times[0::2])
        if cpus:
            cpu = s1 - s0 if cpus == "server" else sum(used)
            return n * 1e9 / max(cpu / (ns / 1e9), 1e-9)
        return ns * n / (CLIENTS * per)
    return body


# system, metric, body, unit, base iteration count, pick
METRICS = []
for _t in ("unix", "tcp"):
    _s = "python-" + _t
    METRICS += [
        (_s, "manager_dict_set", dict_set(_t), "ops/s", 20000, "median"),
        (_s, "manager_dict_get", dict_get(_t), "ops/s", 20000, "median"),
        (_s, "manager_lock", lock(_t), "ops/s", 10000, "median"),
        (_s, "manager_queue_putget", queue_putget(_t), "ops/s", 10000, "median"),
        (_s, "manager_dict_set_c8", dict_set_c8(_t), "ops/s", 40000, "median"),
        (_s, "manager_c8_server_cpus", dict_set_c8(_t, "server"), "CPUs", 40000, "median"),
        (_s, "manager_c8_client_cpus", dict_set_c8(_t, "client"), "CPUs", 40000, "median"),
    ]


if __name__ == "__main__":
    try:
        status = peerlib.main(sys.argv[1:], __doc__, METRICS, min_iters=CLIENTS)
    finally:
        for _m in _managers.values():
            _m.shutdown()
        for _d in _dirs:
            shutil.rmtree(_d, ignore_errors=True)
    sys.exit(status)
