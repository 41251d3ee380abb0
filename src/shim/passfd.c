/*
 * Converted sockets passed between processes over SCM_RIGHTS.
 *
 * A server's new generation takes its listeners over from the old one (HAProxy's -x,
 * its master-worker reloads), and a primary hands accepted connections to its workers
 * (Node's cluster): the socket arrives as the Unix socket it is, and the receiver must
 * see the IP socket it stands for.  The sender is not asked -- it may be anybody who
 * can talk to the program -- so the receiver believes only what it can check: the name
 * the kernel gives the socket (its own for a listener and an accepted connection, its
 * peer's for a client) must be one a rule gives some IP address, read back from the
 * name and expanded forward again (rules_invert), and a listener or accepted connection
 * must be bound to, or accepted from, the very socket file now at that path (sock_diag,
 * by inode).  Anything else -- an IP socket, a plain Unix socket, a listener on an
 * abstract name nothing ties to us -- is left as it is.
 *
 * A socket still pending (socket() made the Unix socket a connect was expected to use)
 * has no name yet to tell it by, so it becomes the IP socket it stands for before it
 * is sent.
 *
 * A received listener takes on the socket file's removal when the file is ours: the
 * sender may exit first.  Removal stays safe with several holders, as after fork: the
 * file goes once nobody anywhere holds its socket, and only while the path still names
 * it.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"

#define NAME_MAX_ (sizeof(((struct sockaddr_un *)0)->sun_path))

/* The name in sun (len bytes) as a string: 1 a path, 2 an abstract name, 0 none (or one
 * with a NUL inside, which no rule gives). */
static int unix_name_of(const struct sockaddr_un *sun, socklen_t len, char *out)
{
	size_t off = offsetof(struct sockaddr_un, sun_path), n;

	if (len <= off + 1 || sun->sun_family != AF_UNIX)
		return 0;
	n = len - off > NAME_MAX_ ? NAME_MAX_ : len - off;
	if (sun->sun_path[0]) {
		n = strnlen(sun->sun_path, n);
		memcpy(out, sun->sun_path, n);
		out[n] = 0;
		return 1;
	}
	if (memchr(sun->sun_path + 1, 0, n - 1))
		return 0;
	memcpy(out, sun->sun_path + 1, n - 1);
	out[n - 1] = 0;
	return 2;
}

/* A listener (role ROLE_LISTENER) or connection accepted from one, whose own name is
 * the path: 0 with e filled when the rules and the file vouch for it. */
static int take_inbound(const char *path, const struct stat *sock, int role,
			struct fd_entry *e)
{
	struct fd_entry listener;
	struct stat file;
	int idx;

	fd_entry_init(&listener);
	idx = rules_invert(DIR_IN, SOCK_STREAM, path, 0, &listener.local);
	if (idx < 0 || lstat(path, &file) || !S_ISSOCK(file.st_mode) ||
	    !socket_of_file(sock->st_ino, &file))
		return -1;
	listener.kind = FD_CONVERTED;
	listener.family = (uint8_t)listener.local.sa.sa_family;
	listener.type = SOCK_STREAM;
	listener.role = ROLE_LISTENER;
	if (role == ROLE_ACCEPTED) {
		accepted_entry(e, &listener);
		return 0;
	}
	*e = listener;
	e->sockfile = sockfile_by_socket(sock->st_ino);
	if (e->sockfile < 0 && file.st_uid == geteuid())
		e->sockfile = sockfile_adopt(path, file.st_dev, file.st_ino, sock->st_ino,
					     rule_at(idx)->noremove);
	listener_note(&e->local);
	fake_port_share(); /* for the workers it may fork */
	return 0;
}

/* A client, whose peer has the name: 0 with e filled when a rule sends some IP address
 * there.  A connection to that name is what connecting to the address would have made. */
static int take_client(const char *name, int abstract, struct fd_entry *e)
{
	fd_entry_init(e);
	if (rules_invert(DIR_OUT, SOCK_STREAM, name, abstract, &e->peer) < 0)
		return -1;
	e->kind = FD_CONVERTED;
	e->family = (uint8_t)e->peer.sa.sa_family;
	e->type = SOCK_STREAM;
	e->role = ROLE_CLIENT;
	client_local(&e->local, e->family, &e->peer);
	return 0;
}

static void identify(int fd)
{
	char name[NAME_MAX_ + 1];
	struct sockaddr_un sun;
	socklen_t len = sizeof(sun);
	struct fd_entry e;
	struct stat sock;
	int kind, r = -1;

	if (fd_tracked(fd)) {
		/* the kernel just gave out this number: what we knew of it is stale (closed
		 * where we could not see, as libuv does with syscall(SYS_close)) */
		fd_take(fd, &e);
		if (e.sockfile >= 0)
			sockfile_release(e.sockfile);
	}
	if (sockopt_value(fd, SO_DOMAIN) != AF_UNIX ||
	    sockopt_value(fd, SO_TYPE) != SOCK_STREAM || fstat(fd, &sock))
		return;
	if (REAL(getsockname)(fd, (struct sockaddr *)&sun, &len))
		return;
	kind = unix_name_of(&sun, len, name);
	if (kind == 1) {
		/* named itself: a listener (listening yet or not), or accepted from one */
		len = sizeof(sun);
		r = take_inbound(name, &sock,
				 sockopt_value(fd, SO_ACCEPTCONN) != 1 &&
				 !REAL(getpeername)(fd, (struct sockaddr *)&sun, &len)
					 ? ROLE_ACCEPTED : ROLE_LISTENER, &e);
	} else if (kind == 0) {
		len = sizeof(sun);
		if (!REAL(getpeername)(fd, (struct sockaddr *)&sun, &len) &&
		    (kind = unix_name_of(&sun, len, name)) != 0)
			r = take_client(name, kind == 2, &e);
	}
	if (r)
		return;
	fd_store(fd, &e);
	ulog(LOG_DEBUG_, "fd %d: received as a converted socket", fd);
}

/* fn for each fd msg passes (SCM_RIGHTS), until it returns non-zero: that, or 0. */
static int each_passed_fd(const struct msghdr *msg, int (*fn)(int fd))
{
	int r;

	if (!msg || !msg->msg_control || msg->msg_controllen < sizeof(struct cmsghdr))
		return 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR((struct msghdr *)msg, c)) {
		size_t n;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
			r = fn(fd);
			if (r)
				return r;
		}
	}
	return 0;
}

/* A received fd, looked at once the rules are known; 1 stops: no rules to go by. */
static int received_fd(int fd)
{
	rules_need();
	if (rules_state != RULES_OK)
		return 1;
	identify(fd);
	return 0;
}

void passfd_received(struct msghdr *msg)
{
	int saved = errno;

	each_passed_fd(msg, received_fd);
	errno = saved;
}

/* A pending fd about to be sent: 0, or -1 when it cannot become its IP socket. */
static int sending_fd(int fd)
{
	struct fd_entry e;

	if (!fd_tracked(fd))
		return 0;
	fd_snapshot(fd, &e);
	return e.kind == FD_PENDING && materialize(fd) ? -1 : 0;
}

/* The fds msg passes (SCM_RIGHTS) that are still pending become their IP sockets: -1
 * with errno when one cannot (the send fails then, rather than pass a Unix socket the
 * receiver would take for an IP one). */
int passfd_sending(const struct msghdr *msg)
{
	return each_passed_fd(msg, sending_fd);
}
