/*
 * Turning an IP socket into a Unix one.
 *
 * A socket's family is fixed when it is created, so converting means making a Unix
 * socket, binding or connecting it, and moving it onto the program's fd number with
 * dup3().  Everything the program set up on the old socket comes along: O_NONBLOCK,
 * FD_CLOEXEC, O_ASYNC with its owner and signal, SOL_SOCKET options it set, and its
 * epoll registrations (which the kernel drops when the old socket goes away).
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

/* SOL_SOCKET options worth carrying over, if the program set them. */
static const int copyable_options[] = {
	SO_REUSEADDR, SO_KEEPALIVE, SO_RCVBUF, SO_SNDBUF, SO_RCVLOWAT, SO_SNDLOWAT,
	SO_RCVTIMEO, SO_SNDTIMEO, SO_LINGER, SO_PASSCRED, SO_PRIORITY, SO_MARK,
	SO_TIMESTAMP, SO_BUSY_POLL,
};
#define N_COPYABLE (int)(sizeof(copyable_options) / sizeof(copyable_options[0]))

void copyable_option_mark(struct fd_entry *e, int level, int optname)
{
	if (level != SOL_SOCKET)
		return;
	if (optname == SO_RCVBUFFORCE)
		optname = SO_RCVBUF;
	else if (optname == SO_SNDBUFFORCE)
		optname = SO_SNDBUF;
	for (int i = 0; i < N_COPYABLE; i++) {
		if (copyable_options[i] == optname)
			e->opts_set |= 1u << i;
	}
}

static void copy_options(int from, int to, uint32_t mask)
{
	for (int i = 0; i < N_COPYABLE; i++) {
		char value[64];
		socklen_t len = sizeof(value);
		int opt = copyable_options[i];

		if (!(mask & (1u << i)))
			continue;
		if (REAL(getsockopt)(from, SOL_SOCKET, opt, value, &len))
			continue;
		/* The kernel reports buffer sizes doubled; setting them doubles again. */
		if ((opt == SO_RCVBUF || opt == SO_SNDBUF) && len == sizeof(int))
			*(int *)value /= 2;
		if (REAL(setsockopt)(to, SOL_SOCKET, opt, value, len))
			ulog(LOG_DEBUG_, "option %d not carried over: %s", opt, strerror(errno));
	}
}

struct fd_flags {
	int status;  /* F_GETFL */
	int fd;      /* F_GETFD */
};

/* A socket of another family ready to stand in for fd: same type, blocking mode and
 * socket options. */
static int make_socket(int fd, int family, int type, const struct fd_entry *e,
		       struct fd_flags *flags)
{
	int sock;

	flags->status = REAL(fcntl)(fd, F_GETFL);
	flags->fd = REAL(fcntl)(fd, F_GETFD);
	if (flags->status < 0 || flags->fd < 0)
		return -1;
	sock = REAL(socket)(family, type | SOCK_CLOEXEC |
			    (flags->status & O_NONBLOCK ? SOCK_NONBLOCK : 0), 0);
	if (sock < 0)
		return -1;
	if (e->opts_set)
		copy_options(fd, sock, e->opts_set);
	return sock;
}

/* The Unix socket to set up: a pending fd already is one; else a new one that will be
 * moved into fd's place by install(). */
static int unix_socket_for(int fd, int type, const struct fd_entry *e, struct fd_flags *flags)
{
	return e->kind == FD_PENDING ? fd : make_socket(fd, AF_UNIX, type, e, flags);
}

static void discard(int fd, int sock)
{
	int saved = errno;

	if (sock != fd)
		REAL(close)(sock);
	errno = saved;
}

static void copy_async_owner(int from, int to, int status)
{
	struct f_owner_ex owner;
	int sig;

	if (!(status & O_ASYNC))
		return;
	if (REAL(fcntl)(from, F_GETOWN_EX, &owner) == 0)
		REAL(fcntl)(to, F_SETOWN_EX, &owner);
	sig = REAL(fcntl)(from, F_GETSIG);
	if (sig > 0)
		REAL(fcntl)(to, F_SETSIG, sig);
	REAL(fcntl)(to, F_SETFL, status);
}

