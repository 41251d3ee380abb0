/*
 * Answering the program's notified calls.
 *
 * A bind or connect a rule converts is carried out here: a Unix socket of the same type
 * is made, given the program's SOL_SOCKET options and blocking mode, bound (with the
 * shim's socket-file code) or connected, and installed over the program's fd with
 * SECCOMP_IOCTL_NOTIF_ADDFD.  Its inode goes into a table with the IP addresses the
 * program believes in, which getsockname, getpeername and accept answer from.
 *
 * Nothing is decided on memory the program can change after we read it where that
 * decision could open an IP port: an IP bind no rule converts is done here, on a
 * duplicate of the program's socket with our copy of the address, never by
 * SECCOMP_USER_NOTIF_FLAG_CONTINUE.  CONTINUE is used for calls whose outcome cannot
 * open a listening port: a connect no rule converts (the kernel reads the address
 * again, so a program racing its own buffer can reach another address, as it could
 * without us), calls on Unix sockets, and address queries of sockets that are not ours.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "supervisor.h"

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

/* A converted socket, by its inode, and the addresses the program believes in. */
struct conv {
	ino_t ino;
	struct ipaddr local;
	struct ipaddr peer;   /* family 0: not connected */
	uint8_t bound;        /* bind made it (not connect or accept) */
	socklen_t sunlen;     /* bound: its Unix address, which its accepted sockets share */
	struct sockaddr_un sun;
	int sockfile;         /* socket file record, or -1 */
	int stash;            /* an accepted connection the program's call was not there
				 to take (interrupted), delivered by the next accept; or -1 */
};

static struct growbuf convs;
static size_t live_at_sweep = 1024;
static int n_bound;
static int listener_fd;

/* One notification being answered. */
struct call {
	struct seccomp_notif *n;
	struct seccomp_notif_resp *resp;
	int fd;          /* the program's fd argument */
	int dup;         /* our duplicate of it, or -1 */
	int family, type;
	ino_t ino;
	int status;      /* its F_GETFL */
	int cloexec;     /* its FD_CLOEXEC */
};

static size_t n_convs(void)
{
	return convs.len / sizeof(struct conv);
}

static struct conv *conv_at(size_t i)
{
	return (struct conv *)convs.data + i;
}

/* An open-addressing index of the records by inode: slot values are index + 1. */
static uint32_t *slots;
static size_t n_slots;

static size_t slot_of(ino_t ino)
{
	return (size_t)(((uint64_t)ino * 0x9E3779B97F4A7C15ull) >> 32) & (n_slots - 1);
}

static void index_insert(size_t i)
{
	size_t s = slot_of(conv_at(i)->ino);

	while (slots[s])
		s = (s + 1) & (n_slots - 1);
	slots[s] = (uint32_t)(i + 1);
}

/* After records went away, or when the index is half full.  -1 without memory. */
static int index_rebuild(void)
{
	size_t want = 64;
	uint32_t *fresh;

	while (want < 2 * (n_convs() + 1))
		want *= 2;
	fresh = calloc(want, sizeof(*fresh));
	if (!fresh)
		return -1;
	free(slots);
	slots = fresh;
	n_slots = want;
	for (size_t i = 0; i < n_convs(); i++)
		index_insert(i);
	return 0;
}

static struct conv *conv_find(ino_t ino)
{
	if (!n_slots || !ino)
		return NULL;
	for (size_t s = slot_of(ino); slots[s]; s = (s + 1) & (n_slots - 1)) {
		if (conv_at(slots[s] - 1)->ino == ino)
			return conv_at(slots[s] - 1);
	}
	return NULL;
}

/* Drop the last record (just added, then not used). */
static void conv_pop(void)
{
	convs.len -= sizeof(struct conv);
	index_rebuild();
}

/* Forget sockets that no longer exist, once the table has grown fourfold since last
 * time (one sock_diag request per record: a third of one per record added). */
static void conv_sweep(void)
{
	size_t kept = 0;

	if (n_convs() < 4 * live_at_sweep)
		return;
	for (size_t i = 0; i < n_convs(); i++) {
		struct conv *c = conv_at(i);

		if (c->stash < 0 && unix_socket_alive(c->ino) == 0) {
			sockfile_release(c->sockfile);
			continue;
		}
		*conv_at(kept++) = *c;
	}
	convs.len = kept * sizeof(struct conv);
	live_at_sweep = kept > 1024 ? kept : 1024;
	index_rebuild();
}

static struct conv *conv_add(ino_t ino)
{
	struct conv c = { .ino = ino, .sockfile = -1, .stash = -1 };

	conv_sweep();
	if (growbuf_add(&convs, &c, sizeof(c)))
		return NULL;
	if (2 * n_convs() < n_slots) {
		index_insert(n_convs() - 1);
	} else if (index_rebuild()) {
		convs.len -= sizeof(struct conv); /* the old index still holds the rest */
		return NULL;
	}
	return conv_at(n_convs() - 1);
}

static ino_t inode_of(int sock)
{
	struct stat st;

	return fstat(sock, &st) ? 0 : st.st_ino;
}

/* ---- the program's side ---- */

static int id_valid(const struct call *c)
{
	return ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &c->n->id) == 0;
}

