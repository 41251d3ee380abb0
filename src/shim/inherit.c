/*
 * Converted sockets across exec.
 *
 * exec keeps fds, but the new image starts with an empty table and would see the Unix
 * sockets behind them: a server that re-executes itself, or an inetd-style server that
 * hands an accepted connection to a program it runs (socat's EXEC, tcpserver), would
 * find AF_UNIX where it expects its IP listener or client.  So the exec calls pass the
 * converted sockets that survive exec in UNIXIFY_INHERIT, and the new image takes them
 * back at load.  The socket files this process would remove go along: after an exec
 * without fork nobody else would.
 *
 *   UNIXIFY_INHERIT=item;item;...
 *   item := "f," SOCK_INO "," NOREMOVE "," DEV "," INO "," PATH     a socket file
 *         | "s," FD "," SOCK_INO "," TYPE "," ROLE "," FAMILY "," LOCAL "," PEER
 *         | "c," FD "," SOCK_INO "," ERRNO "," DIR    an IP socket a rule claimed,
 *                                                   or (ERRNO and DIR 0) one we watch
 *
 * PATH, LOCAL and PEER are in hex (the addresses as struct ipaddr bytes).  Past 64 KiB
 * the items go on in UNIXIFY_INHERIT_1, _2, ...: the kernel takes no environment string
 * over 128 KiB, and a thousand listeners need more.  The new image checks every item
 * (see "import" below): the program may close or move fds between fork and exec, and
 * whoever starts a program can set its environment.  A pending
 * socket (made Unix on a guess) becomes the IP socket it stands for before exec: the
 * new image could not finish the guess.  IP sockets we watch go along, so that the new
 * image records their epoll registrations (a conversion at connect would lose them).
 *
 * The exec calls may run in a child of a multithreaded program, so nothing here
 * allocates with malloc: the new environment is built in memory from mmap.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shim.h"

#define VAR "UNIXIFY_INHERIT="
#define VAR_LEN (sizeof(VAR) - 1)
#define NUM_MAX 21 /* a decimal unsigned long and its separator */
#define SOCK_MAX (2 + 6 * NUM_MAX + 4 * sizeof(struct ipaddr))
#define FILE_MAX (2 + 4 * NUM_MAX + 2 * sizeof(((struct sockfile *)0)->path))

/* ---- export, in the process calling exec ---- */

/* Converted, pending and claimed fds that survive exec, into a growbuf of ints. */
static void collect(int fd, const struct fd_entry *e, void *arg)
{
	int flags;

	if (e->kind != FD_CONVERTED && e->kind != FD_PENDING && e->kind != FD_IP)
		return;
	flags = REAL(fcntl)(fd, F_GETFD);
	if (flags >= 0 && !(flags & FD_CLOEXEC))
		growbuf_add(arg, &fd, sizeof(fd));
}

static char *put_hex(char *p, const void *data, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	const unsigned char *b = data;

	for (size_t i = 0; i < len; i++) {
		*p++ = digits[b[i] >> 4];
		*p++ = digits[b[i] & 15];
	}
	return p;
}

/* "s,FD,SOCK_INO,TYPE,ROLE,FAMILY,LOCAL,PEER;" for a converted fd, "c,..." for an IP
 * one; a pending one becomes its IP socket first. */
static char *put_socket(char *p, int fd)
{
	struct fd_entry e;
	struct stat st;

	fd_snapshot(fd, &e);
	if (e.kind == FD_PENDING) {
		if (materialize(fd))
			return p;
		fd_snapshot(fd, &e);
	}
	if ((e.kind != FD_CONVERTED && e.kind != FD_IP) || fstat(fd, &st))
		return p;
	if (e.kind != FD_CONVERTED) /* its conversion failed: it must not bind implicitly */
		return p + sprintf(p, "c,%d,%lu,%u,%u;", fd, (unsigned long)st.st_ino,
				   e.claim_errno, e.claim_dir);
	p += sprintf(p, "s,%d,%lu,%u,%u,%u,", fd, (unsigned long)st.st_ino, e.type, e.role,
		     e.family);
	p = put_hex(p, &e.local, sizeof(e.local));
	*p++ = ',';
	p = put_hex(p, &e.peer, sizeof(e.peer));
	*p++ = ';';
	return p;
}

