/*
 * Receivers (receive= rules): a server's TCP listener is replaced by a socket on which a
 * dispatcher passes it TCP connections it accepted (SCM_RIGHTS), so the server talks to
 * the kernel's TCP socket itself and sees the real client.
 *
 * Protocol A: a Unix datagram socket bound at a path; each connection is one message of
 * one byte with one fd.  Protocol B: a seqpacket connection to the dispatcher's control
 * socket, registered for a slot ("01 00 00 00" + slot, big-endian; answered
 * "80 00 00 00"); each connection is "03 00 00 00" with one fd.
 *
 * accept() hands out the passed sockets as they are: real TCP sockets, never recorded,
 * never translated.  Anything else that arrives is closed and skipped.  A protocol B
 * receiver whose dispatcher goes away registers again inside accept(); a non-blocking
 * one that cannot yet gets a timer in its place, which the program's poll sees readable
 * a second later, so it comes back to accept() without a thread of ours or a busy loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

#define MAX_FDS 8           /* fds one message may carry before it counts as malformed */
#define REGISTER_MS 5000    /* how long a registration waits for the dispatcher's answer */
#define RETRY_SECONDS 1     /* between attempts to register again */

static const uint8_t msg_accepted[4] = { 0x80, 0, 0, 0 };
static const uint8_t msg_connection[4] = { 3, 0, 0, 0 };

static int sockopt_int(int fd, int name)
{
	socklen_t len = sizeof(int);
	int v;

	return REAL(getsockopt)(fd, SOL_SOCKET, name, &v, &len) ? -1 : v;
}

/* At most one line a second, so a peer sending junk cannot flood the log. */
void skip_log(const char *fmt, int fd, const char *why)
{
	static _Atomic time_t last;
	struct timespec now;
	time_t prev;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	prev = __atomic_load_n(&last, __ATOMIC_RELAXED);
	if (now.tv_sec == prev ||
	    !__atomic_compare_exchange_n(&last, &prev, now.tv_sec, 0, __ATOMIC_RELAXED,
					 __ATOMIC_RELAXED))
		return;
	ulog(LOG_WARN_, fmt, fd, why);
}

/* Close what a sender passed and we do not keep, without waiting: a TCP socket set to
 * linger (SO_LINGER) with data it cannot send would hold accept() in close() for as
 * long as the sender chose.  Lingering off, the kernel finishes it in the background. */
static void close_all(const int *fds, int n)
{
	static const struct linger off = { 0 };
	int saved = errno;

	for (int i = 0; i < n; i++) {
		REAL(setsockopt)(fds[i], SOL_SOCKET, SO_LINGER, &off, sizeof(off));
		REAL(close)(fds[i]);
	}
	errno = saved;
}

/* One message: its first bytes in head (*n of them), its fds (close-on-exec) in fds,
 * their count returned; *cut when the kernel dropped some.  -1 with errno. */
static int receive_message(int fd, uint8_t *head, size_t size, ssize_t *n, int *fds, int *cut)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	} c;
	struct iovec iov = { .iov_base = head, .iov_len = size };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf,
			      .msg_controllen = sizeof(c.buf) };
	int count = 0;

	*n = REAL(recvmsg)(fd, &msg, MSG_CMSG_CLOEXEC);
	if (*n < 0)
		return -1;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (h->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			if (count < MAX_FDS)
				memcpy(&fds[count++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
		}
	}
	*cut = (msg.msg_flags & MSG_CTRUNC) != 0;
	return count;
}

/* fd is a connected TCP socket (not a listener, not another kind): 0 with its peer. */
static int tcp_connection(int fd, struct ipaddr *peer)
{
	socklen_t len = sizeof(*peer);
	int family = sockopt_int(fd, SO_DOMAIN);

	if ((family != AF_INET && family != AF_INET6) || sockopt_int(fd, SO_TYPE) != SOCK_STREAM ||
	    sockopt_int(fd, SO_PROTOCOL) != IPPROTO_TCP || sockopt_int(fd, SO_ACCEPTCONN) != 0)
		return -1;
	memset(peer, 0, sizeof(*peer));
	return REAL(getpeername)(fd, &peer->sa, &len);
}

/* The peer as a listener of family sees it: IPv4 as IPv4-mapped on an IPv6 listener,
 * IPv4-mapped as IPv4 on an IPv4 one.  -1 for IPv6 on an IPv4 listener. */
static int peer_as(struct ipaddr *peer, int family)
{
	struct ipaddr v4;

	if (peer->sa.sa_family == family)
		return 0;
	if (family == AF_INET6) {
		v4 = *peer;
		v4_mapped(peer, v4.in4.sin_addr, v4.in4.sin_port);
		return 0;
	}
	if (!IN6_IS_ADDR_V4MAPPED(&peer->in6.sin6_addr))
		return -1;
	ipaddr_any(&v4, AF_INET);
	v4.in4.sin_port = peer->in6.sin6_port;
	memcpy(&v4.in4.sin_addr, peer->in6.sin6_addr.s6_addr + 12, 4);
	*peer = v4;
	return 0;
}

