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

int copyable_option(int optname)
{
	struct fd_entry e = { .opts_set = 0 };

	copyable_option_mark(&e, SOL_SOCKET, optname);
	return e.opts_set != 0;
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

	if (sock != fd && sock >= 0)
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

/* Record e for fd, its socket in place.  Epoll registrations are kept where the socket
 * may be replaced again: a materialized one a later connect may still convert, a
 * receiver that may move again, and a listener that may pause and resume (pause.c). */
static void store_in_place(int fd, struct fd_entry *e)
{
	if (e->kind == FD_IP || is_receiver(e) || e->role == ROLE_LISTENER)
		fd_store(fd, e);
	else
		fd_store_no_epoll(fd, e);
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
	store_in_place(fd, e);
	return 0;
}

int replace_socket(int fd, int sock)
{
	struct fd_flags flags;
	struct fd_entry e;

	flags.status = REAL(fcntl)(fd, F_GETFL);
	flags.fd = REAL(fcntl)(fd, F_GETFD);
	if (flags.status < 0 || flags.fd < 0) {
		discard(fd, sock);
		return -1;
	}
	fd_snapshot(fd, &e);
	return replace_fd(fd, sock, &flags, &e);
}

/* Record e for fd, moving sock into fd's place unless it is fd already.  On failure the
 * socket file made for sock, if any, goes with it. */
static int install(int fd, int sock, const struct fd_flags *flags, struct fd_entry *e)
{
	int saved;

	if (sock == fd) {
		store_in_place(fd, e);
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

/* The IP socket e (fd's entry) stands for, with the IP- and TCP-level options the
 * program set. */
static int ip_socket(int fd, const struct fd_entry *e, struct fd_flags *flags)
{
	struct pending_opt o;
	int sock = make_socket(fd, e->family, e->type, e, flags);

	for (unsigned i = 0; sock >= 0 && fd_record_at(fd, e, REC_OPT, i, &o) == 0; i++) {
		if (REAL(setsockopt)(sock, o.level, o.name, o.value, o.len))
			ulog(LOG_DEBUG_, "fd %d: option %d/%d not carried over: %s", fd, o.level,
			     o.name, strerror(errno));
	}
	return sock;
}

int materialize(int fd)
{
	struct fd_entry e;
	struct fd_flags flags;
	int sock;

	fd_snapshot(fd, &e);
	if (e.kind != FD_PENDING)
		return 0;
	sock = ip_socket(fd, &e, &flags);
	if (sock < 0)
		return -1;
	ulog(LOG_DEBUG_, "fd %d: no rule converts it; making it the IP socket it was", fd);
	e.kind = FD_IP;
	return replace_fd(fd, sock, &flags, &e);
}

/*
 * Under PREDICT_LEARN, a guess for each family from this process's recent stream
 * connects: a count that each converted connect raises and each unconverted one (or
 * bind of a pending socket) lowers, within 0..LEARN_MAX; socket() makes a pending
 * socket while it is LEARN_PENDING or more.  One odd connect does not turn it, two in a
 * row do.  No lock: threads racing may lose an update of a guess, and a wrong guess
 * costs time, never what the program sees.
 */
#define LEARN_MAX 3
#define LEARN_PENDING 2
static int learnt[2] = { LEARN_PENDING, LEARN_PENDING };

int predict_pending(int family)
{
	int v6 = family == AF_INET6;

	if (predict_stream_out[v6] != PREDICT_LEARN)
		return predict_stream_out[v6] == PREDICT_ALWAYS;
	return __atomic_load_n(&learnt[v6], __ATOMIC_RELAXED) >= LEARN_PENDING;
}

static void learn(const struct fd_entry *e, int converted)
{
	int v6 = e->family == AF_INET6, n, was;

	if (e->type != SOCK_STREAM || predict_stream_out[v6] != PREDICT_LEARN)
		return;
	was = __atomic_load_n(&learnt[v6], __ATOMIC_RELAXED);
	n = converted ? was + (was < LEARN_MAX) : was - (was > 0);
	if (n != was) /* the line stays shared while the guess holds */
		__atomic_store_n(&learnt[v6], n, __ATOMIC_RELAXED);
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
	if (r->action == ACT_RECEIVE) { /* matches binds only */
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
	if (role != ROLE_LISTENER) /* a listener may turn out a client that binds first */
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
	fake_port_share();
	if (ipaddr_port(addr) == 0)
		ipaddr_set_port(local, fake_port());
	listener_note(local);
}

static int socket_type(int sock)
{
	socklen_t len = sizeof(int);
	int type = 0;

	return REAL(getsockopt)(sock, SOL_SOCKET, SO_TYPE, &type, &len) ? -1 : type;
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
	 * listener; a Unix datagram one for a TCP listener a receiver (receive.c). */
	if (family == AF_UNIX && old->type == SOCK_STREAM && socket_type(sock) == SOCK_DGRAM)
		e.role = ROLE_RECEIVER;
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

/* Bind sock where rule r (target expanded, SUN_LEN bytes) says: 0, or -1 with errno;
 * *idx the record of the file made.  A path this process has bound already blackholes
 * (an IPv4 and an IPv6 listener under one rule). */
static int bind_unix(int fd, int sock, const struct rule *r, char *target, int *idx)
{
	struct sockaddr_un sun;
	int len;

	switch (r->action) {
	case ACT_PATH:
		if (sockfile_find(target) >= 0) {
			ulog(LOG_INFO_, "fd %d: %s is already bound by this process; blackholing",
			     fd, target);
			target[0] = 0;
			return sockfile_blackhole(sock);
		}
		*idx = sockfile_bind(sock, target, r);
		return *idx == -2 ? -1 : 0;
	case ACT_ABSTRACT:
		len = unix_addr_fill(&sun, r, target);
		return len < 0 ? -1 : REAL(bind)(sock, (struct sockaddr *)&sun, (socklen_t)len);
	default:
		return sockfile_blackhole(sock);
	}
}

/* After a failed bind sock may be bound all the same (in a private directory, for
 * mode=): then a new one takes its place. */
static int unbound(int fd, int *sock, const struct fd_entry *old, struct fd_flags *flags)
{
	struct sockaddr_un sun;
	socklen_t len = sizeof(sun);

	if (REAL(getsockname)(*sock, (struct sockaddr *)&sun, &len) == 0 &&
	    len <= offsetof(struct sockaddr_un, sun_path))
		return 0;
	if (*sock != fd)
		REAL(close)(*sock);
	*sock = make_socket(fd, AF_UNIX, old->type, old, flags);
	return *sock < 0 ? -1 : 0;
}

#define PORT_TRIES 64

/*
 * A bind to port 0 under a rule whose target names the port (%p): choose the port
 * first and name the file by it, so that the port getsockname reports is the one
 * clients reach it by, and every such listener has a file of its own.  A port whose
 * file is live (or ours already), or that another rule decides, is skipped.  A rule
 * that takes none of the candidates (port=0) names the file by port 0, as asked.
 */
static int bind_free_port(int fd, int *sock, const struct fd_entry *old,
			  struct fd_flags *flags, const struct rule *r, struct ipaddr *local,
			  char *target, int *idx)
{
	struct sock_query q = { .dir = DIR_IN, .type = old->type, .addr = local };
	int rule = (int)(r - rule_at(0)), tried = 0;

	for (int i = 0; i < PORT_TRIES; i++) {
		ipaddr_set_port(local, fake_port());
		if (rules_match(&q) != rule)
			continue;
		tried++;
		if (rule_expand(r, &q, target, sizeof(((struct sockaddr_un *)0)->sun_path)))
			return -1;
		if (r->action == ACT_PATH && sockfile_find(target) >= 0)
			continue;
		if (bind_unix(fd, *sock, r, target, idx) == 0)
			return 0;
		if (errno != EADDRINUSE || unbound(fd, sock, old, flags))
			return -1;
	}
	if (!tried) {
		ipaddr_set_port(local, 0);
		return rule_expand(r, &q, target, sizeof(((struct sockaddr_un *)0)->sun_path)) ? -1
			: bind_unix(fd, *sock, r, target, idx);
	}
	errno = EADDRINUSE; /* as the kernel says when no ephemeral port is free */
	return -1;
}

/* Put sock, bound for a listener of role (its socket file idx, or -1), in fd's place. */
static int install_listener(int fd, int sock, const struct fd_flags *flags,
			    const struct fd_entry *old, const struct ipaddr *addr, int role, int idx)
{
	struct fd_entry e;

	new_entry(&e, old, role);
	listener_local(&e.local, addr);
	e.sockfile = idx >= 0 ? idx : -1;
	return install(fd, sock, flags, &e);
}

/*
 * A receive= rule: a receiver takes fd's place (receive.c), so that accept() hands out
 * the TCP connections a dispatcher passes.  A second listener of this process for the
 * same path (IPv4 and IPv6) is blackholed, as for path=.
 */
static int bind_receiver(int fd, const struct ipaddr *addr, const struct fd_entry *old,
			 const struct rule *r, const char *target)
{
	int kind = r->n_numbers ? SOCK_SEQPACKET : SOCK_DGRAM, sock, idx = -1, d;
	struct fd_flags flags;

	if (old->type != SOCK_STREAM) {
		ulog(LOG_ERR_, "fd %d: receive=%s takes TCP connections, not datagrams", fd,
		     target);
		errno = EPROTOTYPE;
		return -1;
	}
	sock = make_socket(fd, AF_UNIX, kind, old, &flags);
	if (sock < 0)
		return -1;
	if (!r->n_numbers && sockfile_find(target) >= 0) {
		ulog(LOG_INFO_, "fd %d: %s is already bound by this process; blackholing", fd,
		     target);
		d = sockfile_blackhole(sock);
	} else {
		idx = receive_setup(sock, target, r);
		d = idx == -2 ? -1 : 0;
	}
	if (d) {
		discard(fd, sock);
		return -1;
	}
	return install_listener(fd, sock, &flags, old, addr, ROLE_RECEIVER, idx);
}

int convert_bind(int fd, const struct ipaddr *addr, const struct fd_entry *old)
{
	struct sock_query q = { .dir = DIR_IN, .type = old->type, .addr = addr };
	char target[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const struct rule *r = NULL;
	struct fd_flags flags;
	struct ipaddr local;
	int sock, d, idx = -1;

	d = rule_decide(fd, &q, &r, target, sizeof(target));
	if (d > 0 && old->kind == FD_PENDING)
		learn(old, 0); /* a pending socket bound as an IP one: no gain, a cost */
	if (d > 0)
		return materialize(fd) ? -1 : 1;
	if (d < 0)
		return -1;
	if (r->action == ACT_SYSTEMD)
		return convert_passed(fd, addr, old, r);
	if (r->action == ACT_RECEIVE)
		return bind_receiver(fd, addr, old, r, target);
	if (r->action == ACT_VSOCK || r->action == ACT_TIPC || r->action == ACT_FC) {
		struct other_target t;

		other_from_rule(r, &t);
		return bind_other(fd, addr, old, &t);
	}
	sock = unix_socket_for(fd, old->type, old, &flags);
	if (sock < 0)
		return -1;
	local = *addr;
	if (!ipaddr_port(addr) && rule_names_port(r)) {
		d = bind_free_port(fd, &sock, old, &flags, r, &local, target, &idx);
	} else {
		d = bind_unix(fd, sock, r, target, &idx);
		if (d && errno == EADDRINUSE && r->action == ACT_PATH) {
			/* a control file in the socket's place? */
			struct other_target t;
			int saved = errno, c = control_file_read(target, &t);

			if (c) {
				discard(fd, sock);
				return c < 0 ? -1 : bind_other(fd, addr, old, &t);
			}
			errno = saved;
		}
	}
	if (d) {
		discard(fd, sock);
		return -1;
	}
	if (install_listener(fd, sock, &flags, old, &local, ROLE_LISTENER, idx))
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
void client_local(struct ipaddr *local, int family, const struct ipaddr *peer)
{
	ipaddr_loopback_like(local, family, peer);
	ipaddr_set_port(local, fake_port());
}

/* The local address of a client we connected: the source address it bound first, as the
 * program asked for it (a client that binds before connecting), else as above. */
static void connected_local(struct ipaddr *local, const struct fd_entry *old,
			    const struct ipaddr *peer)
{
	client_local(local, old->family, peer);
	if (old->local.sa.sa_family != old->family || ipaddr_is_any(&old->local))
		return;
	*local = old->local;
	if (!ipaddr_port(local))
		ipaddr_set_port(local, fake_port());
}

/* A datagram socket needs an address of its own for replies to reach it.  0, or -1
 * with sock discarded. */
static int reply_address(int fd, int sock, const struct fd_entry *old)
{
	if (old->type != SOCK_DGRAM || dgram_autobind(sock) == 0)
		return 0;
	ulog(LOG_ERR_, "fd %d: cannot give the datagram socket an address for replies: %s",
	     fd, strerror(errno));
	discard(fd, sock);
	return -1;
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
	connected_local(&e.local, old, addr);
	e.peer = *addr;
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: connected to %s", fd, what);
	errno = saved;
	return r;
}

/* Connect fd in the Unix socket's place to sun, standing for addr; r the rule that sent
 * it there (NULL for our own listener). */
static int connect_unix(int fd, const struct ipaddr *addr, const struct fd_entry *old,
			const struct sockaddr_un *sun, socklen_t len, const struct rule *r)
{
	char name[sizeof(sun->sun_path) + 2];
	struct other_target t;
	struct fd_entry e;
	struct fd_flags flags;
	int sock, d, saved;

	sock = unix_socket_for(fd, old->type, old, &flags);
	if (sock < 0 || reply_address(fd, sock, old))
		return -1;
	/* May block (a full backlog on a blocking socket); we hold no lock here. */
	if (REAL(connect)(sock, (const struct sockaddr *)sun, len)) {
		saved = errno == ENOENT ? ECONNREFUSED : errno;
		discard(fd, sock);
		/* a regular file where the socket should be may be an unsock control file */
		d = saved == ECONNREFUSED && r && r->action == ACT_PATH &&
			    old->type == SOCK_STREAM ? control_file_read(sun->sun_path, &t) : 0;
		if (d)
			return d < 0 ? -1 : connect_other(fd, addr, old, &t);
		ulog(LOG_INFO_, "fd %d: connecting to %s failed: %s", fd,
		     unix_name(sun, name, sizeof(name)), strerror(saved));
		errno = saved;
		return -1;
	}
	new_entry(&e, old, ROLE_CLIENT);
	connected_local(&e.local, old, addr);
	e.peer = *addr;
	if (old->type == SOCK_DGRAM)
		peers_remember(sun, len, addr);
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: connected to %s", fd, unix_name(sun, name, sizeof(name)));
	return 0;
}

int convert_connect(int fd, const struct ipaddr *addr, const struct fd_entry *old,
		    int *handled)
{
	struct sock_query q = { .dir = DIR_OUT, .type = old->type, .addr = addr };
	char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 2];
	const struct rule *r = NULL;
	struct other_target t;
	struct sockaddr_un sun;
	socklen_t len;
	int d, n;

	*handled = 1;
	/* our own listener first, as the kernel would; never real TCP to its port */
	d = own_listener(fd, addr, old->type, &sun, &len);
	if (d <= 0)
		return d < 0 ? -1 : connect_unix(fd, addr, old, &sun, len, NULL);
	d = rule_decide(fd, &q, &r, name, sizeof(name));
	if (d > 0) {
		learn(old, 0);
		*handled = materialize(fd) != 0;
		return -1;
	}
	if (d < 0)
		return -1;
	learn(old, r->action == ACT_PATH || r->action == ACT_ABSTRACT);
	if (r->action == ACT_VSOCK || r->action == ACT_TIPC || r->action == ACT_FC) {
		other_from_rule(r, &t);
		return connect_other(fd, addr, old, &t);
	}
	if (r->action == ACT_BLACKHOLE) { /* the parser allows blackhole only for 'in' */
		errno = EACCES;
		return -1;
	}
	n = unix_addr_fill(&sun, r, name);
	if (n < 0)
		return -1;
	return connect_unix(fd, addr, old, &sun, (socklen_t)n, r);
}

int convert_sender(int fd, const struct fd_entry *old)
{
	struct fd_entry e;
	struct fd_flags flags;
	int sock;

	sock = unix_socket_for(fd, SOCK_DGRAM, old, &flags);
	if (sock < 0 || reply_address(fd, sock, old))
		return -1;
	new_entry(&e, old, ROLE_NONE);
	client_local(&e.local, old->family, &old->local);
	if (dgram_check_senders(sock, &e)) {
		ulog(LOG_ERR_, "fd %d: cannot ask for datagram senders' credentials: %s", fd,
		     strerror(errno));
		discard(fd, sock);
		return -1;
	}
	if (install(fd, sock, &flags, &e))
		return -1;
	ulog(LOG_INFO_, "fd %d: datagram socket converted for sending", fd);
	return 0;
}

/*
 * A client that binds a source address before connecting (curl --interface, ssh's
 * BindAddress) under an 'in' rule: the bind made a Unix listener, and the connect shows
 * it was a client.  Its entry as the IP socket about to connect, made from the
 * listener's old: the local address stays, the source a converted connect reports.
 */
static void unbound_client(struct fd_entry *ip, const struct fd_entry *old)
{
	*ip = *old;
	ip->kind = FD_IP;
	ip->role = ROLE_NONE;
	ip->sockfile = -1;
}

/* No rule converts the connect: the IP socket in fd's place, bound to the source
 * address alone (IP_BIND_ADDRESS_NO_PORT: the kernel picks the port at connect, as
 * for any client), so the port the 'in' rule claimed never opens. */
static int reopen_ip(int fd, const struct fd_entry *old)
{
	struct fd_flags flags;
	struct fd_entry e;
	struct ipaddr src = old->local;
	char ip[INET6_ADDRSTRLEN];
	int one = 1, sock;

	unbound_client(&e, old);
	memset(&e.local, 0, sizeof(e.local));
	sock = ip_socket(fd, &e, &flags);
	if (sock < 0)
		return -1;
	ipaddr_set_port(&src, 0);
	if (!ipaddr_is_any(&src) &&
	    (REAL(setsockopt)(sock, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) ||
	     REAL(bind)(sock, &src.sa, ipaddr_len(&src)))) {
		discard(fd, sock);
		return -1;
	}
	if (replace_fd(fd, sock, &flags, &e))
		return -1;
	sockfile_release(old->sockfile);
	ipaddr_format(&src, ip, sizeof(ip));
	ulog(LOG_INFO_, "fd %d: bound, then connected: a client; no rule converts the "
	     "connect, so it is TCP from %s with a port the kernel picks", fd, ip);
	return 0;
}

int convert_bound_connect(int fd, const struct ipaddr *addr, const struct fd_entry *old,
			  int *handled)
{
	struct fd_entry ip;
	socklen_t len = sizeof(int);
	int listening = 0, r;

	*handled = 1;
	if (REAL(getsockopt)(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening) {
		errno = EISCONN; /* as TCP answers a connect on a listener */
		return -1;
	}
	if (addr->sa.sa_family != old->family) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	unbound_client(&ip, old);
	r = convert_connect(fd, addr, &ip, handled);
	if (*handled) {
		if (r == 0)
			sockfile_release(old->sockfile); /* the bind's file went with its socket */
		return r;
	}
	*handled = reopen_ip(fd, old) != 0;
	return -1;
}

int convert_relisten(int fd, const struct fd_entry *old, const char *path,
		     const struct rule *r, int backlog)
{
	struct fd_flags flags;
	struct fd_entry e = *old;
	int sock, idx;

	e.opts_set = (1u << N_COPYABLE) - 1; /* whatever the old one has that a new lacks */
	sock = make_socket(fd, AF_UNIX, old->type, &e, &flags);
	if (sock < 0)
		return -1;
	idx = sockfile_bind(sock, path, r);
	if (idx == -2 || REAL(listen)(sock, backlog)) {
		discard(fd, sock);
		if (idx >= 0)
			sockfile_release(idx);
		return -1;
	}
	e = *old;
	e.sockfile = idx;
	e.paused = 0;
	return install(fd, sock, &flags, &e);
}
