/*
 * The libc functions we interpose: socket setup calls and the fd calls that must keep
 * our table right.  Each one steps aside as early as it can; a call about an fd we know
 * nothing of costs one table lookup.  errno is what libc would leave: unchanged on
 * success paths, the right value on failure.
 */
/* We define fcntl and fcntl64 both; keep the headers from renaming one to the other. */
#undef _FILE_OFFSET_BITS
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "shim.h"

#define SOMAXCONN_MAX 65535

/*
 * Once: from our constructor, or from the first socket call if it comes earlier.  The
 * dynamic linker may run the constructor of a library the program links before ours,
 * and a socket it opens there must meet the rules too.  Another thread's first call
 * meanwhile waits until the start-up is done, rather than pass while no rule is read; a
 * signal handler on the starting thread cannot wait, and goes on.
 */
int shim_started; /* SHIM_STARTING, then SHIM_STARTED */
static __thread int starting_here __attribute__((tls_model("initial-exec")));

void shim_start(void)
{
	int expected = 0;

	if (__atomic_compare_exchange_n(&shim_started, &expected, SHIM_STARTING, 0,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		starting_here = 1;
		real_init();
		log_init();
		rules_init();
		systemd_init();
		inherit_init();
		__atomic_store_n(&shim_started, SHIM_STARTED, __ATOMIC_RELEASE);
		starting_here = 0;
		return;
	}
	while (__atomic_load_n(&shim_started, __ATOMIC_ACQUIRE) != SHIM_STARTED && !starting_here)
		sched_yield();
}

__attribute__((constructor(102))) static void shim_init(void)
{
	shim_start();
}

__attribute__((destructor)) static void shim_fini(void)
{
	/* In the program's sandbox the kernel closes our sockets; whoever holds them
	 * outside removes the files (sandbox.c). */
	if (rules_state == RULES_NONE || sandboxed())
		return;
	sockfile_exit_cleanup();
}

/* What we know of fd, in e: its kind (FD_NONE for anything but an IP socket, including
 * fds that are not sockets), and for sockets of ours the family and type. */
static void classify(int fd, struct fd_entry *e)
{
	socklen_t len = sizeof(int);
	int family, type, saved = errno;

	if (fd_tracked(fd)) {
		fd_snapshot(fd, e);
		return;
	}
	fd_entry_init(e);
	/* Sockets made before we were loaded, or with syscall(2): ask the kernel. */
	if (REAL(getsockopt)(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) == 0 &&
	    (family == AF_INET || family == AF_INET6) &&
	    REAL(getsockopt)(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0) {
		e->kind = FD_IP;
		e->family = (uint8_t)family;
		e->type = (uint8_t)type;
	}
	errno = saved;
}

static int unspecified_family(const struct sockaddr *sa, socklen_t len)
{
	return sa && len >= sizeof(sa_family_t) && sa->sa_family == AF_UNSPEC;
}

/*
 * A socket made where we could not see it (syscall(2), or before an exec) that sends to
 * an IP address (or AF_UNSPEC, which UDP takes for one) would be bound to a port by the
 * kernel: learn it now, as bind and connect do.  1 when fd is tracked.
 */
int tracked_for_send(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct fd_entry e;

	if (fd_tracked(fd))
		return 1;
	if (rules_state == RULES_NONE || !sa || len < sizeof(sa_family_t) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6 && sa->sa_family != AF_UNSPEC))
		return 0;
	classify(fd, &e);
	if (e.kind != FD_IP || (e.type != SOCK_STREAM && e.type != SOCK_DGRAM))
		return 0;
	fd_store(fd, &e);
	return 1;
}

/* An unconverted IP socket of the address's family; a pending socket asked about another
 * family first becomes the IP socket it stands for, and the kernel answers. */
static int convertible(int fd, const struct fd_entry *e, const struct ipaddr *a)
{
	if (e->kind == FD_PENDING && a->sa.sa_family != e->family)
		return materialize(fd) ? -1 : 0;
	return (e->kind == FD_IP || e->kind == FD_PENDING) && a->sa.sa_family == e->family;
}

/*
 * vfork() shares memory with the parent: a child calling close() before exec would
 * change the parent's fd table.  fork() has the same semantics for everything a vfork
 * child may do, and gives the child its own copy.
 */
API pid_t vfork(void)
{
	return fork();
}

static int predicted(int domain, int base, int protocol)
{
	return rules_state == RULES_OK && base == SOCK_STREAM &&
	       (protocol == 0 || protocol == IPPROTO_TCP) &&
	       (domain == AF_INET || domain == AF_INET6) && predict_pending(domain);
}

API int socket(int domain, int type, int protocol)
{
	int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
	int pending, refused, fd;
	struct fd_entry e;

	rules_need();
	pending = predicted(domain, base, protocol);
	if (rules_state == RULES_OK && (domain == AF_INET || domain == AF_INET6) &&
	    (base == SOCK_STREAM || base == SOCK_DGRAM) &&
	    (refused = rules_refuse_socket(domain, base)) != 0) {
		errno = refused;
		return -1;
	}
	fd = pending ? REAL(socket)(AF_UNIX, type, 0) : REAL(socket)(domain, type, protocol);

	if (fd < 0 || rules_state == RULES_NONE || (domain != AF_INET && domain != AF_INET6) ||
	    (base != SOCK_STREAM && base != SOCK_DGRAM))
		return fd;
	fd_entry_init(&e);
	e.kind = pending ? FD_PENDING : FD_IP;
	e.family = (uint8_t)domain;
	e.type = (uint8_t)base;
	fd_store(fd, &e);
	return fd;
}

API int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct fd_entry e;
	struct ipaddr a;
	int r, saved = errno;

	rules_need();
	if (rules_state == RULES_NONE)
		return REAL(bind)(fd, sa, len);
	if (ipaddr_from_sockaddr(&a, sa, len) && !unspecified_family(sa, len))
		return rules_use_unix ? redirect_bind(fd, sa, len) : REAL(bind)(fd, sa, len);
	classify(fd, &e);
	if (ipaddr_for_socket(&a, sa, len, e.family, e.type, CALL_BIND))
		return REAL(bind)(fd, sa, len);
	r = convertible(fd, &e, &a);
	if (r <= 0)
		return r < 0 ? -1 : REAL(bind)(fd, sa, len);
	r = convert_bind(fd, &a, &e);
	if (r < 0) {
		claim_mark(fd, &e, DIR_IN, errno);
		return -1;
	}
	errno = saved;
	if (r == 0)
		return 0;
	/* no rule claims this address: a retry after a failed conversion is the program's */
	r = REAL(bind)(fd, sa, len);
	if (r == 0 && e.claim_errno)
		claim_mark(fd, &e, DIR_ANY, 0);
	return r;
}

