/*
 * conc/common.h - names several concepts share.
 *
 * The daemon option of conc_thread_opts and conc_process_opts is a
 * tri-state: 0 (CONC_DAEMON_INHERIT) inherits the creator's flag (Python's default), CONC_DAEMON
 * makes a daemon, CONC_NOT_DAEMON does not.  The setters that change the
 * flag afterwards (conc_thread_set_daemon, conc_process_set_daemon) take a
 * plain bool.
 *
 * Where a greenlet keeps its stack (conc_spawn_opts.stack, conc/hub.h,
 * which describes the modes; conc_server_opts.stack, conc/server.h):
 * CONC_STACK_OWN, a stack of its own, or CONC_STACK_COPIED, its hub's
 * shared stack, copied out while it is parked; 0 (CONC_STACK_HUB) is the
 * default of the option that takes it.
 */
#ifndef CONC_COMMON_H
#define CONC_COMMON_H

/* The values of the daemon option (an int field: these are ints). */
enum conc_daemon_option {
    CONC_DAEMON_INHERIT = 0,
    CONC_DAEMON = 1,
    CONC_NOT_DAEMON = -1
};

/* The values of the stack options (ints). */
#define CONC_STACK_HUB    0
#define CONC_STACK_OWN    1
#define CONC_STACK_COPIED 2

#endif /* CONC_COMMON_H */