/* "f,SOCK_INO,NOREMOVE,DEV,INO,PATH;" for a socket file to remove once its socket is
 * gone: the new image has the duty, whether it keeps the socket or exec closed it. */
static char *put_file(char *p, const struct sockfile *f)
{
	p += sprintf(p, "f,%lu,%u,%lu,%lu,", (unsigned long)f->sock_ino, f->noremove,
		     (unsigned long)f->dev, (unsigned long)f->ino);
	p = put_hex(p, f->path, strlen(f->path));
	*p++ = ';';
	return p;
}

/* One variable's value stays well below the kernel's limit for one string
 * (MAX_ARG_STRLEN, 128 KiB): the items go into UNIXIFY_INHERIT, UNIXIFY_INHERIT_1, ... */
#define PART_LIMIT 65536
#define ITEM_MAX (SOCK_MAX > FILE_MAX ? SOCK_MAX : FILE_MAX)
#define PART_NAME_MAX (VAR_LEN + 12)

/* Is v one of our variables ("UNIXIFY_INHERIT=" or "UNIXIFY_INHERIT_N=")? */
static int inherit_var(const char *v)
{
	if (strncmp(v, VAR, VAR_LEN - 1))
		return 0;
	v += VAR_LEN - 1;
	if (*v == '_')
		v += strspn(v + 1, "0123456789") + 1;
	return *v == '=';
}

struct parts {
	char **vars; /* where the next variable's pointer goes */
	char *start; /* the variable being written */
	char *body;  /* its value */
	char *p;
	int n;
};

/* Room for one more item: end the variable being written if it is full, start one. */
static void part_room(struct parts *x)
{
	if (x->start && x->p - x->start + ITEM_MAX < PART_LIMIT)
		return;
	if (x->start) {
		*x->p++ = 0;
		*x->vars++ = x->start;
	}
	x->start = x->p;
	if (x->n++)
		x->p += sprintf(x->p, "%.*s_%d=", (int)VAR_LEN - 1, VAR, x->n - 1);
	else
		x->p = (char *)memcpy(x->p, VAR, VAR_LEN) + VAR_LEN;
	x->body = x->p;
}

/* envp without our variables, then ours (made from files and fds), in out. */
static void fill_envp(char **out, size_t n_ptrs, char *const *envp,
		      const struct growbuf *files, const struct growbuf *fds)
{
	const struct sockfile *f = (const void *)files->data;
	const int *fd = (const void *)fds->data;
	struct parts x = { .vars = out, .p = (char *)(out + n_ptrs) };

	for (char *const *v = envp; *v; v++)
		if (!inherit_var(*v))
			*x.vars++ = *v;
	for (size_t i = 0; i < files->len / sizeof(*f); i++) { /* files first: sockets need them */
		part_room(&x);
		x.p = put_file(x.p, &f[i]);
	}
	for (size_t i = 0; i < fds->len / sizeof(*fd); i++) {
		part_room(&x);
		x.p = put_socket(x.p, fd[i]);
	}
	if (x.start && x.p > x.body) {
		*x.p = 0;
		*x.vars++ = x.start;
	}
	*x.vars = NULL;
}

/* The file name we were loaded as ("libunixify.so"), found at start-up: how an exec's
 * LD_PRELOAD shows whether the new image loads us. */
static char self_name[NAME_MAX + 1];

static void self_name_init(void)
{
	Dl_info info;
	const char *base;

	if (!dladdr((void *)inherit_init, &info) || !info.dli_fname)
		return;
	base = strrchr(info.dli_fname, '/');
	base = base ? base + 1 : info.dli_fname;
	if (strlen(base) < sizeof(self_name))
		strcpy(self_name, base);
}

/* Does some LD_PRELOAD of envp name a file called as ours?  An image that does not load
 * us has no use for our variables (an inetd's child run plain, a program that cleans its
 * children's environment), and should not see our socket files' paths either.  When we
 * do not know our name, assume it does. */
static int preloads_us(char *const *envp)
{
	size_t want = strlen(self_name);

	if (!want)
		return 1;
	for (; envp && *envp; envp++) {
		const char *v = *envp;

		if (strncmp(v, "LD_PRELOAD=", 11))
			continue;
		for (v += 11; *v; v += strspn(v, " :")) {
			size_t n = strcspn(v, " :"), base = n;

			while (base > 0 && v[base - 1] != '/')
				base--;
			if (n - base == want && !memcmp(v + base, self_name, want))
				return 1;
			v += n;
		}
	}
	return 0;
}