/* Blocking mode and close-on-exec as accept4's flags say (plain accept: neither). */
static int hand_over(int conn, int flags)
{
	int status = REAL(fcntl)(conn, F_GETFL);

	if (status < 0)
		return -1;
	status = flags & SOCK_NONBLOCK ? status | O_NONBLOCK : status & ~O_NONBLOCK;
	if (REAL(fcntl)(conn, F_SETFL, status))
		return -1;
	return flags & SOCK_CLOEXEC ? 0 : REAL(fcntl)(conn, F_SETFD, 0);
}

/* Connect sock to the control socket at path and register slot: 0, or -1 with errno. */
static int register_slot(int sock, const char *path, uint32_t slot)
{
	uint8_t req[8] = { 1, 0, 0, 0, (uint8_t)(slot >> 24), (uint8_t)(slot >> 16),
			   (uint8_t)(slot >> 8), (uint8_t)slot };
	struct pollfd p = { .fd = sock, .events = POLLIN };
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	uint8_t reply[8];
	ssize_t n;
	int r;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sun.sun_path, path);
	if (REAL(connect)(sock, (struct sockaddr *)&sun, sizeof(sun)) ||
	    REAL(sendto)(sock, req, sizeof(req), MSG_NOSIGNAL, NULL, 0) != sizeof(req))
		return -1;
	for (int i = 0; (r = poll(&p, 1, REGISTER_MS)) < 0 && errno == EINTR && i < 100; i++)
		;
	if (r <= 0) {
		errno = r == 0 ? ETIMEDOUT : errno;
		return -1;
	}
	n = REAL(recvfrom)(sock, reply, sizeof(reply), MSG_DONTWAIT, NULL, NULL);
	if (n == sizeof(msg_accepted) && !memcmp(reply, msg_accepted, sizeof(msg_accepted)))
		return 0;
	errno = n < 0 ? errno : n == 0 ? ECONNRESET : EACCES; /* refused */
	return -1;
}

int receive_setup(int sock, const char *path, const struct rule *r)
{
	int idx;

	if (!r->n_numbers) {
		idx = sockfile_bind(sock, path, r);
		if (idx != -2)
			ulog(LOG_INFO_, "receiving connections at %s", path);
		return idx;
	}
	if (register_slot(sock, path, r->numbers[0])) {
		ulog(LOG_ERR_, "cannot register slot %u at %s: %s", r->numbers[0], path,
		     strerror(errno));
		return -2;
	}
	ulog(LOG_INFO_, "receiving connections for slot %u from %s", r->numbers[0], path);
	return -1;
}

int receive_role(int fd, int role)
{
	struct fd_entry *e;

	state_lock(); /* this fd's entry only */
	e = fd_get(fd, 0);
	if (e && is_receiver(e))
		e->role = (uint8_t)role;
	state_unlock();
	return 0;
}

/* Did the program shut the receiver down?  Then accept() fails with EINVAL, as on a
 * TCP listener (the shutdown woke threads blocked on it with an empty read). */
static int shut_down(int fd)
{
	struct fd_entry e;

	fd_snapshot(fd, &e);
	if (e.role != ROLE_RECEIVER_SHUT)
		return 0;
	errno = EINVAL;
	return 1;
}

int receive_sockopt(const struct fd_entry *e, int name, int *answer)
{
	if (!is_receiver(e) || (name != SO_TYPE && name != SO_ACCEPTCONN))
		return 0;
	*answer = name == SO_TYPE ? SOCK_STREAM : e->role == ROLE_RECEIVING;
	return 1;
}

/* A timer in fd's place that the program's poll sees readable in RETRY_SECONDS: its
 * next accept() tries to register again.  EAGAIN for the accept() now. */
static int wait_in_place(int fd)
{
	struct itimerspec when = { .it_value = { .tv_sec = RETRY_SECONDS } };
	int t = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);

	if (t >= 0 && (timerfd_settime(t, 0, &when, NULL) || replace_socket(fd, t)))
		t = -1;
	errno = t < 0 ? errno : EAGAIN;
	return -1;
}

/* Some receiver is waiting for its dispatcher and has said so: one line, not one a
 * second. */
static int waiting;

static ino_t inode_of(int fd)
{
	struct stat st;

	return fstat(fd, &st) ? 0 : st.st_ino;
}

/*
 * fd's dispatcher went away (lost: the inode of what fd was then): connect and register
 * again as the rule that made fd says, and put the new connection in fd's place.  A
 * blocking receiver waits for the dispatcher (as accept waits for clients; a signal ends
 * the wait with EINTR), unless another thread put something new in fd's place meanwhile;
 * a non-blocking one gets EAGAIN and a timer (wait_in_place).  0, or -1 with errno.
 */
