/*
 * The life of socket files we create.
 *
 * A file is created at bind.  A stale file (a socket file nobody listens on) is
 * replaced; a live one is never taken over.  The file is removed when the last holder
 * of the socket anywhere -- this process, a forked child, a process it was passed to --
 * has closed it, and only if the path still names the file we created.  The kernel's
 * unix sock_diag answers both questions: which socket is bound to a file (by the file's
 * inode) and whether a socket still exists (by its own inode).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "shim.h"

/* The records, in memory from mmap that grows by doubling; only touched with the lock
 * held, so growing may move them.  Indexes stay valid: records are never moved among
 * themselves. */
static struct sockfile *sockfiles;
static int n_sockfiles;
static size_t sockfiles_size;

/* ---- sock_diag ---- */

struct diag_query {
	uint32_t sock_ino;   /* exact lookup by socket inode, or 0 */
	uint32_t vfs_ino;    /* else: find a socket bound to this file; */
	uint32_t vfs_dev;    /* with want_vfs, the exact lookup's file found */
	int want_vfs;
};

static int diag_open_and_send(const struct diag_query *q)
{
	struct {
		struct nlmsghdr nlh;
		struct unix_diag_req req;
	} msg;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	int nl = REAL(socket)(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);

	if (nl < 0)
		return -1;
	memset(&msg, 0, sizeof(msg));
	msg.nlh.nlmsg_len = sizeof(msg);
	msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	msg.nlh.nlmsg_flags = NLM_F_REQUEST | (q->sock_ino ? 0 : NLM_F_DUMP);
	msg.req.sdiag_family = AF_UNIX;
	msg.req.udiag_states = ~0u;
	msg.req.udiag_ino = q->sock_ino;
	msg.req.udiag_show = q->sock_ino && !q->want_vfs ? 0 : UDIAG_SHOW_VFS;
	msg.req.udiag_cookie[0] = msg.req.udiag_cookie[1] = ~0u; /* no cookie check */
	if (REAL(sendto)(nl, &msg, sizeof(msg), 0, (struct sockaddr *)&kernel,
			 sizeof(kernel)) < 0) {
		REAL(close)(nl);
		return -1;
	}
	return nl;
}

/* The file of the socket in h, in q's vfs fields: 1, or 0 when it has none. */
static int vfs_of(const struct nlmsghdr *h, struct diag_query *q)
{
	const struct unix_diag_msg *m = NLMSG_DATA(h);
	int len = (int)h->nlmsg_len - NLMSG_LENGTH(sizeof(*m));
	const struct nlattr *a = (const struct nlattr *)(m + 1);

	while (len >= (int)sizeof(*a) && a->nla_len >= sizeof(*a) && a->nla_len <= len) {
		if ((a->nla_type & NLA_TYPE_MASK) == UNIX_DIAG_VFS &&
		    a->nla_len >= NLA_HDRLEN + sizeof(struct unix_diag_vfs)) {
			const struct unix_diag_vfs *v = (const void *)((const char *)a + NLA_HDRLEN);

			q->vfs_ino = v->udiag_vfs_ino;
			q->vfs_dev = v->udiag_vfs_dev;
			return 1;
		}
		len -= NLA_ALIGN(a->nla_len);
		a = (const struct nlattr *)((const char *)a + NLA_ALIGN(a->nla_len));
	}
	return 0;
}

static int vfs_matches(const struct nlmsghdr *h, const struct diag_query *q)
{
	struct diag_query found = *q;

	return vfs_of(h, &found) && found.vfs_ino == q->vfs_ino && found.vfs_dev == q->vfs_dev;
}

/* 1: found, 0: not found, -1: sock_diag unavailable. */
static int diag_find(struct diag_query *q)
{
	char buf[16384] __attribute__((aligned(8)));
	int nl = diag_open_and_send(q);
	int found = 0, done = 0;

	if (nl < 0)
		return -1;
	while (!done) {
		ssize_t n = recv(nl, buf, sizeof(buf), 0);
		struct nlmsghdr *h = (struct nlmsghdr *)buf;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			found = -1;
			break;
		}
		for (; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE) {
				done = 1;
				break;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *err = NLMSG_DATA(h);

				found = err->error == -ENOENT ? found : -1;
				done = 1;
				break;
			}
			if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY)
				continue;
			if (q->want_vfs)
				found = vfs_of(h, q);
			else if (q->sock_ino || vfs_matches(h, q))
				found = 1;
			if (q->sock_ino)
				done = 1; /* an exact lookup answers with one message */
		}
		if (n == 0)
			break;
	}
	REAL(close)(nl);
	return found;
}