/* An environment for exec: envp without any UNIXIFY_INHERIT, plus ours if we have one
 * and the new image loads us.  Returns envp itself when there is nothing to pass; else
 * memory to release with inherit_release(). */
static char *const *inherit_envp(char *const *envp, size_t *mapped)
{
	struct growbuf files = { 0 }, fds = { 0 };
	size_t n_env = 0, text, n_ptrs;
	char **out = NULL;
	int saved = errno;

	*mapped = 0;
	if (!preloads_us(envp))
		return envp;
	sockfile_list(&files);
	state_lock_masked();
	fd_for_each(collect, &fds);
	state_unlock();
	if ((files.len || fds.len) && envp) {
		while (envp[n_env])
			n_env++;
		text = fds.len / sizeof(int) * SOCK_MAX +
		       files.len / sizeof(struct sockfile) * FILE_MAX;
		n_ptrs = n_env + 2 + text / (PART_LIMIT - ITEM_MAX - PART_NAME_MAX);
		out = map_resize(NULL, 0, n_ptrs * sizeof(char *) + text +
				 (n_ptrs - n_env) * (PART_NAME_MAX + 1), mapped);
	}
	if (out)
		fill_envp(out, n_ptrs, envp, &files, &fds);
	if (files.failed || fds.failed || ((files.len || fds.len) && envp && !out))
		ulog(LOG_WARN_, "out of memory before exec; converted sockets may not all be "
		     "passed on");
	growbuf_free(&files);
	growbuf_free(&fds);
	errno = saved;
	return out ? out : envp;
}

static void inherit_release(char *const *env, size_t mapped)
{
	int saved = errno;

	if (mapped)
		munmap((void *)env, mapped);
	errno = saved;
}

/* The body of an exec or spawn call that takes an environment: pass ours on, and
 * release it when the call returns (a failed exec, or a spawn done). */
#define WITH_INHERITED_ENV(real_call)                                  \
	size_t mapped;                                                 \
	char *const *env = inherit_envp(envp, &mapped);                \
	int r = real_call;                                             \
	inherit_release(env, mapped);                                  \
	return r

API int execve(const char *path, char *const argv[], char *const envp[])
{
	WITH_INHERITED_ENV(REAL(execve)(path, argv, env));
}

API int execvpe(const char *file, char *const argv[], char *const envp[])
{
	WITH_INHERITED_ENV(REAL(execvpe)(file, argv, env));
}

API int fexecve(int fd, char *const argv[], char *const envp[])
{
	WITH_INHERITED_ENV(REAL(fexecve)(fd, argv, env));
}

static int real_execveat(int dirfd, const char *path, char *const argv[], char *const envp[],
			 int flags)
{
	return real.execveat ? real.execveat(dirfd, path, argv, envp, flags)
			     : (int)syscall(SYS_execveat, dirfd, path, argv, envp, flags);
}

API int execveat(int dirfd, const char *path, char *const argv[], char *const envp[],
		 int flags)
{
	WITH_INHERITED_ENV(real_execveat(dirfd, path, argv, env, flags));
}

API int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
		    const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	WITH_INHERITED_ENV(REAL(posix_spawn)(pid, path, fa, attr, argv, env));
}

API int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
		     const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	WITH_INHERITED_ENV(REAL(posix_spawnp)(pid, file, fa, attr, argv, env));
}

API int execv(const char *path, char *const argv[])
{
	return execve(path, argv, environ);
}

API int execvp(const char *file, char *const argv[])
{
	return execvpe(file, argv, environ);
}

/* The list forms: argv gathered on the stack.  With_env: execle, whose envp follows the
 * terminating NULL.  Search: execlp. */
static int exec_list(const char *file, const char *arg0, va_list ap, int with_env,
		     int search)
{
	va_list count;
	size_t n = 1;
	char *const *envp = environ;

	va_copy(count, ap);
	while (va_arg(count, char *))
		n++;
	va_end(count);

	char *argv[n + 1];

	argv[0] = (char *)arg0;
	for (size_t i = 1; i <= n; i++)
		argv[i] = va_arg(ap, char *); /* the last one read is the NULL */
	if (with_env)
		envp = va_arg(ap, char *const *);
	return search ? execvpe(file, argv, envp) : execve(file, argv, envp);
}