/* connect() to AF_UNSPEC dissolves a datagram socket's association, and pauses a
 * listener. */
static int disconnect(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct fd_entry *e, now;
	int r;

	fd_snapshot(fd, &now);
	if (now.kind == FD_CONVERTED && now.type == SOCK_STREAM && now.role == ROLE_LISTENER)
		return listener_pause(fd, &now); /* TCP: stop listening, keep the port */
	r = REAL(connect)(fd, sa, len);

	if (r == 0) {
		state_lock();
		e = fd_get(fd, 0);
		if (e && e->kind == FD_CONVERTED && e->type == SOCK_DGRAM)
			e->role = ROLE_NONE;
		state_unlock();
	}
	return r;
}

API int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct fd_entry e;
	struct ipaddr a;
	int handled, r, saved = errno;

	rules_need();
	if (rules_state == RULES_NONE)
		return REAL(connect)(fd, sa, len);
	if (ipaddr_from_sockaddr(&a, sa, len)) {
		if (sa && len >= sizeof(sa_family_t) && sa->sa_family == AF_UNSPEC && fd_tracked(fd))
			return disconnect(fd, sa, len);
		return rules_use_unix ? redirect_connect(fd, sa, len) : REAL(connect)(fd, sa, len);
	}
	classify(fd, &e);
	ipaddr_for_socket(&a, sa, len, e.family, e.type, CALL_CONNECT); /* AF_INET on IPv6 */
	if (e.kind == FD_CONVERTED && e.type == SOCK_DGRAM)
		return a.sa.sa_family == e.family ? dgram_connect(fd, &a) : REAL(connect)(fd, sa, len);
	if (e.kind == FD_CONVERTED && (e.role == ROLE_CLIENT || e.role == ROLE_ACCEPTED)) {
		errno = EISCONN;
		return -1;
	}
	if (e.kind == FD_CONVERTED && e.role == ROLE_LISTENER && e.type == SOCK_STREAM) {
		r = convert_bound_connect(fd, &a, &e, &handled); /* bound first: a client */
		goto done;
	}
	if (claim_refuses(&e, DIR_IN)) /* connect would bind it to an IP port */
		return -1;
	r = convertible(fd, &e, &a);
	if (r <= 0)
		return r < 0 ? -1 : REAL(connect)(fd, sa, len);
	r = convert_connect(fd, &a, &e, &handled);
