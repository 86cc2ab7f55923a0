/*
 * conc/common.h - names several concepts share.
 *
 * The daemon option of conc_thread_opts and conc_process_opts is a
 * tri-state: 0 (CONC_DAEMON_INHERIT) inherits the creator's flag (Python's default), CONC_DAEMON
 * makes a daemon, CONC_NOT_DAEMON does not.  The setters that change the
 * flag afterwards (conc_thread_set_daemon, conc_process_set_daemon) take a
 * plain bool.
 */
#ifndef CONC_COMMON_H
#define CONC_COMMON_H

/* The values of the daemon option (an int field: these are ints). */
enum conc_daemon_option {
    CONC_DAEMON_INHERIT = 0,
    CONC_DAEMON = 1,
    CONC_NOT_DAEMON = -1
};

#endif /* CONC_COMMON_H */