#define LIST_FORM(file, arg, with_env, search)                         \
	va_list ap;                                                    \
	int r;                                                         \
	va_start(ap, arg);                                             \
	r = exec_list(file, arg, ap, with_env, search);                \
	va_end(ap);                                                    \
	return r

API int execl(const char *path, const char *arg, ...)
{
	LIST_FORM(path, arg, 0, 0);
}

API int execle(const char *path, const char *arg, ...)
{
	LIST_FORM(path, arg, 1, 0);
}

API int execlp(const char *file, const char *arg, ...)
{
	LIST_FORM(file, arg, 0, 1);
}

/* ---- import, in the new image ---- */

/* A hex field of at most n bytes (exactly n when exact) ending at ',' or ';'. */
static int get_hex(const char **s, void *out, size_t n, int exact, size_t *len)
{
	size_t hexlen = strcspn(*s, ",;");

	if (!(*s)[hexlen] || hexlen % 2 || hexlen / 2 > n || (exact && hexlen / 2 != n) ||
	    hex_decode(*s, hexlen / 2, out))
		return -1;
	*len = hexlen / 2;
	*s += hexlen + 1;
	return 0;
}

/*
 * The variable comes from our caller, who may be anybody: an item is a claim to check.
 * Sockets first (pass 1): the fd must be an AF_UNIX socket of the announced type and
 * inode.  Then files (pass 2): the path must be that socket file (lstat, no symlink),
 * and either bound to a socket we now hold (sock_diag: the socket's file is this inode)
 * or -- its socket gone, closed by exec -- a stale file of our own uid that no socket
 * is bound to.  A file item of a socket still alive elsewhere is not ours to remove,
 * but names a file a socket of ours may have been accepted from.  Last (pass 3): a
 * socket is taken back only if sock_diag says it is bound to, or accepted from, one of
 * those files, or -- a client -- its peer is where the rules send the announced peer
 * address.  So a plain Unix socket the program has of its own is never relabelled, and
 * no file that was not one of ours is removed.
 */
struct sock_item {
	int fd;
	unsigned long sock_ino;
	struct fd_entry e;
};

struct file_item {
	unsigned long sock_ino, dev, ino;
	unsigned noremove;
	char path[sizeof(((struct sockfile *)0)->path)];
};

struct known_file {
	struct stat st;
	char path[sizeof(((struct sockfile *)0)->path)];
};

struct import {
	int pass;               /* 1 sockets, 2 files */
	struct growbuf socks;   /* struct sock_item that passed pass 1 */
	struct growbuf files;   /* struct known_file: files named by trustworthy items */
	int ignored;
};

static int get_file(const char **s, struct file_item *f)
{
	size_t len;
	int used = 0;

	if (sscanf(*s, "f,%lu,%u,%lu,%lu,%n", &f->sock_ino, &f->noremove, &f->dev, &f->ino,
		   &used) != 4 || !used)
		return -1;
	*s += used;
	if (get_hex(s, f->path, sizeof(f->path) - 1, 0, &len) || (*s)[-1] != ';')
		return -1;
	f->path[len] = 0;
	return 0;
}

static int get_socket(const char **s, struct sock_item *it)
{
	unsigned type, role, family;
	size_t len;
	int used = 0;

	fd_entry_init(&it->e);
	if (sscanf(*s, "s,%d,%lu,%u,%u,%u,%n", &it->fd, &it->sock_ino, &type, &role, &family,
		   &used) != 5 || !used)
		return -1;
	*s += used;
	if (get_hex(s, &it->e.local, sizeof(it->e.local), 1, &len) || (*s)[-1] != ',' ||
	    get_hex(s, &it->e.peer, sizeof(it->e.peer), 1, &len) || (*s)[-1] != ';')
		return -1;
	it->e.kind = FD_CONVERTED;
	it->e.type = (uint8_t)type;
	it->e.role = (uint8_t)role;
	it->e.family = (uint8_t)family;
	return 0;
}

int sockopt_value(int fd, int name)
{
	socklen_t len = sizeof(int);
	int v;

	return REAL(getsockopt)(fd, SOL_SOCKET, name, &v, &len) == 0 ? v : -1;
}

static int sockopt_is(int fd, int name, int want)
{
	return sockopt_value(fd, name) == want;
}