done:
	if (!handled) {
		errno = saved;
		return REAL(connect)(fd, sa, len);
	}
	if (r < 0)
		claim_mark(fd, &e, DIR_OUT, errno);
	else
		errno = saved;
	return r;
}

/* glibc exports connect under this name as well, with the same default version. */
API int __connect(int fd, const struct sockaddr *sa, socklen_t len);
API int __connect(int fd, const struct sockaddr *sa, socklen_t len)
	__attribute__((alias("connect")));

/*
 * listen() on a socket with no port binds it to one: the bind the rules decide about,
 * to the address it has (the unspecified one unless bound with IP_BIND_ADDRESS_NO_PORT)
 * and port 0.  A pending socket has no IP address yet.  0 when fd is ready to listen.
 */
static int bind_implicit(int fd, const struct fd_entry *e)
{
	socklen_t len = sizeof(struct ipaddr);
	struct ipaddr a;
	int r, saved = errno;

	ipaddr_any(&a, e->family);
	if (e->kind == FD_IP &&
	    (REAL(getsockname)(fd, &a.sa, &len) || a.sa.sa_family != e->family ||
	     ipaddr_port(&a) != 0)) {
		errno = saved;
		return 0; /* bound already, or not ours to judge: the kernel decides */
	}
	r = convert_bind(fd, &a, e);
	if (r < 0) {
		claim_mark(fd, e, DIR_IN, errno);
		return -1;
	}
	errno = saved;
	return 0;
}

/*
 * A TCP listener whose backlog is full lets new clients wait (their SYNs are retried); a
 * Unix one refuses them at once with EAGAIN.  So that clients see what they saw before
 * conversion, converted listeners get the largest backlog the system allows.
 */
API int listen(int fd, int backlog)
{
	struct fd_entry e;

	rules_need();
	if (rules_state == RULES_NONE)
		return REAL(listen)(fd, backlog);
	classify(fd, &e);
	if ((e.kind == FD_IP || e.kind == FD_PENDING) && e.type == SOCK_STREAM) {
		if (claim_refuses(&e, DIR_ANY) || bind_implicit(fd, &e))
			return -1;
		fd_snapshot(fd, &e);
	}
	if (is_receiver(&e)) /* nothing to listen on: connections come from a dispatcher */
		return receive_role(fd, ROLE_RECEIVING);
	if (e.kind == FD_CONVERTED && backlog < SOMAXCONN_MAX)
		backlog = SOMAXCONN_MAX; /* the kernel caps it at net.core.somaxconn */
	if (e.kind == FD_CONVERTED && e.paused)
		return listener_resume(fd, &e, backlog);
	return REAL(listen)(fd, backlog);
}

/*
 * glibc's bindresvport() and rresvport_af() bind with its internal bind, out of our
 * reach, and a program then listens on a reserved port no rule saw.  The same search
 * for a free port, through our bind: a rule that claims the socket decides at once.
 */
#define RESV_LOW 512 /* IPPORT_RESERVED / 2 */

/* libtirpc's version takes IPv6 too, and the socket's own family when sin is NULL. */
API int bindresvport(int fd, struct sockaddr_in *sin)
{
	unsigned start = (unsigned)getpid(), n = IPPORT_RESERVED - RESV_LOW;
	socklen_t len = sizeof(int);
	int family = AF_INET, saved = errno;
	struct ipaddr a;

	if (sin)
		family = sin->sin_family;
	else if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len))
		return -1;
	if (family != AF_INET && family != AF_INET6) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	ipaddr_any(&a, family);
	if (sin)
		memcpy(&a, sin, ipaddr_len(&a));
	for (unsigned i = 0; i < n; i++) {
		ipaddr_set_port(&a, (uint16_t)(RESV_LOW + (start + i) % n));
		if (bind(fd, &a.sa, ipaddr_len(&a)) == 0) {
			if (sin) /* sin_port and sin6_port are at the same place */
				sin->sin_port = htons(ipaddr_port(&a));
			errno = saved;
			return 0;
		}
		if (errno != EADDRINUSE)
			return -1;
	}
	return -1;
}