static int mem_read(pid_t pid, uint64_t addr, void *buf, size_t len)
{
	struct iovec local = { buf, len }, remote = { (void *)(uintptr_t)addr, len };

	return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

static int mem_write(pid_t pid, uint64_t addr, const void *buf, size_t len)
{
	struct iovec local = { (void *)buf, len }, remote = { (void *)(uintptr_t)addr, len };

	return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

/* The inode of the socket at the program's fd, from /proc (no duplicate): 0 if none. */
static ino_t program_socket(pid_t tid, int fd)
{
	char path[64], link[64];
	unsigned long long ino;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)tid, fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return 0;
	link[n] = 0;
	return sscanf(link, "socket:[%llu]", &ino) == 1 ? (ino_t)ino : 0;
}

static int cloexec_of(pid_t tid, int fd)
{
	char path[64], text[256];
	unsigned long flags = 0;
	ssize_t n;
	int f;

	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", (int)tid, fd);
	f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return 0;
	n = read(f, text, sizeof(text) - 1);
	close(f);
	if (n <= 0)
		return 0;
	text[n] = 0;
	const char *p = strstr(text, "flags:");
	if (p)
		flags = strtoul(p + 6, NULL, 8);
	return (flags & O_CLOEXEC) != 0;
}

static int pidfd_of(pid_t tid)
{
	int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
	char path[64], text[512], *p;
	int f;
	ssize_t n;

	if (pidfd >= 0 || errno != EINVAL)
		return pidfd;
	/* before Linux 6.9: the thread group leader's */
	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return -1;
	n = read(f, text, sizeof(text) - 1);
	close(f);
	if (n <= 0)
		return -1;
	text[n] = 0;
	p = strstr(text, "\nTgid:");
	return p ? (int)syscall(SYS_pidfd_open, atoi(p + 6), 0) : -1;
}

/* Fill c with what the program's fd is: a duplicate and its family, type and flags.
 * -1 when it is not a socket (or is gone). */
static int inspect(struct call *c)
{
	int pidfd = pidfd_of((pid_t)c->n->pid);
	socklen_t len = sizeof(int);

	c->dup = -1;
	if (pidfd < 0)
		return -1;
	c->dup = (int)syscall(SYS_pidfd_getfd, pidfd, c->fd, 0);
	close(pidfd);
	if (c->dup < 0)
		return -1;
	c->ino = inode_of(c->dup);
	c->status = fcntl(c->dup, F_GETFL);
	c->cloexec = cloexec_of((pid_t)c->n->pid, c->fd);
	if (getsockopt(c->dup, SOL_SOCKET, SO_DOMAIN, &c->family, &len))
		return -1;
	len = sizeof(int);
	return getsockopt(c->dup, SOL_SOCKET, SO_TYPE, &c->type, &len);
}

/* ---- answers ---- */

static void answer(struct call *c, long long val, int error)
{
	c->resp->id = c->n->id;
	c->resp->val = val;
	c->resp->error = error ? -error : 0;
	c->resp->flags = 0;
}

static void pass(struct call *c)
{
	answer(c, 0, 0);
	c->resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
}

/* Put sock over the program's fd (newfd) or at a free number (newfd -1, with send the
 * call's answer).  The fd number in the program, or -1 with errno. */
static int install(struct call *c, int sock, int newfd, int cloexec, int send)
{
	struct seccomp_notif_addfd a = {
		.id = c->n->id,
		.srcfd = (uint32_t)sock,
		.newfd = newfd < 0 ? 0 : (uint32_t)newfd,
		.newfd_flags = cloexec ? O_CLOEXEC : 0,
		.flags = newfd < 0 ? 0 : SECCOMP_ADDFD_FLAG_SETFD,
	};
	int r;

	if (send && features.addfd_send)
		a.flags |= SECCOMP_ADDFD_FLAG_SEND;
	r = ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &a);
	if (r < 0 && errno == EINVAL && (a.flags & SECCOMP_ADDFD_FLAG_SEND)) {
		features.addfd_send = 0; /* before 5.14 */
		return install(c, sock, newfd, cloexec, send);
	}
	return r;
}

/* SOL_SOCKET options that mean something on a Unix socket, carried from the program's
 * socket to ours when the program changed them: a value that differs from a fresh IP
 * socket's (a TCP default buffer size must not shrink a Unix socket's).  SO_PASSCRED
 * cannot be set on an IP socket. */
static const int carried[] = {
	SO_RCVBUF, SO_SNDBUF, SO_RCVTIMEO, SO_SNDTIMEO, SO_RCVLOWAT,
};
#define N_CARRIED (sizeof(carried) / sizeof(carried[0]))
struct optval {
	socklen_t len;
	char value[16];
};
static struct optval defaults[2][N_CARRIED]; /* [SOCK_DGRAM?] */
static int have_defaults[2];

static void read_options(int sock, struct optval *out)
{
	for (size_t i = 0; i < N_CARRIED; i++) {
		out[i].len = sizeof(out[i].value);
		if (getsockopt(sock, SOL_SOCKET, carried[i], out[i].value, &out[i].len))
			out[i].len = 0;
	}
}