/* A "c," item: fd, if it is the IP socket announced (and not a passed one), keeps its
 * failed claim, or with none is watched as it was.  A forged one can only make a socket
 * fail, never open anything. */
static int take_claim(const char **s, struct import *im)
{
	unsigned err, dir;
	unsigned long ino;
	struct fd_entry e;
	struct stat st;
	int fd, used = 0;

	if (sscanf(*s, "c,%d,%lu,%u,%u;%n", &fd, &ino, &err, &dir, &used) != 4 || !used ||
	    err > 255 || (err ? dir != DIR_IN && dir != DIR_OUT : dir != 0))
		return -1;
	*s += used;
	if (im->pass != 1)
		return 0;
	fd_entry_init(&e);
	e.kind = FD_IP;
	e.family = (uint8_t)sockopt_value(fd, SO_DOMAIN);
	e.type = (uint8_t)sockopt_value(fd, SO_TYPE);
	e.claim_errno = (uint8_t)err;
	e.claim_dir = (uint8_t)dir;
	if (fd >= 0 && !fd_tracked(fd) && !fstat(fd, &st) && S_ISSOCK(st.st_mode) &&
	    st.st_ino == ino &&
	    (e.family == AF_INET || e.family == AF_INET6) &&
	    (e.type == SOCK_STREAM || e.type == SOCK_DGRAM))
		fd_store(fd, &e);
	else
		im->ignored++;
	return 0;
}

/* A receiver (receive.c) stands in for a TCP listener with a datagram socket. */
static int type_plausible(const struct sock_item *it)
{
	if (it->e.role == ROLE_RECEIVER || it->e.role == ROLE_RECEIVING)
		return it->e.type == SOCK_STREAM && sockopt_is(it->fd, SO_TYPE, SOCK_DGRAM);
	return sockopt_is(it->fd, SO_TYPE, it->e.type) && it->e.role <= ROLE_ACCEPTED;
}

/* Pass 1: fd is (still) the Unix socket announced. */
static int socket_plausible(const struct sock_item *it)
{
	struct stat st;

	return it->fd >= 0 && !fstat(it->fd, &st) && S_ISSOCK(st.st_mode) &&
	       st.st_ino == it->sock_ino && sockopt_is(it->fd, SO_DOMAIN, AF_UNIX) &&
	       type_plausible(it) && (it->e.family == AF_INET || it->e.family == AF_INET6);
}

static const struct sock_item *held(const struct import *im, unsigned long sock_ino)
{
	const struct sock_item *it = (const void *)im->socks.data;

	for (size_t i = 0; i < im->socks.len / sizeof(*it); i++)
		if (it[i].sock_ino == sock_ino)
			return &it[i];
	return NULL;
}

/* Pass 2: adopt the file if it is ours to remove. */
static void take_file(struct import *im, const struct file_item *f)
{
	struct known_file k;
	int alive, ours;

	if (lstat(f->path, &k.st))
		return; /* gone: nothing to remove */
	if (!S_ISSOCK(k.st.st_mode) || k.st.st_dev != f->dev || k.st.st_ino != f->ino) {
		im->ignored++;
		return;
	}
	alive = unix_socket_alive((ino_t)f->sock_ino);
	if (alive > 0 && socket_of_file(f->sock_ino, &k.st)) {
		memcpy(k.path, f->path, sizeof(k.path));
		growbuf_add(&im->files, &k, sizeof(k)); /* sockets may come from it */
		ours = held(im, f->sock_ino) != NULL;
	} else if (alive == 0 && k.st.st_uid == geteuid() && !socket_file_live(f->path, &k.st)) {
		ours = 1;
	} else {
		im->ignored++;
		return;
	}
	if (ours)
		sockfile_adopt(f->path, k.st.st_dev, k.st.st_ino, (ino_t)f->sock_ino,
			       (int)f->noremove);
}

/* Do the rules send a socket with addr in direction dir to (path, or the Unix name of
 * the socket fd when path is NULL: its peer's for DIR_OUT)? */
static int rules_lead_to(const struct sock_item *it, int dir, const struct ipaddr *addr,
			 const char *path)
{
	struct sock_query q = { .dir = dir, .type = it->e.type, .addr = addr };
	struct sockaddr_un want, got;
	socklen_t want_len, got_len = sizeof(got);

	if (addr->sa.sa_family != it->e.family ||
	    rule_target(it->fd, &q, &want, &want_len) != 0)
		return 0;
	if (path)
		return !strncmp(want.sun_path, path, sizeof(want.sun_path));
	return !REAL(getpeername)(it->fd, (struct sockaddr *)&got, &got_len) &&
	       got_len == want_len && !memcmp(&got, &want, want_len);
}