/* Put sock in fd's place and record e for it.  On failure fd is left as it was. */
static int replace_fd(int fd, int sock, const struct fd_flags *flags, struct fd_entry *e)
{
	struct epoll_reg reg;
	struct fd_entry old;
	int saved;

	copy_async_owner(fd, sock, flags->status);
	fd_snapshot(fd, &old);
	fd_store(fd, e);
	if (REAL(dup3)(sock, fd, flags->fd & FD_CLOEXEC ? O_CLOEXEC : 0) < 0) {
		saved = errno;
		fd_store(fd, &old);
		REAL(close)(sock);
		errno = saved;
		return -1;
	}
	REAL(close)(sock);
	for (unsigned i = 0; fd_record_at(fd, e, REC_EPOLL, i, &reg) == 0; i++) {
		if (REAL(epoll_ctl)(reg.epfd, EPOLL_CTL_ADD, fd, &reg.ev) && errno != EEXIST)
			ulog(LOG_WARN_, "fd %d: epoll registration not carried over: %s", fd,
			     strerror(errno));
	}
	if (e->kind == FD_IP) /* materialized: a later connect may still convert it */
		fd_store(fd, e);
	else
		fd_store_no_epoll(fd, e);
	return 0;
}

/* Record e for fd, moving sock into fd's place unless it is fd already.  On failure the
 * socket file made for sock, if any, goes with it. */
static int install(int fd, int sock, const struct fd_flags *flags, struct fd_entry *e)
{
	int saved;

	if (sock == fd) {
		fd_store_no_epoll(fd, e);
		return 0;
	}
	if (replace_fd(fd, sock, flags, e) == 0)
		return 0;
	saved = errno;
	if (e->sockfile >= 0)
		sockfile_release(e->sockfile);
	errno = saved;
	return -1;
}

int materialize(int fd)
{
	struct pending_opt o;
	struct fd_entry e;
	struct fd_flags flags;
	int sock;

	fd_snapshot(fd, &e);
	if (e.kind != FD_PENDING)
		return 0;
	sock = make_socket(fd, e.family, e.type, &e, &flags);
	if (sock < 0)
		return -1;
	for (unsigned i = 0; fd_record_at(fd, &e, REC_OPT, i, &o) == 0; i++) {
		if (REAL(setsockopt)(sock, o.level, o.name, o.value, o.len))
			ulog(LOG_DEBUG_, "fd %d: option %d/%d not carried over: %s", fd, o.level,
			     o.name, strerror(errno));
	}
	ulog(LOG_DEBUG_, "fd %d: no rule converts it; making it the IP socket it was", fd);
	e.kind = FD_IP;
	return replace_fd(fd, sock, &flags, &e);
}

void claim_mark(int fd, const struct fd_entry *old, int dir, int err)
{
	struct fd_entry *e;
	int saved = errno;

	state_lock(); /* this fd's entry only */
	e = fd_get(fd, err != 0);
	if (e && e->kind == FD_NONE && old->kind == FD_IP && err)
		*e = *old; /* an IP socket we learnt of from the kernel */
	if (e && (e->kind == FD_IP || e->kind == FD_PENDING)) {
		e->claim_errno = (uint8_t)(err >= 0 && err < 256 ? err : EACCES);
		e->claim_dir = (uint8_t)dir;
	}
	state_unlock();
	errno = saved; /* fd_get's mmap may fail */
}

int claim_refuses(const struct fd_entry *e, int dir)
{
	if (!e->claim_errno || (e->kind != FD_IP && e->kind != FD_PENDING) ||
	    (dir != DIR_ANY && e->claim_dir != dir))
		return 0;
	errno = e->claim_errno;
	return -1;
}