static const struct optval *default_options(int type)
{
	int dgram = type == SOCK_DGRAM, sock;

	if (!have_defaults[dgram]) {
		sock = socket(AF_INET, type | SOCK_CLOEXEC, 0);
		if (sock < 0)
			return NULL;
		read_options(sock, defaults[dgram]);
		close(sock);
		have_defaults[dgram] = 1;
	}
	return defaults[dgram];
}

static void carry_options(int from, int to, int type)
{
	const struct optval *base = default_options(type);
	struct optval now[N_CARRIED];

	read_options(from, now);
	for (size_t i = 0; i < N_CARRIED; i++) {
		if (!now[i].len || (base && base[i].len == now[i].len &&
				    !memcmp(base[i].value, now[i].value, now[i].len)))
			continue;
		if ((carried[i] == SO_RCVBUF || carried[i] == SO_SNDBUF) &&
		    now[i].len == sizeof(int))
			*(int *)now[i].value /= 2; /* reported doubled; setting doubles again */
		setsockopt(to, SOL_SOCKET, carried[i], now[i].value, now[i].len);
	}
}

static int unix_socket_like(const struct call *c)
{
	int sock = socket(AF_UNIX, c->type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (sock >= 0)
		carry_options(c->dup, sock, c->type);
	return sock;
}

/* Match the program's blocking mode once our own set-up is done. */
static void set_blocking_like(const struct call *c, int sock)
{
	if (!(c->status & O_NONBLOCK))
		fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) & ~O_NONBLOCK);
}

static int read_address(struct call *c, int arg, struct sockaddr_storage *ss, socklen_t *len)
{
	uint64_t n = c->n->data.args[arg + 1];

	if (n > sizeof(*ss) || (int64_t)n < 0) {
		errno = EINVAL;
		return -1;
	}
	memset(ss, 0, sizeof(*ss));
	*len = (socklen_t)n;
	if (mem_read((pid_t)c->n->pid, c->n->data.args[arg], ss, n)) {
		errno = EFAULT;
		return -1;
	}
	return 0;
}

static const char *target_text(const struct rule *r, const char *target)
{
	return r->action == ACT_ABSTRACT ? "an abstract name" : target;
}

/* Install sock (ours) over the program's fd; record it with conv filled by the caller.
 * The call is answered 0, or with the error. */
/* Connections made for a connect the program was not there to take (a signal
 * interrupted it, and SA_RESTART will ask again): kept for the retry, which must come
 * from the same thread, for the same fd, still the same socket, to the same address. */
#define MAX_KEPT 16
static struct kept {
	pid_t tid;
	int fd;
	ino_t ino;            /* the program's socket at fd */
	struct ipaddr peer;
	int sock;             /* ours, or -1 */
} kept[MAX_KEPT];
static unsigned kept_next;

static void keep_connection(const struct call *c, int sock, const struct ipaddr *peer)
{
	struct kept *k = &kept[kept_next++ % MAX_KEPT];

	if (k->sock > 0)
		close(k->sock); /* the oldest: its caller gave up */
	*k = (struct kept){ (pid_t)c->n->pid, c->fd, c->ino, *peer, sock };
}

static int kept_connection(const struct call *c, const struct ipaddr *peer)
{
	for (int i = 0; i < MAX_KEPT; i++) {
		struct kept *k = &kept[i];
		int sock = k->sock;

		if (sock <= 0 || k->tid != (pid_t)c->n->pid || k->fd != c->fd ||
		    k->ino != c->ino || ipaddr_len(peer) != ipaddr_len(&k->peer) ||
		    memcmp(peer, &k->peer, ipaddr_len(peer)))
			continue;
		k->sock = -1;
		return sock;
	}
	return -1;
}

/* Install sock (ours) over the program's fd; record it as tmpl says.  The call is
 * answered 0, or with the error.  An interrupted connect's connection is kept. */
static void swap_in(struct call *c, int sock, const struct conv *tmpl)
{
	struct conv *k;
	ino_t ino;

	set_blocking_like(c, sock);
	ino = inode_of(sock);
	k = conv_add(ino);
	if (!k) {
		ulog(LOG_ERR_, "out of memory for the table of converted sockets");
		sockfile_release(tmpl->sockfile);
		close(sock);
		answer(c, -1, ENOMEM);
		return;
	}
	*k = *tmpl;
	k->ino = ino;
	if (install(c, sock, c->fd, c->cloexec, 0) < 0) {
		/* interrupted: the program's socket is as it was */
		int err = errno;

		conv_pop(); /* k, the last */
		if (err == ENOENT && tmpl->peer.sa.sa_family) {
			keep_connection(c, sock, &tmpl->peer);
		} else {
			close(sock);
			sockfile_release(tmpl->sockfile);
		}
		answer(c, -1, err == ENOENT ? EINTR : err);
		return;
	}
	close(sock);
	answer(c, 0, 0);
}

/* The port a bind names, or a made-up one for port 0. */
static void settle_port(struct ipaddr *a)
{
	if (!ipaddr_port(a))
		ipaddr_set_port(a, fake_port());
}