int unix_socket_alive(ino_t sock_ino)
{
	struct diag_query q = { .sock_ino = (uint32_t)sock_ino };
	int saved = errno, r = diag_find(&q);

	errno = saved;
	return r;
}

int unix_socket_file(ino_t sock_ino, dev_t *dev, ino_t *ino)
{
	struct diag_query q = { .sock_ino = (uint32_t)sock_ino, .want_vfs = 1 };
	int saved = errno, r = diag_find(&q);

	errno = saved;
	if (r <= 0)
		return 0;
	*dev = makedev(q.vfs_dev >> 20, q.vfs_dev & 0xfffff); /* the kernel's own dev_t */
	*ino = q.vfs_ino;
	return 1;
}

/* Is a socket bound to the file at path?  1 yes, 0 no (stale). */
int socket_file_live(const char *path, const struct stat *st)
{
	/* sock_diag reports the kernel's internal dev_t: major << 20 | minor */
	struct diag_query q = {
		.vfs_ino = (uint32_t)st->st_ino,
		.vfs_dev = (uint32_t)(major(st->st_dev) << 20 | minor(st->st_dev)),
	};
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int types[] = { SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET }, probe, r;

	if (diag_find(&q) > 0)
		return 1;
	/* Not found, or no sock_diag (restricted sandbox).  sock_diag sees only this network
	 * namespace, and a process in another one may be bound to the file: ask the file
	 * itself.  A refused connection of every socket type means nobody is bound there;
	 * a found socket was never probed, so a listener gets no stray connection. */
	strncpy(sun.sun_path, path, sizeof(sun.sun_path) - 1);
	for (unsigned i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		probe = REAL(socket)(AF_UNIX, types[i] | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (probe < 0)
			return 1;
		r = REAL(connect)(probe, (struct sockaddr *)&sun, sizeof(sun));
		REAL(close)(probe);
		if (r == 0 || (errno != ECONNREFUSED && errno != EPROTOTYPE))
			return 1;
	}
	return 0;
}

/* ---- the table of files we created ---- */

/* With the lock held: room for one more record; its index, or -1. */
static int sockfiles_grow(void)
{
	size_t size;
	struct sockfile *p;

	if ((size_t)(n_sockfiles + 1) * sizeof(*sockfiles) > sockfiles_size) {
		p = map_resize(sockfiles, sockfiles_size,
			       sockfiles_size ? 2 * sockfiles_size : 64 * sizeof(*sockfiles), &size);
		if (!p)
			return -1;
		sockfiles = p;
		sockfiles_size = size;
	}
	return n_sockfiles++;
}

/* Note that we made the file (st its lstat) for the socket with inode sock_ino. */
static int record_file(const char *path, const struct stat *file, ino_t sock_ino,
		       int noremove)
{
	int idx = -1;

	state_lock();
	for (int i = 0; i < n_sockfiles; i++) {
		/* an older record for this path names a file that is gone now */
		if (sockfiles[i].used && !strcmp(sockfiles[i].path, path))
			sockfiles[i].used = 0;
		if (!sockfiles[i].used && idx < 0)
			idx = i;
	}
	if (idx < 0)
		idx = sockfiles_grow();
	if (idx >= 0) {
		struct sockfile *f = &sockfiles[idx];

		strncpy(f->path, path, sizeof(f->path) - 1);
		f->path[sizeof(f->path) - 1] = 0;
		f->dev = file->st_dev;
		f->ino = file->st_ino;
		f->sock_ino = sock_ino;
		f->noremove = (uint8_t)noremove;
		f->used = 1;
	}
	state_unlock();
	if (idx < 0)
		ulog(LOG_WARN_, "out of memory for socket files; %s will not be removed on close",
		     path);
	return idx;
}

static int record(int sock, const char *path, int noremove)
{
	struct stat file, s;

	if (lstat(path, &file) || fstat(sock, &s))
		return -1;
	return record_file(path, &file, s.st_ino, noremove);
}

int sockfile_adopt(const char *path, dev_t dev, ino_t ino, ino_t sock_ino, int noremove)
{
	struct stat file;

	if (lstat(path, &file) || file.st_dev != dev || file.st_ino != ino)
		return -1; /* replaced or removed since: not ours to remove */
	return record_file(path, &file, sock_ino, noremove);
}

void sockfile_list(struct growbuf *out)
{
	state_lock();
	for (int i = 0; i < n_sockfiles; i++)
		if (sockfiles[i].used)
			growbuf_add(out, &sockfiles[i], sizeof(sockfiles[i]));
	state_unlock();
}

int sockfile_by_socket(ino_t sock_ino)
{
	int idx = -1;

	state_lock();
	for (int i = 0; i < n_sockfiles && idx < 0; i++)
		if (sockfiles[i].used && sockfiles[i].sock_ino == sock_ino)
			idx = i;
	state_unlock();
	return idx;
}

static void count_fd(int fd UNUSED, void *arg)
{
	++*(int *)arg;
}

/* A record outlives our own fds while another process (a forked child) still holds the
 * socket; only a socket this process still has open counts as bound by it. */
int sockfile_find(const char *path)
{
	int found = -1;

	state_lock();
	for (int i = 0; i < n_sockfiles && found < 0; i++) {
		int holders = 0;

		if (!sockfiles[i].used || strcmp(sockfiles[i].path, path))
			continue;
		fd_for_sockfile(i, count_fd, &holders);
		if (holders)
			found = i;
	}
	state_unlock();
	return found;
}

static int bind_path(int sock, const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t len = strlen(path);

	if (len >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun.sun_path, path, len + 1);
	return REAL(bind)(sock, (struct sockaddr *)&sun,
			  (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1));
}

/* A file in the way at path: 0 when it is a stale socket file we may replace, else -1
 * with errno EADDRINUSE and a log line. */
static int replaceable(const char *path)
{
	struct stat st;

	if (lstat(path, &st))
		return errno == ENOENT ? 0 : -1;
	if (!S_ISSOCK(st.st_mode)) {
		ulog(LOG_WARN_, "%s exists and is not a socket; not replacing it", path);
		errno = EADDRINUSE;
		return -1;
	}
	if (socket_file_live(path, &st)) {
		ulog(LOG_WARN_, "%s is in use by a live socket; not taking it over", path);
		errno = EADDRINUSE;
		return -1;
	}
	ulog(LOG_INFO_, "replacing stale socket file %s", path);
	return 0;
}

static int wants_permissions(const struct rule *r)
{
	return r && (r->mode >= 0 || r->uid != (uid_t)-1 || r->gid != (gid_t)-1);
}

/*
 * The file must not appear at path with other permissions than asked for, not even for
 * a moment: bind in a private directory beside it (mode 0700, same file system), set
 * mode and ownership there, then rename it into place.
 */
static int bind_private_then_rename(int sock, const char *path, const struct rule *r)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)], tmp[sizeof(dir) + 2];
	int parent = (int)(strrchr(path, '/') - path), saved;

	if (parent < 0 || (size_t)parent + sizeof("/.unixify-XXXXXX/s") > sizeof(tmp)) {
		ulog(LOG_ERR_, "%s: too long to create with mode/owner/group safely (a private "
		     "directory beside it must fit in a socket address too)", path);
		errno = ENAMETOOLONG;
		return -2;
	}
	snprintf(dir, sizeof(dir), "%.*s/.unixify-XXXXXX", parent, path);
	if (!mkdtemp(dir))
		return -2;
	snprintf(tmp, sizeof(tmp), "%s/s", dir); /* fits: checked above */
	if (bind_path(sock, tmp))
		goto fail;
	if (r->mode >= 0 && chmod(tmp, (mode_t)r->mode))
		goto fail;
	if ((r->uid != (uid_t)-1 || r->gid != (gid_t)-1) && lchown(tmp, r->uid, r->gid)) {
		saved = errno;
		ulog(LOG_ERR_, "cannot give %s to owner %d, group %d: %s", path,
		     r->uid == (uid_t)-1 ? -1 : (int)r->uid, r->gid == (gid_t)-1 ? -1 : (int)r->gid,
		     strerror(saved));
		errno = saved;
		goto fail;
	}
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE)) {
		if (errno != EEXIST || replaceable(path) || rename(tmp, path))
			goto fail;
	}
	rmdir(dir);
	return record(sock, path, r->noremove);