API int rresvport_af(int *alport, sa_family_t family)
{
	struct ipaddr a;
	int fd, saved;

	if (family != AF_INET && family != AF_INET6) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	fd = socket(family, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	ipaddr_any(&a, family);
	for (; *alport > RESV_LOW; (*alport)--) {
		ipaddr_set_port(&a, (uint16_t)*alport);
		if (bind(fd, &a.sa, ipaddr_len(&a)) == 0)
			return fd;
		if (errno != EADDRINUSE)
			break;
	}
	saved = *alport > RESV_LOW ? errno : EAGAIN;
	close(fd);
	errno = saved;
	return -1;
}

API int rresvport(int *alport)
{
	return rresvport_af(alport, AF_INET);
}

/* Bumped by every close of ours that releases a socket file (see accept_common). */
static atomic_uint releases;

/* fd, which owned socket file idx, is closed: remove the file if nobody holds the
 * socket any more. */
static void release_closed(int idx)
{
	atomic_fetch_add(&releases, 1);
	sockfile_release(idx);
}

/*
 * A thread blocked in accept() holds the listener open after another thread closed it
 * (Linux does not wake it), so the close found the socket alive and kept its file.  The
 * socket goes once that accept returns: if a release happened meanwhile and fd no
 * longer is that listener, look again.
 */
static void release_after_accept(int fd, const struct fd_entry *listener, unsigned before)
{
	struct fd_entry now;
	int saved = errno;

	if (listener->sockfile < 0 || atomic_load(&releases) == before)
		return;
	fd_snapshot(fd, &now);
	if (now.kind != FD_CONVERTED || now.sockfile != listener->sockfile)
		sockfile_release(listener->sockfile);
	errno = saved;
}

void accepted_entry(struct fd_entry *e, const struct fd_entry *listener)
{
	fd_entry_init(e);
	e->kind = FD_CONVERTED;
	e->role = ROLE_ACCEPTED;
	e->family = listener->family;
	e->type = listener->type;
	e->local = listener->local;
	if (ipaddr_is_any(&e->local)) {
		ipaddr_loopback(&e->local, listener->local.sa.sa_family);
		ipaddr_set_port(&e->local, ipaddr_port(&listener->local));
	}
	/* Clients on a Unix socket are local clients: report them as loopback, as a
	 * server trusting local peers expects (IPv4-mapped on a listener bound so). */
	ipaddr_loopback_like(&e->peer, listener->local.sa.sa_family, &listener->local);
	ipaddr_set_port(&e->peer, fake_port());
	if (unsock_peer.sa.sa_family == listener->local.sa.sa_family) {
		/* unsock reports its clients from UNSOCK_ADDR (and UNSOCK_PORT) */
		e->peer.in4.sin_addr = unsock_peer.in4.sin_addr;
		if (ipaddr_port(&unsock_peer))
			ipaddr_set_port(&e->peer, ipaddr_port(&unsock_peer));
	}
}

static int accept_common(int fd, struct sockaddr *addr, socklen_t *len, int flags, int is4)
{
	struct fd_entry listener, e;
	unsigned before;
	int conn;

	if (!fd_tracked(fd))
		goto passthrough;
	before = atomic_load(&releases);
	fd_snapshot(fd, &listener);
	if (listener.kind != FD_CONVERTED)
		goto passthrough;
	if (addr && !len) {
		errno = EFAULT;
		return -1;
	}
	if (is_receiver(&listener)) {
		conn = receive_accept(fd, &listener, addr, len, is4 ? flags : 0);
		release_after_accept(fd, &listener, before);
		return conn;
	}
	/* The Unix peer's own address says nothing useful; we report a local one. */
	conn = is4 ? REAL(accept4)(fd, NULL, NULL, flags) : REAL(accept)(fd, NULL, NULL);
	release_after_accept(fd, &listener, before);
	if (conn < 0)
		return conn;
	accepted_entry(&e, &listener);
	fd_store(conn, &e);
	if (addr)
		copy_out_addr(&e.peer, ipaddr_len(&e.peer), addr, len);
	return conn;
passthrough:
	return is4 ? REAL(accept4)(fd, addr, len, flags) : REAL(accept)(fd, addr, len);
}

API int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	return accept_common(fd, addr, len, 0, 0);
}