static void do_bind_ip(struct call *c, const struct sockaddr_storage *ss, socklen_t len)
{
	/* our copy of the address, on the program's own socket: nothing to race */
	if (bind(c->dup, (const struct sockaddr *)ss, len))
		answer(c, -1, errno);
	else
		answer(c, 0, 0);
}

/* The program's umask (a file made without mode= gets the mode it would have given it),
 * or ours when it cannot be read. */
static mode_t umask_of(pid_t tid)
{
	char path[64], text[1024], *p;
	mode_t ours = umask(0);
	ssize_t n;
	int f;

	umask(ours);
	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return ours;
	n = read(f, text, sizeof(text) - 1);
	close(f);
	if (n <= 0)
		return ours;
	text[n] = 0;
	p = strstr(text, "\nUmask:");
	return p ? (mode_t)strtoul(p + 7, NULL, 8) & 0777 : ours;
}

/* Does the program hold a live socket of ours bound to path?  (A server binding 0.0.0.0
 * and [::] for one port: the second bind is blackholed, as in the shim.) */
static int bound_here(const char *path)
{
	size_t len = strlen(path);

	for (size_t i = n_convs(); i-- > 0;) {
		const struct conv *k = conv_at(i);

		if (k->bound && k->sockfile >= 0 &&
		    k->sunlen == offsetof(struct sockaddr_un, sun_path) + len + 1 &&
		    !memcmp(k->sun.sun_path, path, len) && unix_socket_alive(k->ino) == 1)
			return 1;
	}
	return 0;
}

static void convert_bind_to(struct call *c, const struct ipaddr *ip, const struct rule *r,
			    const char *target, int then_listen)
{
	struct conv k = { .bound = 1, .sockfile = -1, .stash = -1 };
	struct sockaddr_un sun;
	int sock = unix_socket_like(c), n, saved;
	mode_t ours;

	if (sock < 0) {
		answer(c, -1, errno);
		return;
	}
	ours = umask(umask_of((pid_t)c->n->pid));
	if (r->action == ACT_PATH && bound_here(target)) {
		ulog(LOG_INFO_, "pid %d fd %d: %s is already bound by this program; blackholing",
		     (int)c->n->pid, c->fd, target);
		n = sockfile_blackhole(sock);
		target = NULL;
	} else if (r->action == ACT_BLACKHOLE) {
		n = sockfile_blackhole(sock);
	} else if (r->action == ACT_PATH) {
		k.sockfile = sockfile_bind(sock, target, r);
		n = k.sockfile == -2 ? -1 : 0;
	} else {
		n = unix_addr_fill(&sun, r, target);
		n = n < 0 ? -1 : bind(sock, (struct sockaddr *)&sun, (socklen_t)n);
	}
	saved = errno;
	umask(ours);
	errno = saved;
	if (n == 0 && then_listen)
		n = listen(sock, (int)c->n->data.args[1]);
	if (n) {
		int err = errno;

		ulog(LOG_WARN_, "pid %d fd %d: cannot bind %s: %s", (int)c->n->pid, c->fd,
		     r->action == ACT_BLACKHOLE || !target ? "a blackhole"
		     : target_text(r, target), strerror(err));
		close(sock);
		answer(c, -1, err);
		return;
	}
	k.local = *ip;
	settle_port(&k.local);
	k.sunlen = sizeof(k.sun);
	if (getsockname(sock, (struct sockaddr *)&k.sun, &k.sunlen))
		k.sunlen = 0;
	n_bound++;
	ulog(LOG_INFO_, "pid %d fd %d: bound to %s", (int)c->n->pid, c->fd,
	     r->action == ACT_BLACKHOLE || !target ? "a blackhole" : target_text(r, target));
	swap_in(c, sock, &k);
}

/* Rules for a call on an IP socket: 1 no rule converts it, 0 convert (r, target set),
 * -1 answered with the error. */
static int decide(struct call *c, int dir, const struct ipaddr *ip, const struct rule **r,
		  char *target, size_t size)
{
	struct sock_query q = { .dir = dir, .type = c->type, .addr = ip };
	int d = rule_decide(c->fd, &q, r, target, size);

	if (d < 0) {
		answer(c, -1, errno);
		return -1;
	}
	if (d == 0 && (*r)->action != ACT_PATH && (*r)->action != ACT_ABSTRACT &&
	    !((*r)->action == ACT_BLACKHOLE && dir == DIR_IN)) {
		ulog(LOG_ERR_, "pid %d fd %d: rule %d's action is not supported by the seccomp "
		     "back end; refused", (int)c->n->pid, c->fd, (int)(*r - rule_at(0)) + 1);
		answer(c, -1, EACCES);
		return -1;
	}
	return d;
}

static int is_ip(const struct call *c)
{
	return c->family == AF_INET || c->family == AF_INET6;
}

/* The start of a bind (connect: 0, 1): a Unix socket is the kernel's, or ours after a
 * call that was interrupted once the fd was swapped (answered 0); an IP one has its
 * address read and the call checked as still live.  0 to go on; else answered. */