int rule_target(int fd, const struct sock_query *q, struct sockaddr_un *sun, socklen_t *len)
{
	char target[sizeof(sun->sun_path)];
	const struct rule *r = NULL;
	int d = rule_decide(fd, q, &r, target, sizeof(target)), n;

	if (d)
		return d;
	if (r->action == ACT_BLACKHOLE) { /* the parser allows blackhole only for 'in' */
		errno = EACCES;
		return -1;
	}
	if (r->action != ACT_PATH && r->action != ACT_ABSTRACT) {
		ulog(LOG_ERR_, "rule %d: vsock=, tipc= and fc= convert stream connections only",
		     (int)(r - rule_at(0)) + 1);
		errno = EPROTOTYPE;
		return -1;
	}
	n = unix_addr_fill(sun, r, target);
	if (n < 0)
		return -1;
	*len = (socklen_t)n;
	return 0;
}

static void new_entry(struct fd_entry *e, const struct fd_entry *old, int role)
{
	*e = *old;
	e->kind = FD_CONVERTED;
	e->role = (uint8_t)role;
	e->opts_set = 0;
	e->sockfile = -1;
	e->claim_errno = 0;
	e->claim_dir = 0;
}

/* The address a converted listener reports: what it asked for, with a port if it
 * asked for any port. */
static void listener_local(struct ipaddr *local, const struct ipaddr *addr)
{
	*local = *addr;
	if (ipaddr_port(addr) == 0)
		ipaddr_set_port(local, fake_port());
}

/* A 'systemd' rule: the passed socket takes the place of fd instead of a bind. */
int convert_passed(int fd, const struct ipaddr *addr, const struct fd_entry *old,
		      const struct rule *r)
{
	struct fd_flags flags;
	struct fd_entry e;
	int family, sock, status;

	sock = systemd_claim((int)(r - rule_at(0)), r, old->type, &family);
	if (sock == -2) { /* this rule's socket is in place already: blackhole this one */
		sock = make_socket(fd, AF_UNIX, old->type, old, &flags);
		if (sock < 0 || sockfile_blackhole(sock)) {
			discard(fd, sock < 0 ? fd : sock);
			return -1;
		}
		family = AF_UNIX;
	} else if (sock < 0) {
		return -1;
	} else {
		flags.status = REAL(fcntl)(fd, F_GETFL);
		flags.fd = REAL(fcntl)(fd, F_GETFD);
		status = REAL(fcntl)(sock, F_GETFL);
		if (flags.status < 0 || flags.fd < 0 || status < 0) {
			discard(fd, sock);
			return -1;
		}
		/* one open file: blocking mode is the program's, as on the socket it made */
		REAL(fcntl)(sock, F_SETFL, (status & ~O_NONBLOCK) | (flags.status & O_NONBLOCK));
	}
	new_entry(&e, old, ROLE_LISTENER);
	/* A passed socket of the program's own family is what it would have made itself:
	 * nothing to translate.  A passed Unix socket for an IP one is a converted
	 * listener. */
	if (addr)
		listener_local(&e.local, addr);
	if (!addr || family != AF_UNIX)
		e.kind = FD_NONE;
	return install(fd, sock, &flags, &e);
}

/* A socket of t's family ready to stand in for fd, with t's options; logged if not. */
static int other_socket(int fd, const struct fd_entry *old, const struct other_target *t,
			const char *what, struct fd_flags *flags)
{
	int sock = make_socket(fd, t->family, old->type, old, flags);

	if (sock < 0) {
		ulog(LOG_ERR_, "fd %d: cannot make a socket for %s: %s", fd, what, strerror(errno));
		return -1;
	}
	other_apply_options(sock, t);
	return sock;
}

/* Bind to an address of another family (vsock, tipc) in fd's place. */
static int bind_other(int fd, const struct ipaddr *addr, const struct fd_entry *old,
		      const struct other_target *t)
{
	char what[160];
	struct fd_flags flags;
	struct fd_entry e;
	int sock;

	other_describe(t, what, sizeof(what));
	if (t->fc) {
		ulog(LOG_ERR_, "fd %d: cannot listen on %s: a multiplexer only connects", fd, what);
		errno = EINVAL;
		return -1;
	}
	sock = other_socket(fd, old, t, what, &flags);
	if (sock < 0)
		return -1;
	if (REAL(bind)(sock, (const struct sockaddr *)&t->addr, t->len)) {
		ulog(LOG_ERR_, "fd %d: cannot bind %s: %s", fd, what, strerror(errno));
		discard(fd, sock);
		return -1;
	}
	new_entry(&e, old, ROLE_LISTENER);
	listener_local(&e.local, addr);
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: listening on %s", fd, what);
	return 0;
}