fail:
	saved = errno;
	unlink(tmp);
	rmdir(dir);
	errno = saved;
	return -2;
}

/* Returns the record index (or -1 if none could be kept) with the socket bound, or
 * -2 with errno set. */
int sockfile_bind(int sock, const char *path, const struct rule *r)
{
	if (wants_permissions(r))
		return bind_private_then_rename(sock, path, r);
	if (bind_path(sock, path) == 0)
		return record(sock, path, r && r->noremove);
	if (errno != EADDRINUSE || replaceable(path))
		return -2;
	if (unlink(path) && errno != ENOENT)
		return -2;
	if (bind_path(sock, path))
		return -2;
	return record(sock, path, r && r->noremove);
}

int sockfile_blackhole(int sock)
{
	const char *base = getenv("TMPDIR");
	char dir[80];
	char path[sizeof(dir) + 2];
	int r, saved;

	if (!base || base[0] != '/' || strlen(base) > 60)
		base = "/tmp";
	snprintf(dir, sizeof(dir), "%s/unixify-bh-XXXXXX", base);
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/s", dir);
	r = bind_path(sock, path);
	saved = errno;
	unlink(path);
	rmdir(dir);
	errno = saved;
	return r;
}

void sockfile_release(int idx)
{
	struct sockfile f;
	struct stat st;
	int alive;

	if (idx < 0)
		return;
	state_lock();
	f.used = idx < n_sockfiles && sockfiles[idx].used;
	if (f.used)
		f = sockfiles[idx];
	state_unlock();
	if (!f.used)
		return;
	alive = unix_socket_alive(f.sock_ino);
	if (alive != 0) {
		if (alive < 0)
			ulog(LOG_DEBUG_, "cannot tell whether %s is still in use; keeping it",
			     f.path);
		return;
	}
	state_lock();
	if (sockfiles[idx].sock_ino == f.sock_ino)
		sockfiles[idx].used = 0;
	state_unlock();
	if (f.noremove)
		return;
	if (lstat(f.path, &st) == 0 && st.st_dev == f.dev && st.st_ino == f.ino) {
		int saved = errno;

		if (unlink(f.path) == 0)
			ulog(LOG_INFO_, "removed socket file %s", f.path);
		errno = saved;
	}
}

static void collect_fd(int fd, void *arg)
{
	growbuf_add(arg, &fd, sizeof(fd));
}

/* Our fds on the socket of record i if it is ours to remove (1), else 0; i past the
 * end: -1. */
static int holders_to_close(int i, struct growbuf *fds)
{
	int ours;

	state_lock();
	ours = i < n_sockfiles ? sockfiles[i].used && !sockfiles[i].noremove : -1;
	if (ours > 0)
		fd_for_sockfile(i, collect_fd, fds);
	state_unlock();
	return ours;
}

/* At exit our own copies would keep the socket alive until the kernel closes them,
 * after we are gone.  Close them first, then see whether anybody else still holds it. */
void sockfile_exit_cleanup(void)
{
	for (int i = 0;; i++) {
		struct growbuf fds = { 0 };
		struct fd_entry gone;
		int ours = holders_to_close(i, &fds);

		if (ours < 0)
			break;
		if (!ours)
			continue;
		for (size_t j = 0; j < fds.len / sizeof(int); j++) {
			int fd = ((const int *)fds.data)[j];

			fd_take(fd, &gone);
			REAL(close)(fd);
		}
		growbuf_free(&fds);
		sockfile_release(i);
	}
}