static int read_call(struct call *c, int connect, struct sockaddr_storage *ss,
		     socklen_t *len)
{
	if (!is_ip(c)) {
		struct conv *mine = conv_find(c->ino);

		if (mine && (connect ? mine->peer.sa.sa_family != 0 : mine->bound))
			answer(c, 0, 0);
		else
			pass(c);
		return -1;
	}
	if (read_address(c, 1, ss, len)) {
		answer(c, -1, errno);
		return -1;
	}
	return id_valid(c) ? 0 : -1;
}

static void on_bind(struct call *c)
{
	char target[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct sockaddr_storage ss;
	const struct rule *r;
	struct ipaddr ip;
	socklen_t len;

	if (read_call(c, 0, &ss, &len))
		return;
	if (ipaddr_for_socket(&ip, (struct sockaddr *)&ss, len, c->family, c->type, CALL_BIND)) {
		do_bind_ip(c, &ss, len); /* the kernel says what is wrong with it */
		return;
	}
	switch (decide(c, DIR_IN, &ip, &r, target, sizeof(target))) {
	case 1:
		do_bind_ip(c, &ss, len);
		return;
	case 0:
		convert_bind_to(c, &ip, r, target, 0);
		return;
	}
}

/* An unbound IP socket's listen binds it to a port: the rules decide as for a bind to
 * the unspecified address and port 0. */
static void on_listen(struct call *c)
{
	char target[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	const struct rule *r;
	struct ipaddr ip;

	if (!is_ip(c)) {
		pass(c);
		return;
	}
	if (getsockname(c->dup, (struct sockaddr *)&ss, &len) ||
	    ipaddr_from_sockaddr(&ip, (struct sockaddr *)&ss, len)) {
		answer(c, -1, errno);
		return;
	}
	if (ipaddr_port(&ip) == 0 && ipaddr_is_any(&ip) &&
	    decide(c, DIR_IN, &ip, &r, target, sizeof(target)) == 0) {
		convert_bind_to(c, &ip, r, target, 1);
		return;
	}
	if (c->resp->id)
		return; /* refused by decide() */
	if (listen(c->dup, (int)c->n->data.args[1]))
		answer(c, -1, errno);
	else
		answer(c, 0, 0);
}

static void on_connect(struct call *c)
{
	char target[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct sockaddr_storage ss;
	struct conv k = { .sockfile = -1, .stash = -1 };
	struct sockaddr_un sun;
	const struct rule *r;
	struct ipaddr ip;
	socklen_t len;
	int sock, n;

	if (read_call(c, 1, &ss, &len))
		return;
	if (ipaddr_for_socket(&ip, (struct sockaddr *)&ss, len, c->family, c->type,
			      CALL_CONNECT) ||
	    decide(c, DIR_OUT, &ip, &r, target, sizeof(target)) == 1) {
		pass(c);
		return;
	}
	if (c->resp->id)
		return; /* refused */
	k.peer = ip;
	ipaddr_loopback_like(&k.local, ip.sa.sa_family, &ip);
	ipaddr_set_port(&k.local, fake_port());
	sock = kept_connection(c, &ip);
	if (sock >= 0) {
		swap_in(c, sock, &k);
		return;
	}
	n = unix_addr_fill(&sun, r, target);
	sock = n < 0 ? -1 : unix_socket_like(c);
	if (sock < 0) {
		answer(c, -1, errno);
		return;
	}
	if (connect(sock, (struct sockaddr *)&sun, (socklen_t)n)) {
		int err = errno == ENOENT || errno == ECONNREFUSED ? ECONNREFUSED : errno;

		ulog(LOG_INFO_, "pid %d fd %d: cannot connect to %s: %s", (int)c->n->pid, c->fd,
		     target_text(r, target), strerror(errno));
		close(sock);
		answer(c, -1, err);
		return;
	}
	swap_in(c, sock, &k);
}

/* What a connection accepted on listener l stands for: l's address (loopback for the
 * unspecified one) and a loopback peer with a port made up. */
static void accepted_from(const struct conv *l, struct conv *k)
{
	struct ipaddr model = l->local;
	int family = model.sa.sa_family;

	k->local = model;
	if (ipaddr_is_any(&model)) {
		ipaddr_loopback_like(&k->local, family, &model);
		ipaddr_set_port(&k->local, ipaddr_port(&model));
	}
	ipaddr_loopback_like(&k->peer, family, &model);
	ipaddr_set_port(&k->peer, fake_port());
}

/* The record of the socket at the program's fd: ours by inode, or a connection the
 * kernel accepted on a converted listener (a blocking accept is left to it), known by
 * the listener's address and recorded now.  NULL when the socket is not ours. */
static struct conv *conv_of(struct call *c)
{
	struct conv k = { .sockfile = -1, .stash = -1 }, *found;
	struct sockaddr_un sun;
	socklen_t len = sizeof(sun);

	found = conv_find(c->dup >= 0 ? c->ino : program_socket((pid_t)c->n->pid, c->fd));
	if (found || !n_bound)
		return found;
	if ((c->dup < 0 && inspect(c)) || c->family != AF_UNIX ||
	    getsockname(c->dup, (struct sockaddr *)&sun, &len))
		return NULL;
	for (size_t i = n_convs(); i-- > 0 && !found;) { /* the newest: an older one at
							    the same path is dead */
		const struct conv *l = conv_at(i);

		if (l->bound && l->sunlen == len && len > sizeof(sa_family_t) &&
		    !memcmp(&l->sun, &sun, len)) {
			accepted_from(l, &k);
			found = &k;
		}
	}
	if (!found)
		return NULL;
	k.ino = c->ino;
	found = conv_add(k.ino);
	if (found)
		*found = k;
	return found;
}

/* getsockname/getpeername of a converted socket: the IP address it stands for. */
static void on_name(struct call *c, int peer)
{
	struct conv *k = conv_of(c);
	const struct ipaddr *a;
	socklen_t have, len;

	if (!id_valid(c))
		return;
	if (!k || (peer && !k->peer.sa.sa_family)) {
		pass(c); /* not ours, or the kernel's ENOTCONN */
		return;
	}
	a = peer ? &k->peer : &k->local;
	len = ipaddr_len(a);
	if (mem_read((pid_t)c->n->pid, c->n->data.args[2], &have, sizeof(have)) ||
	    (int)have < 0 ||
	    mem_write((pid_t)c->n->pid, c->n->data.args[1], a, have < len ? have : len) ||
	    mem_write((pid_t)c->n->pid, c->n->data.args[2], &len, sizeof(len))) {
		answer(c, -1, errno == EINVAL ? EINVAL : EFAULT);
		return;
	}
	answer(c, 0, 0);
}

/*
 * accept/accept4 on a converted listener when the program wants the peer's address:
 * done here, so that the address can be the IP one the program expects, and the socket
 * delivered with ADDFD_FLAG_SEND.  A non-blocking listener is served at once.  A
 * blocking one is served by a thread of its own (the loop must never block), which
 * waits on a duplicate of the listener while the program's call is live; a connection
 * its caller was no longer there to take (a signal) waits on the listener's record for
 * the next accept.  The table is shared with those threads under table_lock, which the
 * main loop holds while it answers a call.
 */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

struct accept_job {
	struct seccomp_notif_resp resp;
	uint64_t id;
	pid_t tid;
	uint64_t addr, addrlen;  /* the program's pointers */
	int flags;
	int dup;                 /* the listener */
	ino_t ino;
	int done;                /* its thread has finished */
};

/* Put a connection back on its listener's record for the next accept (lock held). */
static void stash(ino_t listener, int sock)
{
	struct conv *l = conv_find(listener);

	if (l && l->stash < 0)
		l->stash = sock;
	else
		close(sock);
}

/* Hand sock to the accept j describes (lock held).  0 answered by the kernel or
 * answered in j->resp (resp.id set); -1 when the call is gone (sock stashed). */
static int deliver(struct accept_job *j, int sock)
{
	struct conv *l = conv_find(j->ino), k = { .sockfile = -1, .stash = -1 };
	struct call c = { .n = &(struct seccomp_notif){ .id = j->id, .pid = (uint32_t)j->tid },
			  .resp = &j->resp };
	socklen_t have, len;
	int fd;

	if (!l) {
		close(sock);
		answer(&c, -1, ECONNABORTED);
		return 0;
	}
	accepted_from(l, &k);
	len = ipaddr_len(&k.peer);
	if (mem_read(j->tid, j->addrlen, &have, sizeof(have)) || (int)have < 0 ||
	    !id_valid(&c) ||
	    mem_write(j->tid, j->addr, &k.peer, have < len ? have : len) ||
	    mem_write(j->tid, j->addrlen, &len, sizeof(len))) {
		stash(j->ino, sock);
		answer(&c, -1, (int)have < 0 ? EINVAL : EFAULT);
		return 0;
	}
	k.ino = inode_of(sock);
	fd = install(&c, sock, -1, j->flags & SOCK_CLOEXEC, 1);
	if (fd < 0) {
		stash(j->ino, sock); /* interrupted: not lost, the next accept takes it */
		j->resp.id = 0;
		return -1;
	}
	close(sock);
	if (conv_add(k.ino))
		*conv_at(n_convs() - 1) = k;
	if (features.addfd_send)
		j->resp.id = 0; /* answered by the ioctl */
	else
		answer(&c, fd, 0);
	return 0;
}

static void send_answer(struct seccomp_notif_resp *resp)
{
	if (resp->id && ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_SEND, resp) && errno != ENOENT)
		ulog(LOG_DEBUG_, "cannot answer an accept: %s", strerror(errno));
}

/* The threads serving blocking accepts (the main loop's list), for the exit to stop. */
struct waiter {
	pthread_t thread;
	struct accept_job *job;
};
static struct growbuf waiters;
static int stopping;

/* Threads take connections one at a time, and only for a live call: a thread whose
 * call was interrupted never takes one (it would have nobody to give it to). */
static pthread_mutex_t accept_lock = PTHREAD_MUTEX_INITIALIZER;

static int take_connection(struct accept_job *j, struct call *c)
{
	struct pollfd p = { .fd = j->dup, .events = POLLIN };
	int sock = -1;

	pthread_mutex_lock(&accept_lock);
	if (!id_valid(c))
		errno = ENOENT;
	else if (poll(&p, 1, 0) != 1)
		errno = EAGAIN;
	else /* only one of the program's own accepts without an address can be faster */
		sock = accept4(j->dup, NULL, NULL, SOCK_CLOEXEC | (j->flags & SOCK_NONBLOCK));
	pthread_mutex_unlock(&accept_lock);
	return sock;
}

static void *wait_accept(void *arg)
{
	struct accept_job *j = arg;
	struct pollfd p = { .fd = j->dup, .events = POLLIN };
	struct call c = { .n = &(struct seccomp_notif){ .id = j->id } };
	int sock = -1;

	while (!__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) {
		if (poll(&p, 1, 50) != 1) {
			if (!id_valid(&c))
				break;
			continue;
		}
		sock = take_connection(j, &c);
		if (sock >= 0 || (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED))
			break;
	}
	pthread_mutex_lock(&table_lock);
	if (sock >= 0) {
		deliver(j, sock);
	} else if (!stopping && id_valid(&c)) {
		struct call e = { .n = c.n, .resp = &j->resp };

		answer(&e, -1, errno);
	}
	pthread_mutex_unlock(&table_lock);
	send_answer(&j->resp);
	return NULL;
}

static void *run_waiter(void *arg)
{
	struct accept_job *j = arg;

	wait_accept(j);
	__atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Join the threads that are done, or all. */
static void reap_waiters(int all)
{
	struct waiter *w = (struct waiter *)waiters.data;
	size_t n = waiters.len / sizeof(*w), left = 0;

	for (size_t i = 0; i < n; i++) {
		if (!all && !__atomic_load_n(&w[i].job->done, __ATOMIC_ACQUIRE)) {
			w[left++] = w[i];
			continue;
		}
		pthread_join(w[i].thread, NULL);
		close(w[i].job->dup);
		free(w[i].job);
	}
	waiters.len = left * sizeof(*w);
}

/* At exit (the lock not held): a blocked accept returns, every thread ends. */
static void stop_waiters(void)
{
	struct waiter *w = (struct waiter *)waiters.data;

	__atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
	for (size_t i = 0; i < waiters.len / sizeof(*w); i++)
		shutdown(w[i].job->dup, SHUT_RDWR);
	reap_waiters(1);
}

/* A thread for a blocking accept; -1 when none can start (the caller passes). */
static int start_waiter(struct call *c, int flags)
{
	struct accept_job *j = calloc(1, sizeof(*j));
	struct waiter w = { .job = j };

	reap_waiters(0);
	if (!j || growbuf_add(&waiters, &w, sizeof(w))) {
		free(j);
		return -1;
	}
	*j = (struct accept_job){ .id = c->n->id, .tid = (pid_t)c->n->pid, .flags = flags,
				  .addr = c->n->data.args[1], .addrlen = c->n->data.args[2],
				  .dup = c->dup, .ino = c->ino };
	if (pthread_create(&((struct waiter *)waiters.data)[waiters.len / sizeof(w) - 1].thread,
			   NULL, run_waiter, j)) {
		waiters.len -= sizeof(w);
		free(j);
		return -1;
	}
	c->dup = -1; /* the thread's now */
	return 0;
}

static void on_accept(struct call *c, int flags)
{
	struct conv *l = conv_find(c->ino);
	struct accept_job j;
	int sock;

	if (!l || (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))) {
		pass(c);
		return;
	}
	sock = l->stash;
	l->stash = -1;
	if (sock < 0 && !(c->status & O_NONBLOCK)) {
		if (start_waiter(c, flags))
			pass(c); /* no thread: the kernel's accept, with a Unix address */
		return;
	}
	if (sock < 0)
		sock = accept4(c->dup, NULL, NULL, SOCK_CLOEXEC | (flags & SOCK_NONBLOCK));
	if (sock < 0) {
		answer(c, -1, errno);
		return;
	}
	j = (struct accept_job){ .id = c->n->id, .tid = (pid_t)c->n->pid, .flags = flags,
				 .addr = c->n->data.args[1], .addrlen = c->n->data.args[2],
				 .ino = c->ino };
	deliver(&j, sock);
	*c->resp = j.resp;
}

/* IP- and TCP-level options on a converted socket succeed and do nothing. */
static void on_setsockopt(struct call *c)
{
	if (!is_ip(c) && conv_of(c) && id_valid(c))
		answer(c, 0, 0);
	else
		pass(c);
}

/* SO_DOMAIN and SO_PROTOCOL of a converted socket: the IP socket's. */
static void on_getsockopt(struct call *c)
{
	struct conv *k = is_ip(c) ? NULL : conv_of(c);
	int value, name = (int)c->n->data.args[2];
	socklen_t have, len = sizeof(int);
	pid_t pid = (pid_t)c->n->pid;

	if (!k || !id_valid(c)) {
		pass(c);
		return;
	}
	value = name == SO_DOMAIN ? k->local.sa.sa_family
		: c->type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP;
	if (mem_read(pid, c->n->data.args[4], &have, sizeof(have)) || (int)have < 0 ||
	    mem_write(pid, c->n->data.args[3], &value, have < len ? have : len) ||
	    mem_write(pid, c->n->data.args[4], &len, sizeof(len))) {
		answer(c, -1, EFAULT);
		return;
	}
	answer(c, 0, 0);
}

static void refuse(struct call *c, int error, const char *why)
{
	ulog(LOG_WARN_, "pid %d: refused %s (%s)", (int)c->n->pid,
	     filter_call_name(&c->n->data), why);
	answer(c, -1, error);
}

static void dispatch(struct call *c)
{
	const struct seccomp_data *d = &c->n->data;

	if (!filter_native(d)) {
		refuse(c, EPERM, "a 32-bit socket or io_uring call would bypass the filter");
		return;
	}
	switch (d->nr) {
	case __NR_io_uring_setup:
		refuse(c, EPERM, "io_uring connects and binds without system calls we see");
		return;
	case __NR_sendto:
	case __NR_sendmsg:
	case __NR_sendmmsg:
		refuse(c, EOPNOTSUPP, "MSG_FASTOPEN would connect implicitly");
		return;
	case __NR_socket:
		refuse(c, EAFNOSUPPORT, "a rule without 'tcp' could convert UDP, which the "
		       "seccomp back end does not translate");
		return;
	case __NR_getsockname:
	case __NR_getpeername:
		c->fd = (int)d->args[0];
		on_name(c, d->nr == __NR_getpeername);
		return;
	}
	c->fd = (int)d->args[0];
	if (inspect(c)) {
		/* Not a socket, or no fd there: the kernel says so.  Anything else (a
		 * program that made itself non-dumpable, which a supervisor that is not root
		 * cannot inspect) must not reach the kernel unjudged. */
		if (errno == ENOTSOCK || errno == EBADF)
			pass(c);
		else
			refuse(c, EACCES, errno == EPERM ? "the program cannot be inspected "
			       "(non-dumpable?)" : strerror(errno));
		return;
	}
	switch (d->nr) {
	case __NR_bind: on_bind(c); return;
	case __NR_connect: on_connect(c); return;
	case __NR_listen: on_listen(c); return;
	case __NR_accept: on_accept(c, 0); return;
	case __NR_accept4: on_accept(c, (int)d->args[3]); return;
	case __NR_setsockopt: on_setsockopt(c); return;
	case __NR_getsockopt: on_getsockopt(c); return;
	}
	pass(c);
}

int rules_convert_udp(void)
{
	/* Conservative: any rule that can match a datagram socket and does something. */
	for (int i = 0; i < rules_count(); i++) {
		const struct rule *r = rule_at(i);

		if (r->type != SOCK_STREAM && r->action != ACT_IGNORE && !r->from_unix &&
		    !r->from_abstract)
			return 1;
	}
	return 0;
}

static void handle(int listener, struct seccomp_notif *n, struct seccomp_notif_resp *resp,
		   const struct seccomp_notif_sizes *sizes)
{
	struct call c = { .n = n, .resp = resp, .fd = -1, .dup = -1 };

	memset(n, 0, sizes->seccomp_notif);
	memset(resp, 0, sizes->seccomp_notif_resp);
	if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, n))
		return; /* ENOENT: the caller went away meanwhile */
	pthread_mutex_lock(&table_lock);
	dispatch(&c);
	pthread_mutex_unlock(&table_lock);
	if (c.dup >= 0)
		close(c.dup);
	if (resp->id && ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp) && errno != ENOENT)
		ulog(LOG_DEBUG_, "cannot answer pid %d: %s", (int)n->pid, strerror(errno));
}