int convert_bind(int fd, const struct ipaddr *addr, const struct fd_entry *old)
{
	struct sock_query q = { .dir = DIR_IN, .type = old->type, .addr = addr };
	char target[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const struct rule *r = NULL;
	struct fd_entry e;
	struct fd_flags flags;
	int sock, d, idx = -1;

	d = rule_decide(fd, &q, &r, target, sizeof(target));
	if (d > 0)
		return materialize(fd) ? -1 : 1;
	if (d < 0)
		return -1;
	if (r->action == ACT_SYSTEMD)
		return convert_passed(fd, addr, old, r);
	if (r->action == ACT_VSOCK || r->action == ACT_TIPC || r->action == ACT_FC) {
		struct other_target t;

		other_from_rule(r, &t);
		return bind_other(fd, addr, old, &t);
	}
	sock = unix_socket_for(fd, old->type, old, &flags);
	if (sock < 0)
		return -1;
	if (r->action == ACT_PATH && sockfile_find(target) >= 0) {
		ulog(LOG_INFO_, "fd %d: %s is already bound by this process; blackholing", fd,
		     target);
		d = sockfile_blackhole(sock);
		target[0] = 0;
	} else if (r->action == ACT_PATH) {
		idx = sockfile_bind(sock, target, r);
		d = idx == -2 ? -1 : 0;
		if (d && errno == EADDRINUSE) { /* a control file in the socket's place? */
			struct other_target t;
			int saved = errno, c = control_file_read(target, &t);

			if (c) {
				discard(fd, sock);
				return c < 0 ? -1 : bind_other(fd, addr, old, &t);
			}
			errno = saved;
		}
	} else if (r->action == ACT_ABSTRACT) {
		struct sockaddr_un sun;
		int len = unix_addr_fill(&sun, r, target);

		d = len < 0 ? -1 : REAL(bind)(sock, (struct sockaddr *)&sun, (socklen_t)len);
	} else {
		d = sockfile_blackhole(sock);
	}
	if (d) {
		discard(fd, sock);
		return -1;
	}
	new_entry(&e, old, ROLE_LISTENER);
	listener_local(&e.local, addr);
	e.sockfile = idx >= 0 ? idx : -1;
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: listening on %s%s", fd,
	     r->action == ACT_ABSTRACT ? "@" : "", target[0] ? target : "(blackhole)");
	return 0;
}

/* How a log line names a Unix address. */
static const char *unix_name(const struct sockaddr_un *sun, char *buf, size_t size)
{
	if (sun->sun_path[0])
		return sun->sun_path;
	snprintf(buf, size, "@%s", sun->sun_path + 1);
	return buf;
}

/* A local address to report for a socket we connected: loopback of its family (the
 * IPv4-mapped one when it talks to an IPv4-mapped address), with a port of its own. */
static void client_local(struct ipaddr *local, int family, const struct ipaddr *peer)
{
	ipaddr_loopback_like(local, family, peer);
	ipaddr_set_port(local, fake_port());
}

/* A datagram socket needs an address of its own for replies to reach it. */
static int private_address(int fd, int sock, const struct fd_entry *old)
{
	int idx;

	if (old->type != SOCK_DGRAM)
		return -1;
	idx = dgram_private_bind(sock);
	if (idx == -2)
		discard(fd, sock);
	return idx;
}

/* Connect to an address of another family, or through a multiplexer, in fd's place.
 * A non-blocking vsock/tipc connect may end in EINPROGRESS, with the socket in place. */