static int rejoin(int fd, const struct fd_entry *l, ino_t lost)
{
	struct sock_query q = { .dir = DIR_IN, .type = SOCK_STREAM, .addr = &l->local };
	const struct timespec pause = { .tv_sec = RETRY_SECONDS };
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int idx = rules_match(&q), status, sock;
	const struct rule *r = idx >= 0 ? rule_at(idx) : NULL;

	if (!r || r->action != ACT_RECEIVE || !r->n_numbers ||
	    rule_expand(r, &q, path, sizeof(path))) {
		ulog(LOG_ERR_, "fd %d: its dispatcher is gone and no receive= rule says where "
		     "to register again", fd);
		errno = ECONNABORTED;
		return -1;
	}
	status = REAL(fcntl)(fd, F_GETFL);
	for (;;) {
		if (inode_of(fd) != lost)
			return 0; /* another thread of ours registered again */
		sock = REAL(socket)(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC |
				    (status & O_NONBLOCK ? SOCK_NONBLOCK : 0), 0);
		if (sock >= 0 && register_slot(sock, path, r->numbers[0]) == 0) {
			__atomic_store_n(&waiting, 0, __ATOMIC_RELAXED);
			ulog(LOG_WARN_, "fd %d: registered slot %u at %s again", fd,
			     r->numbers[0], path);
			return replace_socket(fd, sock);
		}
		if (!__atomic_exchange_n(&waiting, 1, __ATOMIC_RELAXED))
			ulog(LOG_WARN_, "fd %d: dispatcher at %s gone (%s); registering slot %u "
			     "again", fd, path, strerror(errno), r->numbers[0]);
		if (sock >= 0)
			REAL(close)(sock);
		if (status < 0 || status & O_NONBLOCK)
			return wait_in_place(fd);
		if (nanosleep(&pause, NULL))
			return -1; /* EINTR: the program's signal handler ran */
	}
}

/* The next passed TCP socket on receiver fd, with its peer; -1 with errno. */
static int next_connection(int fd, const struct fd_entry *l, struct ipaddr *peer)
{
	int slot = sockopt_int(fd, SO_TYPE) != SOCK_DGRAM, fds[MAX_FDS], n_fds, cut;
	uint8_t head[8];
	ssize_t n;

	for (;;) {
		ino_t seen = slot ? inode_of(fd) : 0; /* what a loss would be a loss of */

		n_fds = receive_message(fd, head, sizeof(head), &n, fds, &cut);
		if (n_fds == 0 && n == 0 && shut_down(fd))
			return -1;
		if (slot && ((n_fds < 0 && (errno == ECONNRESET || errno == ENOTCONN ||
					    errno == ENOTSOCK)) ||
			     (n_fds == 0 && n == 0))) {
			if (rejoin(fd, l, seen))
				return -1;
			continue;
		}
		if (n_fds < 0)
			return -1;
		if (n_fds == 1 && !cut &&
		    (!slot || (n == sizeof(msg_connection) &&
			       !memcmp(head, msg_connection, sizeof(msg_connection)))) &&
		    tcp_connection(fds[0], peer) == 0)
			return fds[0];
		skip_log("fd %d: %s passed to the receiver; closed", fd,
			 n_fds == 0 ? "a message without a socket" : n_fds > 1 || cut
			 ? "a message with more than one fd" : "something not a TCP connection");
		close_all(fds, n_fds);
	}
}

/* A number the kernel just gave us may still carry an entry of a socket the program
 * closed behind our back: the passed socket is not that one. */
static void forget_stale(int conn)
{
	struct fd_entry gone;

	if (!fd_tracked(conn))
		return;
	fd_take(conn, &gone);
	if (gone.sockfile >= 0)
		sockfile_release(gone.sockfile);
}

int receive_accept(int fd, const struct fd_entry *l, struct sockaddr *addr, socklen_t *len,
		   int flags)
{
	struct ipaddr peer;
	int conn, saved = errno;

	if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) {
		errno = EINVAL;
		return -1;
	}
	for (;;) {
		conn = next_connection(fd, l, &peer);
		if (conn < 0)
			return -1;
		if (peer_as(&peer, l->family) == 0)
			break;
		skip_log("fd %d: %s; closed", fd, "an IPv6 client cannot be reported to an IPv4 "
			 "listener");
		close_all(&conn, 1);
	}
	if (hand_over(conn, flags)) {
		close_all(&conn, 1);
		return -1;
	}
	forget_stale(conn);
	if (addr)
		copy_out_addr(&peer, ipaddr_len(&peer), addr, len);
	errno = saved;
	return conn;
}