API int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	return accept_common(fd, addr, len, flags, 1);
}

API int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	struct fd_entry e;

	if (fd_tracked(fd)) {
		fd_snapshot(fd, &e);
		if (e.kind == FD_PENDING) /* not bound yet: the unspecified address, port 0 */
			ipaddr_any(&e.local, e.family);
		if (e.kind == FD_CONVERTED || e.kind == FD_PENDING)
			return copy_out_addr(&e.local, ipaddr_len(&e.local), addr, len);
	}
	return REAL(getsockname)(fd, addr, len);
}

API int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	struct fd_entry e;

	if (fd_tracked(fd)) {
		fd_snapshot(fd, &e);
		if (e.kind == FD_CONVERTED || e.kind == FD_PENDING) {
			if (e.role != ROLE_CLIENT && e.role != ROLE_ACCEPTED) {
				errno = ENOTCONN;
				return -1;
			}
			return copy_out_addr(&e.peer, ipaddr_len(&e.peer), addr, len);
		}
	}
	return REAL(getpeername)(fd, addr, len);
}

static int ip_level(int level)
{
	return level == IPPROTO_TCP || level == IPPROTO_IP || level == IPPROTO_IPV6 ||
	       level == IPPROTO_UDP;
}

/* Keep an option the Unix socket cannot take, to answer getsockopt and to replay it if
 * the socket turns out to be an IP one after all.  With the lock held; -1 with errno
 * when it cannot be kept. */
static int log_option(int fd, struct fd_entry *e, int level, int name, const void *val,
		      socklen_t len)
{
	struct pending_opt o = { .level = level, .name = name, .len = (uint8_t)len };

	if (!val || len > sizeof(o.value)) {
		errno = EMSGSIZE;
		return -1;
	}
	memcpy(o.value, val, len);
	return fd_record_put(fd, e, REC_OPT, &o);
}

/*
 * A pending socket stands in for an IP one only as far as what is set on it comes
 * along if it becomes one: the SOL_SOCKET options conversion carries over, IP-level
 * ones we can keep.  Another (SO_BINDTODEVICE, SO_OOBINLINE, a long IP_OPTIONS) makes
 * it the IP socket first, for the kernel to take; 0 when fd is ready for it.
 */
static int settle_for_option(int fd, int level, int optname, const void *val, socklen_t len)
{
	struct fd_entry e;

	if (level == SOL_SOCKET ? copyable_option(optname)
	    : !ip_level(level) || (val && len <= sizeof(((struct pending_opt *)0)->value)))
		return 0;
	fd_snapshot(fd, &e);
	return e.kind == FD_PENDING ? materialize(fd) : 0;
}

