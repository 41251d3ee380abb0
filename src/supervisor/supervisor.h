/*
 * unixify-supervise: the seccomp back end.  The program runs under a filter that
 * turns its socket set-up calls into user notifications; this process answers them
 * with the shim's rules and socket-file code (built from the same sources).
 */
#ifndef UNIXIFY_SUPERVISOR_H
#define UNIXIFY_SUPERVISOR_H

#include <linux/seccomp.h>
#include <stdint.h>

#include "../shim/shim.h"

#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif
#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

/* Kernel features found at start-up (filter.c). */
struct features {
	int addfd_send;   /* SECCOMP_ADDFD_FLAG_SEND (5.14) */
	int sync_wakeup;  /* SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6) */
};
extern struct features features;

/* The filter, installed on the calling thread with no_new_privs: the listener fd, or
 * -1 with a log line saying what the kernel lacks.  udp: notify socket() of IP
 * datagram sockets (some rule would convert UDP, which this back end refuses). */
int filter_install(int udp);
/* Which system call a notification is about, by name, for log lines. */
const char *filter_call_name(const struct seccomp_data *d);
/* 1 when d is a call of the program's own architecture (not i386 or x32). */
int filter_native(const struct seccomp_data *d);

/* Serve notifications on listener until no task uses the filter (serve.c). */
void serve(int listener);
/* Some rule might convert a UDP socket. */
int rules_convert_udp(void);

#endif
