/*
 * Sockets passed by a service manager (systemd, systemd-socket-activate): the
 * LISTEN_FDS protocol.  fds 3 .. 3+LISTEN_FDS-1 are ours when LISTEN_PID is our pid;
 * LISTEN_FDNAMES names them, colon-separated.
 *
 * A passed socket waits, hidden, until a bind() matches a 'systemd' rule; that bind
 * then puts the passed socket in place of the program's socket instead of binding.
 * Until then a program that closes every fd at start-up cannot close it, dup2() onto
 * its number moves it out of the way, and it is close-on-exec so children do not
 * inherit it.  LISTEN_* are removed from the environment for the same reason.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

#define FIRST_FD 3
#define MAX_PASSED 64
#define NAMES_SIZE 2048

struct passed {
	int fd;
	int family, type;
	int claimed_by;  /* rule index, or -1 while waiting */
	const char *name;
};

static struct passed passed[MAX_PASSED];
static int n_passed;
static char names[NAMES_SIZE];

static int parse_count(const char *s)
{
	char *end;
	long v;

	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	return *end || errno || v < 0 || v > 1 << 20 ? -1 : (int)v;
}

/* Split LISTEN_FDNAMES into names[], one per passed fd ("" where none is given). */
static void read_names(const char *list)
{
	size_t len = list ? strlen(list) : 0;
	char *p = names;

	if (len >= sizeof(names))
		len = 0; /* absurdly long: use no names rather than wrong ones */
	memcpy(names, list ? list : "", len);
	names[len] = 0;
	for (int i = 0; i < n_passed; i++) {
		char *colon = p ? strchr(p, ':') : NULL;

		passed[i].name = p ? p : "";
		if (colon)
			*colon = 0;
		p = colon ? colon + 1 : NULL;
	}
}

static void hide(struct passed *p)
{
	struct fd_entry e;
	socklen_t len = sizeof(int);

	if (REAL(getsockopt)(p->fd, SOL_SOCKET, SO_DOMAIN, &p->family, &len))
		p->family = -1; /* not a socket: no rule can use it */
	len = sizeof(int);
	if (REAL(getsockopt)(p->fd, SOL_SOCKET, SO_TYPE, &p->type, &len))
		p->type = -1;
	REAL(fcntl)(p->fd, F_SETFD, FD_CLOEXEC);
	fd_entry_init(&e);
	e.kind = FD_PASSED;
	fd_store(p->fd, &e);
}

void systemd_init(void)
{
	const char *pid = getenv("LISTEN_PID");
	int n = parse_count(getenv("LISTEN_FDS")), saved = errno;

	if (!rules_use_systemd)
		return;
	if (n < 0 || parse_count(pid) != (int)getpid()) {
		ulog(LOG_DEBUG_, "no sockets passed to this process (LISTEN_FDS %s, LISTEN_PID %s)",
		     n < 0 ? "unset" : "set", pid ? pid : "unset");
		errno = saved;
		return;
	}
	if (n > MAX_PASSED) {
		ulog(LOG_WARN_, "%d sockets passed; only the first %d are used", n, MAX_PASSED);
		n = MAX_PASSED;
	}
	n_passed = n;
	read_names(getenv("LISTEN_FDNAMES"));
	for (int i = 0; i < n_passed; i++) {
		passed[i].fd = FIRST_FD + i;
		passed[i].claimed_by = -1;
		hide(&passed[i]);
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	ulog(LOG_DEBUG_, "%d socket(s) passed by the service manager", n_passed);
	errno = saved;
}

static int waiting(int fd)
{
	for (int i = 0; i < n_passed; i++) {
		if (passed[i].fd == fd && passed[i].claimed_by < 0)
			return 1;
	}
	return 0;
}

int systemd_hidden(int fd)
{
	return n_passed && waiting(fd);
}

/* dup2() onto a waiting socket's number: move the socket to another number first. */
void systemd_evict(int fd)
{
	struct fd_entry e;
	int moved;

	if (!systemd_hidden(fd))
		return;
	moved = REAL(fcntl)(fd, F_DUPFD_CLOEXEC, FIRST_FD);
	if (moved < 0)
		return;
	for (int i = 0; i < n_passed; i++) {
		if (passed[i].fd == fd && passed[i].claimed_by < 0)
			passed[i].fd = moved;
	}
	fd_take(fd, &e);
	fd_store(moved, &e);
	REAL(close)(fd);
}

int systemd_close_range(unsigned first, unsigned last, int flags,
			int (*closer)(unsigned, unsigned, int))
{
	unsigned keep[MAX_PASSED], from = first;
	int n = 0, r = 0;

	if (!(flags & CLOSE_RANGE_CLOEXEC)) {
		for (int i = 0; i < n_passed; i++) {
			unsigned fd = (unsigned)passed[i].fd;
			int j = n++;

			if (passed[i].claimed_by >= 0 || fd < first || fd > last) {
				n--;
				continue;
			}
			for (; j > 0 && keep[j - 1] > fd; j--) /* keep[] stays sorted */
				keep[j] = keep[j - 1];
			keep[j] = fd;
		}
	}
	for (int i = 0; i < n; i++) {
		if (keep[i] > from && closer(from, keep[i] - 1, flags))
			r = -1;
		from = keep[i] + 1;
	}
	if (from <= last && closer(from, last, flags))
		r = -1;
	return r;
}

static const char *type_name(int type)
{
	return type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "datagram" : "other";
}

/* May p serve a bind of type for rule r?  A Unix datagram socket may stand in for a
 * stream listener as a receiver (receive.c), when no socket of the type is left. */
static int usable(const struct passed *p, const struct rule *r, int type, int receiver)
{
	if (p->claimed_by >= 0 || (r->systemd_name && strcmp(p->name, r->systemd_name)))
		return 0;
	return receiver ? type == SOCK_STREAM && p->type == SOCK_DGRAM && p->family == AF_UNIX
			: p->type == type;
}

int systemd_claim(int rule, const struct rule *r, int type, int *family)
{
	int claimed_before = 0;
	struct fd_entry gone;

	for (int i = 0; i < n_passed * 2; i++) {
		struct passed *p = &passed[i % n_passed];

		if (p->claimed_by == rule)
			claimed_before = 1;
		if (!usable(p, r, type, i >= n_passed))
			continue;
		p->claimed_by = rule;
		*family = p->family;
		fd_take(p->fd, &gone);
		ulog(LOG_INFO_, "rule %d: using passed socket fd %d%s%s%s", rule + 1, p->fd,
		     p->name[0] ? " named " : "", p->name,
		     p->type == type ? "" : " as a receiver");
		return p->fd;
	}
	if (claimed_before)
		return -2; /* a second bind for the same rule (IPv4 and IPv6, say) */
	ulog(LOG_ERR_, "rule %d: no %s socket%s%s was passed by the service manager (%s)",
	     rule + 1, type_name(type), r->systemd_name ? " named " : "",
	     r->systemd_name ? r->systemd_name : "",
	     n_passed ? "all passed sockets are in use or of another type"
		      : "LISTEN_FDS/LISTEN_PID do not pass any to this process");
	errno = EADDRNOTAVAIL;
	return -1;
}
