/*
 * What we know about file descriptors: which are IP sockets we may convert, which are
 * Unix sockets standing in for IP ones, and the addresses we report for them.
 *
 * A two-level table: chunks of CHUNK entries are mapped on first use, so a process
 * that never makes an IP socket pays nothing and one with a few sockets pays a page or
 * two.  Lookups that find nothing take no lock.  Changes take one short spinlock that
 * is never held across a system call that can block.  The thread holding it has its
 * signals blocked: a handler's socket calls (async-signal-safe by POSIX) run once the
 * lock is released and find the table whole, instead of interrupting an update half
 * done.  Only a signal that cannot wait (a fault in our own code) could re-enter the
 * lock on its thread; the depth counter then makes it see an empty table.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

#include "shim.h"

#define CHUNK_SHIFT 6
#define CHUNK (1u << CHUNK_SHIFT)
#define MAX_FDS (1u << 20) /* the kernel's default nr_open */
#define N_CHUNKS (MAX_FDS / CHUNK)

static _Atomic(struct fd_entry *) chunks[N_CHUNKS];
static atomic_int lock_word;
static __thread int lock_depth __attribute__((tls_model("initial-exec")));
static __thread sigset_t lock_saved_mask __attribute__((tls_model("initial-exec")));

/* Every signal that can wait.  Faults stay open: blocked, the kernel would kill us. */
static void deferrable_signals(sigset_t *set)
{
	static const int sync_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS };

	sigfillset(set);
	for (unsigned i = 0; i < sizeof(sync_signals) / sizeof(sync_signals[0]); i++)
		sigdelset(set, sync_signals[i]);
}

/* Returns with the lock held and this thread's signals blocked, or -- re-entered on a
 * thread that already holds it, by a fault -- without, in which case lock_depth tells
 * fd_get to find nothing. */
void state_lock(void)
{
	int spins = 0, saved = errno;
	sigset_t all, old;

	if (lock_depth) {
		lock_depth++;
		return;
	}
	deferrable_signals(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	lock_depth = 1;
	lock_saved_mask = old;
	errno = saved;
	while (atomic_exchange_explicit(&lock_word, 1, memory_order_acquire)) {
		if (++spins > 64) {
			sched_yield();
			spins = 0;
		}
	}
}

/* Signals that arrived meanwhile are delivered here, with the lock free. */
void state_unlock(void)
{
	int saved = errno;

	if (lock_depth != 1) {
		lock_depth--;
		return;
	}
	atomic_store_explicit(&lock_word, 0, memory_order_release);
	lock_depth = 0;
	pthread_sigmask(SIG_SETMASK, &lock_saved_mask, NULL);
	errno = saved;
}

int state_locked_here(void)
{
	return lock_depth == 1;
}

static void atfork_prepare(void)
{
	state_lock();
}

static void atfork_parent(void)
{
	state_unlock();
}

static void atfork_child(void)
{
	atomic_store(&lock_word, 0);
	lock_depth = 0;
	pthread_sigmask(SIG_SETMASK, &lock_saved_mask, NULL);
}

__attribute__((constructor(101))) static void fdtable_init(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

int fd_tracked(int fd)
{
	struct fd_entry *chunk;

	if (fd < 0 || (unsigned)fd >= MAX_FDS)
		return 0;
	chunk = atomic_load_explicit(&chunks[fd >> CHUNK_SHIFT], memory_order_acquire);
	return chunk && atomic_load_explicit((_Atomic uint8_t *)&chunk[fd & (CHUNK - 1)].kind,
					     memory_order_relaxed) != FD_NONE;
}

void fd_entry_init(struct fd_entry *e)
{
	memset(e, 0, sizeof(*e));
	e->sockfile = -1;
}

struct fd_entry *fd_get(int fd, int create)
{
	struct fd_entry *chunk;

	if (!state_locked_here() || fd < 0 || (unsigned)fd >= MAX_FDS)
		return NULL;
	chunk = atomic_load_explicit(&chunks[fd >> CHUNK_SHIFT], memory_order_relaxed);
	if (!chunk) {
		if (!create)
			return NULL;
		chunk = mmap(NULL, CHUNK * sizeof(*chunk), PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (chunk == MAP_FAILED)
			return NULL;
		for (unsigned i = 0; i < CHUNK; i++)
			chunk[i].sockfile = -1;
		atomic_store_explicit(&chunks[fd >> CHUNK_SHIFT], chunk, memory_order_release);
	}
	return &chunk[fd & (CHUNK - 1)];
}

void fd_snapshot(int fd, struct fd_entry *out)
{
	struct fd_entry *e;

	state_lock();
	e = fd_get(fd, 0);
	if (e && e->kind != FD_NONE)
		*out = *e;
	else
		fd_entry_init(out);
	state_unlock();
}

void fd_store(int fd, const struct fd_entry *src)
{
	struct fd_entry *e;

	state_lock();
	e = fd_get(fd, src->kind != FD_NONE);
	if (e)
		*e = *src;
	state_unlock();
}

void fd_take(int fd, struct fd_entry *out)
{
	struct fd_entry *e;

	fd_entry_init(out);
	state_lock();
	e = fd_get(fd, 0);
	if (e && e->kind != FD_NONE) {
		*out = *e;
		fd_entry_init(e);
	}
	state_unlock();
}

void fd_take_range(unsigned first, unsigned last, struct growbuf *sockfiles)
{
	if (last >= MAX_FDS)
		last = MAX_FDS - 1;
	state_lock();
	for (unsigned fd = first; fd <= last && state_locked_here(); fd++) {
		struct fd_entry *e;

		if (!atomic_load_explicit(&chunks[fd >> CHUNK_SHIFT], memory_order_relaxed)) {
			fd |= CHUNK - 1; /* skip the whole empty chunk */
			continue;
		}
		e = fd_get((int)fd, 0);
		if (!e || e->kind == FD_NONE || e->kind == FD_PASSED)
			continue;
		if (e->sockfile >= 0)
			growbuf_add(sockfiles, &e->sockfile, sizeof(e->sockfile));
		fd_entry_init(e);
	}
	state_unlock();
}

void fd_for_each(void (*fn)(int fd, const struct fd_entry *e, void *), void *arg)
{
	for (unsigned c = 0; c < N_CHUNKS; c++) {
		struct fd_entry *chunk = atomic_load_explicit(&chunks[c], memory_order_relaxed);

		if (!chunk)
			continue;
		for (unsigned i = 0; i < CHUNK; i++) {
			if (chunk[i].kind != FD_NONE)
				fn((int)(c << CHUNK_SHIFT | i), &chunk[i], arg);
		}
	}
}

struct sockfile_visit {
	int sockfile;
	void (*fn)(int fd, void *);
	void *arg;
};

static void visit_sockfile(int fd, const struct fd_entry *e, void *arg)
{
	struct sockfile_visit *v = arg;

	if (e->sockfile == v->sockfile)
		v->fn(fd, v->arg);
}

void fd_for_sockfile(int sockfile, void (*fn)(int fd, void *), void *arg)
{
	struct sockfile_visit v = { sockfile, fn, arg };

	fd_for_each(visit_sockfile, &v);
}

const struct pending_opt *fd_option(const struct fd_entry *e, int level, int name)
{
	for (int i = 0; i < e->n_opts; i++) {
		if (e->opts[i].level == level && e->opts[i].name == name)
			return &e->opts[i];
	}
	return NULL;
}
