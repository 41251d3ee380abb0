/*
 * Programs that use Unix sockets already: from-unix and from-abstract rules.
 *
 * A program that hard-codes /run/foo.sock can be sent to another path or abstract name,
 * refused, blackholed, or given a passed socket.  The socket stays the program's own
 * Unix socket; only the address of its bind(), connect() or sendto() changes, so
 * nothing is replaced and nothing needs translating afterwards.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

#define NAME_MAX_ (sizeof(((struct sockaddr_un *)0)->sun_path))

struct unix_query {
	struct sock_query q;
	char name[NAME_MAX_ + 1];
	char absolute[2 * NAME_MAX_ + 2];
};

/* Fill u from a Unix address; -1 when there is nothing to match (not AF_UNIX, or an
 * unnamed / autobind address). */
static int read_query(int fd, int dir, const struct sockaddr *sa, socklen_t len,
		      struct unix_query *u)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
	size_t off = offsetof(struct sockaddr_un, sun_path), n;
	socklen_t tlen = sizeof(int);
	int saved = errno;

	if (!sa || len <= off + 1 || sa->sa_family != AF_UNIX)
		return -1;
	n = len - off > NAME_MAX_ ? NAME_MAX_ : len - off;
	memset(&u->q, 0, sizeof(u->q));
	u->q.dir = dir;
	u->q.abstract = sun->sun_path[0] == 0;
	if (u->q.abstract) {
		memcpy(u->name, sun->sun_path + 1, n - 1);
		u->name[n - 1] = 0;
	} else {
		n = strnlen(sun->sun_path, n);
		memcpy(u->name, sun->sun_path, n);
		u->name[n] = 0;
	}
	u->q.unix_name = u->name;
	/* patterns name absolute paths; a relative one is relative to our directory */
	if (!u->q.abstract && u->name[0] != '/' && getcwd(u->absolute, NAME_MAX_) &&
	    strlen(u->absolute) + 1 + n < sizeof(u->absolute)) {
		strcat(u->absolute, "/");
		strcat(u->absolute, u->name);
		u->q.unix_name = u->absolute;
	}
	if (REAL(getsockopt)(fd, SOL_SOCKET, SO_TYPE, &u->q.type, &tlen))
		u->q.type = 0;
	errno = saved;
	return 0;
}

/* 1: leave the call alone; 0: sun/len hold the new address (r set); -1: fail. */
static int redirect(int fd, int dir, const struct sockaddr *sa, socklen_t len,
		    const struct rule **r, char *target, struct sockaddr_un *sun, socklen_t *sunlen)
{
	struct unix_query u;
	int d, n;

	if (read_query(fd, dir, sa, len, &u))
		return 1;
	d = rule_decide(fd, &u.q, r, target, NAME_MAX_);
	if (d || (*r)->action == ACT_BLACKHOLE || (*r)->action == ACT_SYSTEMD)
		return d;
	n = unix_addr_fill(sun, *r, target);
	if (n < 0)
		return -1;
	*sunlen = (socklen_t)n;
	return 0;
}

int redirect_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	char target[NAME_MAX_];
	const struct rule *r = NULL;
	struct sockaddr_un sun;
	struct fd_entry e;
	socklen_t sunlen;
	int d = redirect(fd, DIR_IN, sa, len, &r, target, &sun, &sunlen), idx;

	if (d > 0)
		return REAL(bind)(fd, sa, len);
	if (d < 0)
		return -1;
	switch (r->action) {
	case ACT_BLACKHOLE:
		return sockfile_blackhole(fd);
	case ACT_SYSTEMD:
		fd_entry_init(&e);
		e.type = (uint8_t)SOCK_STREAM;
		if (REAL(getsockopt)(fd, SOL_SOCKET, SO_TYPE, &d, &(socklen_t){ sizeof(int) }) == 0)
			e.type = (uint8_t)d;
		return convert_passed(fd, NULL, &e, r);
	case ACT_ABSTRACT:
		return REAL(bind)(fd, (struct sockaddr *)&sun, sunlen);
	}
	/* a path: made and removed like any socket file of ours */
	idx = sockfile_bind(fd, target, r);
	if (idx == -2)
		return -1;
	fd_entry_init(&e);
	e.kind = FD_REDIRECTED;
	e.sockfile = idx;
	fd_store(fd, &e);
	ulog(LOG_INFO_, "fd %d: bound at %s instead", fd, target);
	return 0;
}

int redirect_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	char target[NAME_MAX_];
	const struct rule *r = NULL;
	struct sockaddr_un sun;
	socklen_t sunlen;
	int d = redirect(fd, DIR_OUT, sa, len, &r, target, &sun, &sunlen);

	if (d > 0)
		return REAL(connect)(fd, sa, len);
	return d < 0 ? -1 : REAL(connect)(fd, (struct sockaddr *)&sun, sunlen);
}

ssize_t redirect_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	char target[NAME_MAX_];
	const struct rule *r = NULL;
	struct sockaddr_un sun;
	struct msghdr copy;
	socklen_t sunlen;
	int d = redirect(fd, DIR_OUT, msg->msg_name, msg->msg_namelen, &r, target, &sun, &sunlen);

	if (d > 0)
		return REAL(sendmsg)(fd, msg, flags);
	if (d < 0)
		return -1;
	copy = *msg;
	copy.msg_name = &sun;
	copy.msg_namelen = sunlen;
	return REAL(sendmsg)(fd, &copy, flags);
}