static int connect_other(int fd, const struct ipaddr *addr, const struct fd_entry *old,
			 const struct other_target *t)
{
	char what[160];
	struct fd_flags flags;
	struct fd_entry e;
	int sock, r, saved;

	other_describe(t, what, sizeof(what));
	if (t->fc && old->type != SOCK_STREAM) {
		ulog(LOG_ERR_, "fd %d: %s carries stream connections only", fd, what);
		errno = EPROTOTYPE;
		return -1;
	}
	sock = other_socket(fd, old, t, what, &flags);
	if (sock < 0)
		return -1;
	/* a Unix connect (to a multiplexer) completes at once or fails; only vsock and
	 * tipc connects may be left in progress */
	r = REAL(connect)(sock, (const struct sockaddr *)&t->addr, t->len);
	if (t->fc && r == 0)
		r = fc_handshake(sock, t);
	saved = errno;
	if (r && !(errno == EINPROGRESS && !t->fc)) {
		ulog(LOG_INFO_, "fd %d: connecting to %s failed: %s", fd, what, strerror(saved));
		discard(fd, sock);
		errno = saved == ENOENT ? ECONNREFUSED : saved;
		return -1;
	}
	new_entry(&e, old, ROLE_CLIENT);
	client_local(&e.local, old->family, addr);
	e.peer = *addr;
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: connected to %s", fd, what);
	errno = saved;
	return r;
}

int convert_connect(int fd, const struct ipaddr *addr, const struct fd_entry *old,
		    int *handled)
{
	struct sock_query q = { .dir = DIR_OUT, .type = old->type, .addr = addr };
	char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 2];
	const struct rule *r = NULL;
	struct other_target t;
	struct sockaddr_un sun;
	struct fd_entry e;
	struct fd_flags flags;
	int sock, d, len, idx, saved;

	*handled = 1;
	d = rule_decide(fd, &q, &r, name, sizeof(name));
	if (d > 0) {
		*handled = materialize(fd) != 0;
		return -1;
	}
	if (d < 0)
		return -1;
	if (r->action == ACT_VSOCK || r->action == ACT_TIPC || r->action == ACT_FC) {
		other_from_rule(r, &t);
		return connect_other(fd, addr, old, &t);
	}
	if (r->action == ACT_BLACKHOLE) { /* the parser allows blackhole only for 'in' */
		errno = EACCES;
		return -1;
	}
	len = unix_addr_fill(&sun, r, name);
	if (len < 0)
		return -1;
	sock = unix_socket_for(fd, old->type, old, &flags);
	if (sock < 0)
		return -1;
	idx = private_address(fd, sock, old);
	if (idx == -2)
		return -1;
	/* May block (a full backlog on a blocking socket); we hold no lock here. */
	if (REAL(connect)(sock, (struct sockaddr *)&sun, (socklen_t)len)) {
		saved = errno == ENOENT ? ECONNREFUSED : errno;
		discard(fd, sock);
		if (idx >= 0)
			sockfile_release(idx);
		/* a regular file where the socket should be may be an unsock control file */
		d = saved == ECONNREFUSED && r->action == ACT_PATH && old->type == SOCK_STREAM
			    ? control_file_read(sun.sun_path, &t) : 0;
		if (d)
			return d < 0 ? -1 : connect_other(fd, addr, old, &t);
		ulog(LOG_INFO_, "fd %d: connecting to %s failed: %s", fd,
		     unix_name(&sun, name, sizeof(name)), strerror(saved));
		errno = saved;
		return -1;
	}
	new_entry(&e, old, ROLE_CLIENT);
	client_local(&e.local, old->family, addr);
	e.peer = *addr;
	e.sockfile = idx;
	if (old->type == SOCK_DGRAM)
		peers_remember(&sun, (socklen_t)len, addr);
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: connected to %s", fd, unix_name(&sun, name, sizeof(name)));
	return 0;
}

int convert_sender(int fd, const struct fd_entry *old)
{
	struct fd_entry e;
	struct fd_flags flags;
	int sock, idx;

	sock = unix_socket_for(fd, SOCK_DGRAM, old, &flags);
	if (sock < 0)
		return -1;
	idx = private_address(fd, sock, old);
	if (idx == -2)
		return -1;
	new_entry(&e, old, ROLE_NONE);
	client_local(&e.local, old->family, &old->local);
	e.sockfile = idx;
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: datagram socket converted for sending", fd);
	return 0;
}
