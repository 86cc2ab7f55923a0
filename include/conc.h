/*
 * conc.h - the umbrella header: Python's concurrency toolkit for C on Linux.
 * See docs/ for one page per concept and docs/python.md for the map from
 * Python calls to conc calls.
 */
#ifndef CONC_H
#define CONC_H

#include "conc/common.h"
#include "conc/errors.h"
#include "conc/time.h"
#include "conc/park.h"
#include "conc/sync.h"
#include "conc/thread.h"
#include "conc/coro.h"
#include "conc/hub.h"
#include "conc/cpool.h"
#include "conc/process.h"
#include "conc/queue.h"
#include "conc/deque.h"
#include "conc/mpqueue.h"
#include "conc/shm.h"
#include "conc/pipe.h"
#include "conc/wait.h"
#include "conc/future.h"
#include "conc/executor.h"
#include "conc/offload.h"
#include "conc/socket.h"
#include "conc/selector.h"
#include "conc/server.h"
#include "conc/pool.h"
#include "conc/listener.h"
#include "conc/manager.h"

#define CONC_VERSION_MAJOR 0
#define CONC_VERSION_MINOR 1
#define CONC_VERSION_PATCH 0

#endif /* CONC_H */