API int setsockopt(int fd, int level, int optname, const void *val, socklen_t len)
{
	struct fd_entry *e;
	int kind = FD_NONE, r, logged = -1, saved = errno, why = 0;

	if (!fd_tracked(fd))
		return REAL(setsockopt)(fd, level, optname, val, len);
	/* a client checking its senders keeps SO_PASSCRED on; the program's wish is kept */
	if (level == SOL_SOCKET && optname == SO_PASSCRED &&
	    (r = dgram_passcred_set(fd, val, len)) <= 0)
		return r;
	if (settle_for_option(fd, level, optname, val, len))
		return -1;
	state_lock();
	e = fd_get(fd, 0);
	if (e) {
		kind = e->kind;
		/* a converted listener may still become an IP client (bound first) */
		if (kind == FD_IP || kind == FD_PENDING || e->role == ROLE_LISTENER)
			copyable_option_mark(e, level, optname);
		/* IP- and TCP-level tuning has nothing to act on in a Unix socket; keep it
		 * to answer getsockopt after conversion */
		if (ip_level(level) && (logged = log_option(fd, e, level, optname, val, len))) {
			why = errno;
			errno = saved;
		}
	}
	state_unlock();
	if ((kind == FD_CONVERTED || kind == FD_PENDING) && ip_level(level)) {
		if (logged && (kind == FD_PENDING || why == ENOMEM))
			ulog(LOG_WARN_, "fd %d: option %d/%d not kept: %s", fd, level, optname,
			     strerror(why));
		if (logged && why == ENOMEM) { /* fail rather than lose it */
			errno = why;
			return -1;
		}
		return 0;
	}
	r = REAL(setsockopt)(fd, level, optname, val, len);
	if (r && kind == FD_PENDING) {
		/* a socket-level option only IP sockets take (SO_REUSEPORT, say) */
		why = errno;
		state_lock();
		e = fd_get(fd, 0);
		logged = e && e->kind == FD_PENDING ? log_option(fd, e, level, optname, val, len)
						     : -1;
		state_unlock();
		errno = logged == 0 ? saved : why;
		return logged == 0 ? 0 : r;
	}
	return r;
}

API int getsockopt(int fd, int level, int optname, void *val, socklen_t *len)
{
	const struct pending_opt *o = NULL;
	struct pending_opt set;
	struct fd_entry e;
	int answer;

	if (!fd_tracked(fd))
		return REAL(getsockopt)(fd, level, optname, val, len);
	fd_snapshot(fd, &e);
	if (e.kind != FD_CONVERTED && e.kind != FD_PENDING)
		return REAL(getsockopt)(fd, level, optname, val, len);
	if (level == SOL_SOCKET && (optname == SO_DOMAIN || optname == SO_PROTOCOL ||
				    (optname == SO_ACCEPTCONN && e.paused))) {
		answer = optname == SO_DOMAIN ? e.family : optname == SO_ACCEPTCONN ? 0
			 : e.type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP;
	} else if (level == SOL_SOCKET && optname == SO_PASSCRED && e.auth & AUTH_CHECK) {
		answer = !!(e.auth & AUTH_WANTED); /* not ours, which is always on */
	} else if (level == SOL_SOCKET && receive_sockopt(&e, optname, &answer)) {
		/* a receiver answers as the TCP listener it stands for */
	} else if (fd_option(fd, &e, level, optname, &set) == 0) {
		o = &set;
	} else if (e.kind == FD_PENDING && level == SOL_SOCKET &&
		   (optname == SO_SNDBUF || optname == SO_RCVBUF)) {
		/* a Unix socket's buffers are not an IP one's: ask the IP socket it stands
		 * for, which it may well stay (failing that, the socket there answers) */
		int saved = errno;

		if (materialize(fd))
			errno = saved;
		return REAL(getsockopt)(fd, level, optname, val, len);
	} else if (!ip_level(level)) {
		return REAL(getsockopt)(fd, level, optname, val, len);
	}
	/* as the kernel checks: the length first (read as an int), then the buffer */
	if (!len || (int)*len < 0 || (!val && *len)) {
		errno = len && (int)*len < 0 ? EINVAL : EFAULT;
		return -1;
	}
	if (!o && level != SOL_SOCKET) /* never set: as a real socket answers */
		return sockopt_answer(&e, level, optname, val, len);
	if (o) /* what the program set */
		sockopt_copy_out(level, o->value, o->len, val, len);
	else
		sockopt_copy_out(level, &answer, sizeof(answer), val, len);
	return 0;
}

/* A sendto() with MSG_FASTOPEN connects an unconnected TCP socket. */
static int fastopen_connect(int fd, const struct fd_entry *e, const struct sockaddr *sa,
			    socklen_t salen, int *handled)
{
	struct ipaddr a;

	*handled = 0;
	if ((e->kind != FD_IP && e->kind != FD_PENDING) || e->type != SOCK_STREAM ||
	    ipaddr_from_sockaddr(&a, sa, salen) ||
	    a.sa.sa_family != e->family)
		return 0;
	return convert_connect(fd, &a, e, handled);
}