/* The tree is gone: remove the socket files.  The last task's sockets may still be on
 * their way out when the listener reports it (their release is deferred), so a live
 * one gets a moment (bounded) before it is judged held elsewhere and kept. */
static void remove_files(void)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	int waits = 100;

	for (size_t i = 0; i < n_convs(); i++) {
		struct conv *k = conv_at(i);

		if (k->stash >= 0)
			close(k->stash);
		if (k->sockfile < 0)
			continue;
		while (waits > 0 && unix_socket_alive(k->ino) == 1) {
			nanosleep(&tick, NULL);
			waits--;
		}
		sockfile_release(k->sockfile);
	}
}

void serve(int listener)
{
	struct seccomp_notif_sizes sizes;
	struct seccomp_notif *n;
	struct seccomp_notif_resp *resp;
	struct pollfd p = { .fd = listener, .events = POLLIN };

	listener_fd = listener;
	if (syscall(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes)) {
		ulog(LOG_ERR_, "seccomp notification sizes: %s", strerror(errno));
		return;
	}
	n = calloc(1, sizes.seccomp_notif > sizeof(*n) ? sizes.seccomp_notif : sizeof(*n));
	resp = calloc(1, sizes.seccomp_notif_resp > sizeof(*resp) ? sizes.seccomp_notif_resp
								   : sizeof(*resp));
	if (!n || !resp)
		return;
	if (sizes.seccomp_notif < sizeof(*n))
		sizes.seccomp_notif = sizeof(*n);
	if (sizes.seccomp_notif_resp < sizeof(*resp))
		sizes.seccomp_notif_resp = sizeof(*resp);
	for (;;) {
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p.revents & POLLIN)
			handle(listener, n, resp, &sizes);
		else if (p.revents & (POLLHUP | POLLERR | POLLNVAL))
			break; /* no task uses the filter any more */
	}
	stop_waiters();
	remove_files();
	free(n);
	free(resp);
}
