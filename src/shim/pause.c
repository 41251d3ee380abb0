/*
 * Pausing and resuming a converted listener, as servers do around a reload.
 *
 * HAProxy (and others) pause a TCP listener with connect(AF_UNSPEC): it stops listening
 * but keeps its port, so that a new process can bind there (SO_REUSEPORT), and listen()
 * resumes it -- when the new process failed, the old one goes on serving.  A Unix
 * listener cannot stop listening, so pausing releases its path instead: the file is
 * removed (only the one we made, while the path still names it) and the socket kept,
 * unreachable; connections already queued stay queued.  Resuming finds the path: still
 * our socket's file, nothing to do; free (or a stale file), a fresh socket is bound and
 * put in the listener's place, as conversion does, with its flags, options and epoll
 * registrations; taken by a live socket, listen() fails with EADDRINUSE as TCP's would
 * -- after a short wait, since the process that took it may be on its way out.
 *
 * The socket is shared with the processes that hold it (forked workers): pausing
 * releases the path for all of them, as on TCP, but resuming gives the new socket only
 * to the process that resumes.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "shim.h"

#define RESUME_TRIES 100 /* of RESUME_WAIT_NS each: a second */
#define RESUME_WAIT_NS 10000000

static void set_paused(int fd, int paused)
{
	struct fd_entry *e;

	state_lock(); /* this fd's entry only */
	e = fd_get(fd, 0);
	if (e && e->kind == FD_CONVERTED) {
		e->paused = (uint8_t)paused;
		if (paused)
			e->sockfile = -1; /* released */
	}
	state_unlock();
}

int listener_pause(int fd, const struct fd_entry *e)
{
	int saved = errno;

	if (e->paused)
		return 0;
	if (e->sockfile >= 0)
		sockfile_unlink(e->sockfile);
	else
		ulog(LOG_INFO_, "fd %d: paused, but its socket file is not ours to release", fd);
	set_paused(fd, 1);
	errno = saved;
	return 0;
}

/* The path the socket fd is bound to, into path; 0, or -1 (an abstract name). */
static int bound_path(int fd, char *path, size_t size)
{
	struct sockaddr_un sun;
	socklen_t len = sizeof(sun);
	size_t off = offsetof(struct sockaddr_un, sun_path);

	if (REAL(getsockname)(fd, (struct sockaddr *)&sun, &len) || len <= off + 1 ||
	    !sun.sun_path[0] || len - off >= size)
		return -1;
	memcpy(path, sun.sun_path, len - off);
	path[len - off] = 0;
	return 0;
}

int listener_resume(int fd, const struct fd_entry *e, int backlog)
{
	const struct timespec wait = { .tv_nsec = RESUME_WAIT_NS };
	char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
	struct sock_query q = { .dir = DIR_IN, .type = e->type, .addr = &e->local };
	const struct rule *r = NULL;
	struct stat st, sock;
	int idx, tries = 0;

	if (bound_path(fd, path, sizeof(path)) || fstat(fd, &sock)) { /* nothing released */
		set_paused(fd, 0);
		return REAL(listen)(fd, backlog);
	}
	if (!lstat(path, &st) && socket_of_file(sock.st_ino, &st)) {
		set_paused(fd, 0); /* the path is still ours */
		return REAL(listen)(fd, backlog);
	}
	idx = rules_match(&q);
	if (idx >= 0)
		r = rule_at(idx); /* the file's mode and owner */
	if (!r || r->action != ACT_PATH) { /* the rules no longer say this path */
		ulog(LOG_WARN_, "fd %d: cannot resume listening on %s: no rule gives it", fd, path);
		errno = EADDRNOTAVAIL;
		return -1;
	}
	while (!lstat(path, &st) && S_ISSOCK(st.st_mode) && socket_file_live(path, &st)) {
		if (++tries >= RESUME_TRIES) {
			ulog(LOG_WARN_, "fd %d: cannot resume listening: %s is in use by a live "
			     "socket", fd, path);
			errno = EADDRINUSE;
			return -1;
		}
		nanosleep(&wait, NULL);
	}
	if (convert_relisten(fd, e, path, r, backlog))
		return -1;
	ulog(LOG_INFO_, "fd %d: resumed listening on %s", fd, path);
	return 0;
}