/* Anything that needs a decision is sendmsg()'s: one message with the same address. */
API ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa,
		   socklen_t salen)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = n };
	struct msghdr msg = { .msg_name = (void *)sa, .msg_namelen = salen,
			      .msg_iov = &iov, .msg_iovlen = 1 };

	rules_need();
	if (!sa || (!tracked_for_send(fd, sa, salen) &&
		    !(rules_use_unix && salen >= sizeof(sa_family_t) && sa->sa_family == AF_UNIX)))
		return REAL(sendto)(fd, buf, n, flags, sa, salen);
	return sendmsg(fd, &msg, flags);
}

API ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct msghdr copy;
	struct fd_entry e;
	int handled;

	rules_need();
	if (msg && msg->msg_controllen && passfd_sending(msg))
		return -1;
	if (msg && msg->msg_name && msg->msg_namelen >= sizeof(sa_family_t) && rules_use_unix &&
	    ((struct sockaddr *)msg->msg_name)->sa_family == AF_UNIX)
		return redirect_sendmsg(fd, msg, flags);
	if (!msg || !msg->msg_name || !tracked_for_send(fd, msg->msg_name, msg->msg_namelen))
		return REAL(sendmsg)(fd, msg, flags);
	fd_snapshot(fd, &e);
	if (claim_refuses(&e, DIR_IN)) /* sending would bind it to an IP port */
		return -1;
	if (e.type == SOCK_DGRAM && (e.kind == FD_IP || e.kind == FD_CONVERTED))
		return dgram_sendmsg(fd, &e, msg, flags);
	copy = *msg;
	copy.msg_name = NULL;
	copy.msg_namelen = 0;
	if (e.kind == FD_CONVERTED && e.type == SOCK_STREAM)
		return REAL(sendmsg)(fd, &copy, flags);
	if (flags & MSG_FASTOPEN) {
		if (fastopen_connect(fd, &e, msg->msg_name, msg->msg_namelen, &handled) < 0 &&
		    handled) {
			claim_mark(fd, &e, DIR_OUT, errno);
			return -1;
		}
		if (handled)
			return REAL(sendmsg)(fd, &copy, flags & ~MSG_FASTOPEN);
	}
	return REAL(sendmsg)(fd, msg, flags);
}

/* A receiver shut down must fail accept() as a TCP listener would, not read on. */
API int shutdown(int fd, int how)
{
	struct fd_entry e;

	if (fd_tracked(fd)) {
		fd_snapshot(fd, &e);
		if (is_receiver(&e))
			receive_role(fd, ROLE_RECEIVER_SHUT);
	}
	return REAL(shutdown)(fd, how);
}

API int close(int fd)
{
	struct fd_entry gone;
	int r, saved;

	if (!fd_tracked(fd))
		return REAL(close)(fd);
	if (systemd_hidden(fd))
		return 0; /* kept for a 'systemd' rule; the program never knew of it */
	fd_take(fd, &gone);
	r = REAL(close)(fd);
	saved = errno;
	if (gone.sockfile >= 0)
		release_closed(gone.sockfile);
	errno = saved;
	return r;
}

/* The files of sockets close_range() closed; a list that could not grow is one line. */
static void release_all(struct growbuf *sockfiles)
{
	int saved = errno;
	const int32_t *idx = (const int32_t *)sockfiles->data;

	for (size_t i = 0; i < sockfiles->len / sizeof(*idx); i++)
		release_closed(idx[i]);
	if (sockfiles->failed)
		ulog(LOG_WARN_, "out of memory in close_range(); some socket files stay");
	growbuf_free(sockfiles);
	errno = saved;
}

static int real_close_range(unsigned first, unsigned last, int flags)
{
	return real.close_range ? real.close_range(first, last, flags)
				: (int)syscall(SYS_close_range, first, last, flags);
}

API int close_range(unsigned int first, unsigned int last, int flags)
{
	struct growbuf sockfiles = { 0 };
	int r;

	if (!(flags & CLOSE_RANGE_CLOEXEC))
		fd_take_range(first, last, &sockfiles);
	r = systemd_close_range(first, last, flags, real_close_range);
	release_all(&sockfiles);
	return r;
}

API void closefrom(int lowfd)
{
	if (lowfd >= 0)
		close_range((unsigned)lowfd, ~0u, 0);
}

/* The new fd is another name for the same socket: same addresses, same file, same
 * options; epoll registrations belong to the fd number. */
