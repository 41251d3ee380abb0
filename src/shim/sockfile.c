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
#include <time.h>
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
	int nl;

	if (sandboxed()) /* its filter may kill us for the netlink socket */
		return -1;
	nl = REAL(socket)(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
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

int socket_of_file(unsigned long sock_ino, const struct stat *st)
{
	dev_t dev;
	ino_t ino;

	return unix_socket_file((ino_t)sock_ino, &dev, &ino) && dev == st->st_dev &&
	       ino == st->st_ino;
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
	int probe, r, saved = errno;

	if (diag_find(&q) > 0 || sandboxed()) /* no probe socket in a sandbox: keep it */
		return 1;
	/* Not found, or no sock_diag (restricted sandbox).  sock_diag sees only this network
	 * namespace, and a process in another one may be bound to the file: ask the file
	 * itself, with a datagram socket.  The kernel refuses it (ECONNREFUSED) only when no
	 * socket is bound there; a stream or seqpacket socket, listening or not yet, answers
	 * EPROTOTYPE, and a datagram socket is merely named as peer: no server ever sees a
	 * connection from this. */
	strncpy(sun.sun_path, path, sizeof(sun.sun_path) - 1);
	probe = REAL(socket)(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	r = probe < 0 || REAL(connect)(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0 ||
	    errno != ECONNREFUSED;
	if (probe >= 0)
		REAL(close)(probe);
	errno = saved;
	return r;
}

/* Is the socket file st the one sock is bound to?  By inode number only: on btrfs (and
 * some overlays) stat's device is not the superblock's that sock_diag reports.  Without
 * sock_diag any socket file will do (callers look in a directory only we can write). */
static int bound_here(int sock, const struct stat *st)
{
	struct stat s;
	struct diag_query q;

	if (!S_ISSOCK(st->st_mode) || fstat(sock, &s))
		return 0;
	q = (struct diag_query){ .sock_ino = (uint32_t)s.st_ino, .want_vfs = 1 };
	switch (diag_find(&q)) {
	case 1:
		return q.vfs_ino == (uint32_t)st->st_ino;
	case 0:
		return 0;
	default:
		return 1;
	}
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

	state_lock_masked();
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

/* Only the file our socket is bound to: the path may lead elsewhere by now.  Another
 * server that judged the path's old file stale may hold ours aside for a moment before
 * putting it back (remove_stale), so look a few times. */
static int record(int sock, const char *path, int noremove)
{
	const struct timespec pause = { .tv_nsec = 100000 };
	struct stat file, s;

	if (fstat(sock, &s))
		return -1;
	for (int i = 0; i < 20; i++) {
		if (!lstat(path, &file) && bound_here(sock, &file))
			return record_file(path, &file, s.st_ino, noremove);
		nanosleep(&pause, NULL);
	}
	ulog(LOG_WARN_, "%s is not the file just bound; it will not be removed", path);
	return -1;
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
	state_lock_masked();
	for (int i = 0; i < n_sockfiles; i++)
		if (sockfiles[i].used)
			growbuf_add(out, &sockfiles[i], sizeof(sockfiles[i]));
	state_unlock();
}

int sockfile_by_socket(ino_t sock_ino)
{
	int idx = -1;

	state_lock_masked();
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

	state_lock_masked();
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

int sockfile_path(int idx, char *out, size_t size)
{
	int r = -1;

	state_lock_masked();
	if (idx >= 0 && idx < n_sockfiles && sockfiles[idx].used &&
	    strlen(sockfiles[idx].path) < size) {
		strcpy(out, sockfiles[idx].path);
		r = 0;
	}
	state_unlock();
	return r;
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

/* path's directory, resolved once, for acting on its entry *base (an absolute path). */
static int open_parent(const char *path, const char **base)
{
	const char *slash = strrchr(path, '/');
	char parent[sizeof(((struct sockaddr_un *)0)->sun_path)];

	if (!slash) {
		errno = EINVAL;
		return -1;
	}
	*base = slash + 1;
	snprintf(parent, sizeof(parent), "%.*s", slash == path ? 1 : (int)(slash - path), path);
	return open(parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
}

static int lost(const char *path, const char *how)
{
	ulog(LOG_WARN_, "%s %s; not taking it over", path, how);
	errno = EADDRINUSE;
	return -1;
}

/* Is the file st at path another user's in a sticky directory (/tmp), where entries
 * belong to their owners?  Root could remove it, but it is not ours to take. */
static int others_in_sticky(const char *path, const struct stat *st)
{
	struct stat dir;
	const char *base;
	int fd, r, saved = errno;

	if (st->st_uid == geteuid())
		return 0;
	fd = open_parent(path, &base);
	r = fd < 0 || fstat(fd, &dir) || (dir.st_mode & S_ISVTX); /* unknown: not ours */
	if (fd >= 0)
		REAL(close)(fd);
	errno = saved;
	return r;
}

/* The file in the way at path: 0 when it is a stale socket file of ours to replace (st
 * its lstat), else -1 with errno EADDRINUSE and a log line, or ENOENT when it is gone. */
static int judge_stale(const char *path, struct stat *st)
{
	if (lstat(path, st))
		return -1;
	if (!S_ISSOCK(st->st_mode)) {
		ulog(LOG_WARN_, "%s exists and is not a socket; not replacing it", path);
		errno = EADDRINUSE;
		return -1;
	}
	if (others_in_sticky(path, st)) {
		ulog(LOG_WARN_, "%s belongs to uid %u in a sticky directory; not replacing it",
		     path, (unsigned)st->st_uid);
		errno = EADDRINUSE;
		return -1;
	}
	if (socket_file_live(path, st))
		return lost(path, "is in use by a live socket");
	return 0;
}

/*
 * A directory of ours beside a socket file, made 0700 and held open: every step after
 * making it acts through its fd, so another user who can rename entries beside it (who
 * owns that directory) cannot steer us anywhere else.
 */
struct private_dir {
	int parent;          /* the socket file's directory */
	int fd;              /* ours */
	dev_t dev;
	ino_t ino;
	int keep;            /* a file not ours is left in it */
	char name[24];       /* its name in parent */
	const char *path;    /* the socket file */
	const char *base;    /* its name in parent */
};

/* Remove name in dir only while it still names the file (dev, ino); flags as unlinkat.
 * 0, or -1 (ESTALE when another file is there now). */
static int unlinkat_if_same(int dir, const char *name, dev_t dev, ino_t ino, int flags)
{
	struct stat st;

	if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW))
		return -1;
	if (st.st_dev != dev || st.st_ino != ino) {
		errno = ESTALE;
		return -1;
	}
	return unlinkat(dir, name, flags);
}

/* name in parent, opened without following a symlink, if it is a directory of our euid
 * closed to everybody else (st filled); else -1, with EACCES when it is something else. */
static int open_own_dir(int parent, const char *name, struct stat *st)
{
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (!fstat(fd, st) && st->st_uid == geteuid() && !(st->st_mode & 077))
		return fd;
	REAL(close)(fd);
	errno = EACCES;
	return -1;
}

static void private_close(struct private_dir *d)
{
	int saved = errno;

	if (d->ino && !d->keep)
		unlinkat_if_same(d->parent, d->name, d->dev, d->ino, AT_REMOVEDIR);
	if (d->fd >= 0)
		REAL(close)(d->fd);
	if (d->parent >= 0)
		REAL(close)(d->parent);
	errno = saved;
}

static int private_mkdir(struct private_dir *d)
{
	static uint64_t made;
	struct timespec ts;
	uint64_t x;
	int tries = 0;

	/* any name will do (what we open is checked); this one rarely collides */
	do {
		clock_gettime(CLOCK_REALTIME, &ts);
		x = (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 20 ^
		    __atomic_add_fetch(&made, 1, __ATOMIC_RELAXED) * 0x9e3779b97f4a7c15ULL;
		snprintf(d->name, sizeof(d->name), ".unixify-%08x", (unsigned)(x ^ x >> 32));
		if (!mkdirat(d->parent, d->name, 0700))
			return 0;
	} while (errno == EEXIST && ++tries < 100);
	return -1;
}

static int private_open(struct private_dir *d, const char *path)
{
	struct stat st;

	memset(d, 0, sizeof(*d));
	d->path = path;
	d->fd = -1;
	d->parent = open_parent(path, &d->base);
	if (d->parent < 0 || private_mkdir(d))
		goto fail;
	d->fd = open_own_dir(d->parent, d->name, &st);
	if (d->fd >= 0) {
		d->dev = st.st_dev;
		d->ino = st.st_ino;
		return 0;
	}
	if (errno != ELOOP && errno != ENOTDIR && errno != ENOENT && errno != EACCES)
		goto fail;
	ulog(LOG_ERR_, "%s: the directory made beside it was replaced at once; refusing", path);
	errno = EACCES;
fail:
	private_close(d);
	return -1;
}

/* How bind and connect, which take paths, reach name in d: through /proc/self/fd while
 * that leads to d, which no rename can divert; else by path, and callers check. */
static int private_entry(const struct private_dir *d, const char *name, char *out,
			 size_t size)
{
	struct stat st;
	int n;

	snprintf(out, size, "/proc/self/fd/%d", d->fd);
	if (!stat(out, &st) && st.st_dev == d->dev && st.st_ino == d->ino) {
		snprintf(out, size, "/proc/self/fd/%d/%s", d->fd, name);
		return 0;
	}
	n = snprintf(out, size, "%.*s/%s/%s", (int)(d->base - 1 - d->path), d->path, d->name,
		     name);
	if (n > 0 && (size_t)n < size)
		return 0;
	ulog(LOG_ERR_, "%s: too long to create safely without /proc (a private directory "
	     "beside it must fit in a socket address too)", d->path);
	errno = ENAMETOOLONG;
	return -1;
}

/*
 * Remove the stale file st from d's path, and nothing else.  There is no unlink-if-this-
 * inode, so move whatever is there into d and keep it removed only when it is st and
 * still stale: a socket another process was binding there when we judged has been bound
 * by now (its bind holds the directory locked, and the rename waited for it).  Anything
 * else is put back.
 */
static int remove_stale(struct private_dir *d, const struct stat *st)
{
	char entry[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct stat moved;

	/* not even for a moment move a file that is plainly not st */
	if (fstatat(d->parent, d->base, &moved, AT_SYMLINK_NOFOLLOW))
		return errno == ENOENT ? 0 : -1; /* gone meanwhile: the bind decides */
	if (moved.st_dev != st->st_dev || moved.st_ino != st->st_ino)
		return lost(d->path, "was bound by another process meanwhile");
	if (renameat(d->parent, d->base, d->fd, "stale"))
		return errno == ENOENT ? 0 : -1;
	if (!fstatat(d->fd, "stale", &moved, AT_SYMLINK_NOFOLLOW) &&
	    moved.st_dev == st->st_dev && moved.st_ino == st->st_ino &&
	    !private_entry(d, "stale", entry, sizeof(entry)) && !socket_file_live(entry, &moved)) {
		unlinkat(d->fd, "stale", 0);
		ulog(LOG_INFO_, "replacing stale socket file %s", d->path);
		return 0;
	}
	if (renameat2(d->fd, "stale", d->parent, d->base, RENAME_NOREPLACE)) {
		d->keep = 1;
		ulog(LOG_ERR_, "%s: a socket file bound there meanwhile could not be put back; it "
		     "is in %s beside it", d->path, d->name);
	}
	return lost(d->path, "was bound by another process meanwhile");
}

/* A stale socket file is at path: remove exactly that one (not a file that replaced it
 * since), then bind. */
static int bind_over_stale(int sock, const char *path)
{
	struct private_dir d;
	struct stat st;
	int r;

	if (judge_stale(path, &st))
		return errno == ENOENT ? bind_path(sock, path) : -1;
	if (private_open(&d, path))
		return -1;
	r = remove_stale(&d, &st);
	private_close(&d);
	if (r || !bind_path(sock, path))
		return r;
	return errno == EADDRINUSE ? lost(path, "was bound by another process meanwhile") : -1;
}

/* A bind that cannot make its file, in one line: the program itself reports only
 * "bind: Permission denied" for a TCP port, or nothing.  EADDRINUSE is logged where it
 * is found (a live socket, a file that is not one).  -2 with errno kept. */
static int bind_failed(const char *path)
{
	int saved = errno;

	if (saved != EADDRINUSE)
		ulog(LOG_ERR_, "cannot create socket file %s: %s", path, strerror(saved));
	errno = saved;
	return -2;
}

static int wants_permissions(const struct rule *r)
{
	return r->mode >= 0 || r->uid != (uid_t)-1 || r->gid != (gid_t)-1;
}

/* "name (id)" for a user or group of a rule, "id" without a name, "unchanged" for -1:
 * names as the launcher resolved them, for nothing is looked up inside the program. */
static const char *id_text(char *buf, size_t size, unsigned id, const char *name)
{
	if (id == (unsigned)-1)
		return "unchanged";
	if (name && *name)
		snprintf(buf, size, "%s (%u)", name, id);
	else
		snprintf(buf, size, "%u", id);
	return buf;
}

/* Bind sock as "s" in d and give it r's mode and owner: st is the file.  -1 with errno,
 * or -2 when the failure is logged already. */
static int bind_private(struct private_dir *d, int sock, const struct rule *r, struct stat *st)
{
	char entry[sizeof(((struct sockaddr_un *)0)->sun_path)], owner[280], group[280];
	int saved;

	if (private_entry(d, "s", entry, sizeof(entry)) || bind_path(sock, entry))
		return -1;
	if (fstatat(d->fd, "s", st, AT_SYMLINK_NOFOLLOW) || !bound_here(sock, st)) {
		ulog(LOG_ERR_, "%s: the socket did not appear in the directory made for it; "
		     "refusing", d->path);
		errno = EACCES;
		return -2;
	}
	/* "s" is our socket in our directory: nobody else can put anything there */
	if (r->mode >= 0 && fchmodat(d->fd, "s", (mode_t)r->mode, 0))
		return -1;
	if ((r->uid == (uid_t)-1 && r->gid == (gid_t)-1) ||
	    !fchownat(d->fd, "s", r->uid, r->gid, AT_SYMLINK_NOFOLLOW))
		return 0;
	saved = errno;
	ulog(LOG_ERR_, "cannot give %s to owner %s, group %s: %s", d->path,
	     id_text(owner, sizeof(owner), r->uid, r->owner_name),
	     id_text(group, sizeof(group), r->gid, r->group_name), strerror(saved));
	errno = saved;
	return -2; /* logged */
}

/* Move "s" from d to the path, over a stale socket file but nothing else. */
static int place(struct private_dir *d)
{
	struct stat st;

	if (!renameat2(d->fd, "s", d->parent, d->base, RENAME_NOREPLACE))
		return 0;
	if (errno != EEXIST)
		return -1;
	if (judge_stale(d->path, &st) ? errno != ENOENT : remove_stale(d, &st))
		return -1;
	if (!renameat2(d->fd, "s", d->parent, d->base, RENAME_NOREPLACE))
		return 0;
	return errno == EEXIST ? lost(d->path, "was bound by another process meanwhile") : -1;
}

/*
 * The file must not appear at path with other permissions than asked for, not even for
 * a moment: bind in a private directory beside it (same file system), set mode and
 * ownership there, then rename it into place.
 */
static int bind_private_then_rename(int sock, const char *path, const struct rule *r)
{
	struct private_dir d;
	struct stat file, s;
	int b;

	if (private_open(&d, path))
		return bind_failed(path);
	if ((b = bind_private(&d, sock, r, &file)) || place(&d)) {
		int saved = errno;

		unlinkat(d.fd, "s", 0); /* ours, if there */
		private_close(&d);
		errno = saved;
		return b == -2 ? -2 : bind_failed(path);
	}
	private_close(&d);
	if (fstat(sock, &s))
		return -1;
	return record_file(path, &file, s.st_ino, r->noremove);
}

/* Returns the record index (or -1 if none could be kept) with the socket bound, or
 * -2 with errno set. */
int sockfile_bind(int sock, const char *path, const struct rule *r)
{
	if (wants_permissions(r))
		return bind_private_then_rename(sock, path, r);
	if (bind_path(sock, path) && (errno != EADDRINUSE || bind_over_stale(sock, path)))
		return bind_failed(path);
	return record(sock, path, r->noremove);
}

/* Bound in a private directory of ours (in $TMPDIR, which another user may own), then
 * unlinked with it. */
int sockfile_blackhole(int sock)
{
	const char *base = getenv("TMPDIR");
	char where[80], entry[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct private_dir d;
	int r, saved;

	if (!base || base[0] != '/' || strlen(base) > 60)
		base = "/tmp";
	snprintf(where, sizeof(where), "%s/s", base);
	if (private_open(&d, where))
		return -1;
	r = private_entry(&d, "s", entry, sizeof(entry)) ? -1 : bind_path(sock, entry);
	saved = errno;
	unlinkat(d.fd, "s", 0);
	private_close(&d);
	errno = saved;
	return r;
}

/* Unlink path if it still names the file (dev, ino); flags as unlinkat.  Its directory
 * is resolved once, so a directory on the way swapped for a symlink cannot lead the
 * unlink elsewhere.  0, or -1 with errno kept. */
static int unlink_if_same(const char *path, dev_t dev, ino_t ino, int flags)
{
	const char *base;
	int dir, r = -1, saved = errno;

	dir = open_parent(path, &base);
	if (dir >= 0) {
		r = unlinkat_if_same(dir, base, dev, ino, flags);
		REAL(close)(dir);
	}
	errno = saved;
	return r;
}

void sockfile_release(int idx)
{
	struct sockfile f;
	int alive;

	if (idx < 0)
		return;
	state_lock_masked();
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
	state_lock_masked();
	if (sockfiles[idx].sock_ino == f.sock_ino)
		sockfiles[idx].used = 0;
	state_unlock();
	if (f.noremove)
		return;
	if (unlink_if_same(f.path, f.dev, f.ino, 0) == 0)
		ulog(LOG_INFO_, "removed socket file %s", f.path);
}

void sockfile_unlink(int idx)
{
	struct sockfile f;

	state_lock_masked();
	f.used = idx >= 0 && idx < n_sockfiles && sockfiles[idx].used;
	if (f.used) {
		f = sockfiles[idx];
		sockfiles[idx].used = 0;
	}
	state_unlock();
	if (f.used && unlink_if_same(f.path, f.dev, f.ino, 0) == 0)
		ulog(LOG_INFO_, "removed socket file %s", f.path);
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

	state_lock_masked();
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