/* Pass 3: is the socket really one we converted?  Bound to one of the files, or accepted
 * from one the rules put the announced local address at, or a client whose peer is
 * where the rules send the announced peer address. */
static int socket_genuine(const struct import *im, const struct sock_item *it)
{
	const struct known_file *k = (const void *)im->files.data;
	dev_t dev;
	ino_t ino;

	if (!unix_socket_file((ino_t)it->sock_ino, &dev, &ino))
		k = NULL; /* no file: a client, if anything */
	for (size_t i = 0; k && i < im->files.len / sizeof(*k); i++) {
		if (k[i].st.st_dev != dev || k[i].st.st_ino != ino)
			continue;
		if (it->e.role != ROLE_ACCEPTED) /* bound there: the file was adopted */
			return sockfile_by_socket((ino_t)it->sock_ino) >= 0;
		return rules_lead_to(it, DIR_IN, &it->e.local, k[i].path);
	}
	return it->e.role == ROLE_CLIENT && rules_lead_to(it, DIR_OUT, &it->e.peer, NULL);
}

static void take_socket(struct sock_item *it)
{
	it->e.sockfile = sockfile_by_socket((ino_t)it->sock_ino);
	if (it->e.role == ROLE_LISTENER) {
		listener_note(&it->e.local);
		fake_port_share(); /* for the workers it may fork */
	}
	fd_store(it->fd, &it->e);
	ulog(LOG_DEBUG_, "fd %d: inherited across exec as a converted socket", it->fd);
}

/* The items of one variable for this pass; -1 when malformed. */
static int inherit_part(const char *s, struct import *im)
{
	struct sock_item it;
	struct file_item f;

	while (*s) {
		if (*s == 'c') {
			if (take_claim(&s, im))
				return -1;
		} else if (*s == 'f') {
			if (get_file(&s, &f))
				return -1;
			if (im->pass == 2)
				take_file(im, &f);
		} else {
			if (get_socket(&s, &it))
				return -1;
			if (im->pass == 2)
				continue;
			if (socket_plausible(&it))
				growbuf_add(&im->socks, &it, sizeof(it));
			else
				im->ignored++;
		}
	}
	return 0;
}

/* "UNIXIFY_INHERIT", then "UNIXIFY_INHERIT_1", ... */
static const char *part_name(char *buf, int n)
{
	if (n)
		snprintf(buf, PART_NAME_MAX, "%.*s_%d", (int)VAR_LEN - 1, VAR, n);
	else
		snprintf(buf, PART_NAME_MAX, "%.*s", (int)VAR_LEN - 1, VAR);
	return buf;
}

/* Pass im->pass over every variable; -1 (logged) when one is malformed. */
static int inherit_pass(struct import *im)
{
	char name[PART_NAME_MAX];
	const char *s;

	for (int n = 0; (s = getenv(part_name(name, n))) != NULL; n++) {
		if (inherit_part(s, im)) {
			ulog(LOG_WARN_, "%s is malformed; inherited sockets keep their Unix "
			     "addresses", name);
			return -1;
		}
	}
	return 0;
}

void inherit_init(void)
{
	struct import im = { .pass = 1 };
	char name[PART_NAME_MAX];
	struct sock_item *it;

	self_name_init();
	if (!getenv("UNIXIFY_INHERIT"))
		return;
	if (!inherit_pass(&im) && (im.pass = 2, !inherit_pass(&im))) {
		it = (void *)im.socks.data;
		for (size_t i = 0; i < im.socks.len / sizeof(*it); i++) {
			if (socket_genuine(&im, &it[i]))
				take_socket(&it[i]);
			else
				im.ignored++;
		}
		if (im.ignored)
			ulog(LOG_WARN_, "UNIXIFY_INHERIT: ignored %d items that are not sockets "
			     "or socket files of ours", im.ignored);
	}
	growbuf_free(&im.socks);
	growbuf_free(&im.files);
	/* what we pass on is made afresh at each exec */
	for (int n = 0; getenv(part_name(name, n)); n++)
		unsetenv(name);
}