static void copy_entry(int from, int to)
{
	struct fd_entry *src, *dst;
	int lost = 0;

	state_lock();
	src = fd_get(from, 0);
	if (src && src->kind != FD_NONE && (dst = fd_get(to, 1))) {
		*dst = *src;
		dst->n_epoll = 0;
		lost = fd_record_copy_opts(from, src, to, dst);
	}
	state_unlock();
	if (lost)
		ulog(LOG_WARN_, "fd %d: out of memory; options of fd %d not all copied", to, from);
}

/*
 * A pending socket's copy would stay the Unix socket when the original becomes the IP
 * one: it becomes the IP socket before it gets another name.  -1 when it cannot.
 */
static int settle_for_copy(int fd)
{
	struct fd_entry e;

	fd_snapshot(fd, &e);
	return e.kind == FD_PENDING ? materialize(fd) : 0;
}

API int dup(int fd)
{
	int n;

	if (fd_tracked(fd) && settle_for_copy(fd))
		return -1;
	n = REAL(dup)(fd);

	if (n >= 0 && fd_tracked(fd))
		copy_entry(fd, n);
	return n;
}

static int dup_onto(int old, int new, int flags, int is3)
{
	struct fd_entry gone;
	int r, saved;

	if (old == new || (!fd_tracked(old) && !fd_tracked(new)))
		return is3 ? REAL(dup3)(old, new, flags) : REAL(dup2)(old, new);
	if (fd_tracked(old) && settle_for_copy(old))
		return -1;
	systemd_evict(new);
	fd_take(new, &gone);
	r = is3 ? REAL(dup3)(old, new, flags) : REAL(dup2)(old, new);
	saved = errno;
	if (r >= 0) {
		copy_entry(old, new);
		if (gone.sockfile >= 0)
			release_closed(gone.sockfile);
	} else if (gone.kind != FD_NONE) {
		fd_store(new, &gone); /* new was not touched */
	}
	errno = saved;
	return r;
}

API int dup2(int old, int new)
{
	return dup_onto(old, new, 0, 0);
}

API int dup3(int old, int new, int flags)
{
	return dup_onto(old, new, flags, 1);
}

/* fcntl's third argument is an int or a pointer; passing it on as a pointer is what
 * libc itself does on every ABI we build for. */
API int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;
	int r;

	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && fd_tracked(fd) && settle_for_copy(fd))
		return -1;
	r = REAL(fcntl)(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && fd_tracked(fd))
		copy_entry(fd, r);
	return r;
}

/* The same function under the name large-file builds call. */
API int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

/* Remember where unconverted IP sockets are registered, to register the Unix socket
 * that replaces them in the same places.  -1 with errno when it cannot be kept. */
static int record_epoll(int epfd, int op, int fd, const struct epoll_event *ev)
{
	struct epoll_reg reg = { .epfd = epfd };
	struct fd_entry *e;
	int r = 0;

	state_lock();
	e = fd_get(fd, 0);
	/* a converted listener may still be replaced (a client that bound first, a resume
	 * after a pause), and a receiver gets a new socket when its dispatcher restarts */
	if (e && (e->kind == FD_IP || e->kind == FD_PENDING || is_receiver(e) ||
		  (e->role == ROLE_LISTENER && e->type == SOCK_STREAM))) {
		if (op == EPOLL_CTL_DEL) {
			fd_record_del(fd, e, REC_EPOLL, &reg);
		} else {
			reg.ev = *ev;
			r = fd_record_put(fd, e, REC_EPOLL, &reg);
		}
	}
	state_unlock();
	return r;
}

API int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	int r = REAL(epoll_ctl)(epfd, op, fd, ev), saved;

	if (r || !fd_tracked(fd) || (!ev && op != EPOLL_CTL_DEL) ||
	    record_epoll(epfd, op, fd, ev) == 0)
		return r;
	/* a conversion would lose this registration: refuse it instead */
	saved = errno;
	ulog(LOG_WARN_, "fd %d: epoll registration not kept: %s", fd, strerror(saved));
	if (op == EPOLL_CTL_ADD)
		REAL(epoll_ctl)(epfd, EPOLL_CTL_DEL, fd, NULL);
	errno = saved;
	return -1;
}
