/*
 * What we know about file descriptors: which are IP sockets we may convert, which are
 * Unix sockets standing in for IP ones, and the addresses we report for them.
 *
 * A two-level table: chunks of CHUNK entries are mapped on first use, so a process
 * that never makes an IP socket pays nothing and one with a few sockets pays a page or
 * two.  Lookups that find nothing take no lock.  Changes take one short spinlock that
 * is never held across a system call that can block; socket calls from a signal handler
 * (async-signal-safe by POSIX) are recorded like any other (see the lock word below).
 *
 * An entry holds a few epoll registrations and options inline, so that it stays small
 * and is copied by value.  More spill into a second table of the same shape: per fd
 * number, a list per kind that grows.  The entry's spill id says which lists there are
 * its own, so a snapshot stored back keeps them, and a new socket at the same number
 * (id 0) never sees its predecessor's.
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

/*
 * The lock word holds its holder's thread id in the high half and how deep that thread
 * holds it in the low half, and changes only by single atomic operations.  So a signal
 * handler that interrupts its own thread anywhere -- inside a critical section, or half
 * way through taking or releasing the lock -- sees a consistent word: if its thread holds
 * the lock it goes on holding it one level deeper, and it finds the table as its thread
 * left it, which is whole for everything but the entry that thread is changing.
 * Sections that change what entries share (the socket-file records, the spilled lists,
 * the datagram peers) instead keep signals blocked while they run (state_lock_masked),
 * so a handler never sees those half done; the common per-fd updates pay no system call.
 */
#define DEPTH_BITS 32
#define DEPTH_MASK ((UINT64_C(1) << DEPTH_BITS) - 1)
static _Atomic uint64_t lock_word;
static _Atomic uint32_t thread_ids;
static __thread uint32_t thread_id __attribute__((tls_model("initial-exec")));
static __thread uint64_t masked_at __attribute__((tls_model("initial-exec")));
static __thread sigset_t lock_saved_mask __attribute__((tls_model("initial-exec")));

struct spill {
	uint32_t id;
	struct growbuf list[2]; /* by enum fd_records */
};
static struct spill *spills[N_CHUNKS]; /* with the lock held only */
static uint32_t spill_ids;

static void spill_drop(int fd);

/* This thread's id in the lock word.  A handler that runs while it is being assigned
 * may assign another one; either serves, since the handler holds nothing after. */
static uint64_t self(void)
{
	if (!thread_id) {
		uint32_t id = atomic_fetch_add_explicit(&thread_ids, 1, memory_order_relaxed) + 1;

		thread_id = id ? id : 1;
	}
	return (uint64_t)thread_id << DEPTH_BITS;
}

/* How deep this thread holds the lock: 0 when it does not. */
static uint64_t depth_here(void)
{
	uint64_t w = atomic_load_explicit(&lock_word, memory_order_relaxed);

	return (w & ~DEPTH_MASK) == self() ? w & DEPTH_MASK : 0;
}

void state_lock(void)
{
	uint64_t me = self(), w;
	int spins = 0;

	for (;;) {
		w = atomic_load_explicit(&lock_word, memory_order_acquire);
		if ((w & ~DEPTH_MASK) == me || w == 0) {
			/* one level deeper on our own thread (a handler), or free */
			if (atomic_compare_exchange_weak_explicit(&lock_word, &w, w ? w + 1 : me | 1,
								  memory_order_acquire,
								  memory_order_relaxed))
				return;
			continue;
		}
		if (++spins > 64) {
			sched_yield();
			spins = 0;
		}
	}
}

/* Every signal that can wait.  Faults stay open: blocked, the kernel would kill us. */
static void deferrable_signals(sigset_t *set)
{
	static const int sync_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS };

	sigfillset(set);
	for (unsigned i = 0; i < sizeof(sync_signals) / sizeof(sync_signals[0]); i++)
		sigdelset(set, sync_signals[i]);
}

void state_mask_signals(void)
{
	sigset_t all, old;
	int saved = errno;

	if (masked_at)
		return;
	deferrable_signals(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	lock_saved_mask = old;
	masked_at = depth_here();
	errno = saved;
}

void state_lock_masked(void)
{
	state_lock(); /* a handler running before the mask finds nothing changed yet */
	state_mask_signals();
}

/* Signals held back by a masked section are delivered here, with the lock free. */
void state_unlock(void)
{
	uint64_t depth = depth_here(), w = atomic_load_explicit(&lock_word, memory_order_relaxed);
	int restore = masked_at && masked_at == depth, saved = errno;

	/* a handler between the load and the exchange leaves the word as it found it */
	while (!atomic_compare_exchange_weak_explicit(&lock_word, &w,
						      (w & DEPTH_MASK) == 1 ? 0 : w - 1,
						      memory_order_release, memory_order_relaxed))
		;
	if (restore) {
		masked_at = 0;
		pthread_sigmask(SIG_SETMASK, &lock_saved_mask, NULL);
		errno = saved;
	}
}

int state_locked_here(void)
{
	return depth_here() != 0;
}

static void atfork_prepare(void)
{
	state_lock_masked();
}

/* The child's only thread is the one that forked, with the same id: it releases the
 * lock as the parent does, one level (fork may run in a handler inside a section). */
static void atfork_release(void)
{
	state_unlock();
}

__attribute__((constructor(101))) static void fdtable_init(void)
{
	pthread_atfork(atfork_prepare, atfork_release, atfork_release);
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

/* Publish a fresh chunk for fd; when a signal handler on this thread published one
 * meanwhile, drop ours and use that. */
static struct fd_entry *publish_chunk(int fd, struct fd_entry *chunk)
{
	struct fd_entry *none = NULL;

	if (atomic_compare_exchange_strong_explicit(&chunks[fd >> CHUNK_SHIFT], &none, chunk,
						    memory_order_release, memory_order_acquire))
		return chunk;
	munmap(chunk, CHUNK * sizeof(*chunk));
	return none;
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
		chunk = publish_chunk(fd, chunk);
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
	if (e && src->kind == FD_NONE)
		spill_drop(fd);
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
		spill_drop(fd);
		fd_entry_init(e);
	}
	state_unlock();
}

void fd_take_range(unsigned first, unsigned last, struct growbuf *sockfiles)
{
	if (last >= MAX_FDS)
		last = MAX_FDS - 1;
	state_lock_masked();
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
		spill_drop((int)fd);
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

/* ---- epoll registrations and options: inline, then spilled ---- */

struct record_list {
	char *items; /* inline */
	uint8_t *n;
	unsigned max;
	size_t size, key; /* of an item; of the key it starts with */
};

static void records_of(struct fd_entry *e, int list, struct record_list *r)
{
	if (list == REC_EPOLL)
		*r = (struct record_list){ (char *)e->epoll, &e->n_epoll, INLINE_EPOLL_REGS,
					   sizeof(struct epoll_reg), sizeof(int) };
	else
		*r = (struct record_list){ (char *)e->opts, &e->n_opts, INLINE_OPTS,
					   sizeof(struct pending_opt), 2 * sizeof(int) };
}

/* fd's spilled lists if they are those of the entry whose spill id is *id; with create,
 * fresh ones (the id set) if not.  NULL without memory. */
static struct spill *spill_get(int fd, uint32_t *id, int create)
{
	struct spill *chunk, *s;
	size_t size;

	if (fd < 0 || (unsigned)fd >= MAX_FDS || !state_locked_here() || (!*id && !create))
		return NULL;
	state_mask_signals(); /* until the unlock: the lists are shared */
	chunk = spills[fd >> CHUNK_SHIFT];
	if (!chunk) {
		if (!create)
			return NULL;
		chunk = map_resize(NULL, 0, CHUNK * sizeof(*chunk), &size);
		if (!chunk)
			return NULL;
		spills[fd >> CHUNK_SHIFT] = chunk;
	}
	s = &chunk[fd & (CHUNK - 1)];
	if (*id && s->id == *id)
		return s;
	if (!create)
		return NULL;
	spill_drop(fd);
	if (++spill_ids == 0)
		spill_ids = 1;
	s->id = *id = spill_ids;
	return s;
}

static void spill_drop(int fd)
{
	struct spill *chunk = spills[fd >> CHUNK_SHIFT];

	/* id 0: nothing kept (a neighbour's spill must not cost every close two syscalls) */
	if (!chunk || !chunk[fd & (CHUNK - 1)].id)
		return;
	state_mask_signals(); /* until the unlock: the lists are shared */
	chunk[fd & (CHUNK - 1)].id = 0;
	growbuf_free(&chunk[fd & (CHUNK - 1)].list[REC_EPOLL]);
	growbuf_free(&chunk[fd & (CHUNK - 1)].list[REC_OPT]);
}

static char *find_in(char *items, size_t n, const struct record_list *r, const void *key)
{
	for (size_t i = 0; i < n; i++) {
		if (!memcmp(items + i * r->size, key, r->key))
			return items + i * r->size;
	}
	return NULL;
}

void *fd_record_find(int fd, struct fd_entry *e, int list, const void *key)
{
	struct record_list r;
	struct spill *s;
	char *item;

	records_of(e, list, &r);
	item = find_in(r.items, *r.n, &r, key);
	if (item || !(s = spill_get(fd, &e->spill, 0)))
		return item;
	return find_in(s->list[list].data, s->list[list].len / r.size, &r, key);
}

int fd_record_put(int fd, struct fd_entry *e, int list, const void *rec)
{
	struct record_list r;
	struct spill *s;
	char *item = fd_record_find(fd, e, list, rec);

	records_of(e, list, &r);
	if (item) {
		memcpy(item, rec, r.size);
		return 0;
	}
	if (*r.n < r.max) {
		memcpy(r.items + *r.n * r.size, rec, r.size);
		(*r.n)++;
		return 0;
	}
	s = spill_get(fd, &e->spill, 1);
	if (!s || growbuf_add(&s->list[list], rec, r.size)) {
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

void fd_record_del(int fd, struct fd_entry *e, int list, const void *key)
{
	struct record_list r;
	struct growbuf *b;
	struct spill *s;
	char *item;

	records_of(e, list, &r);
	item = find_in(r.items, *r.n, &r, key);
	if (item) {
		memmove(item, r.items + --*r.n * r.size, r.size);
		return;
	}
	if (!(s = spill_get(fd, &e->spill, 0)))
		return;
	b = &s->list[list];
	item = find_in(b->data, b->len / r.size, &r, key);
	if (item) {
		b->len -= r.size;
		memmove(item, b->data + b->len, r.size);
	}
}

void fd_store_no_epoll(int fd, struct fd_entry *e)
{
	struct spill *s;

	e->n_epoll = 0;
	if (e->spill) {
		state_lock_masked();
		s = spill_get(fd, &e->spill, 0);
		if (s)
			growbuf_free(&s->list[REC_EPOLL]);
		state_unlock();
	}
	fd_store(fd, e);
}

int fd_record_copy_opts(int from, const struct fd_entry *src, int to, struct fd_entry *dst)
{
	uint32_t id = src->spill;
	struct spill *s = spill_get(from, &id, 0);
	size_t size = sizeof(struct pending_opt);

	dst->spill = 0;
	for (size_t i = 0; s && i < s->list[REC_OPT].len / size; i++) {
		if (fd_record_put(to, dst, REC_OPT, s->list[REC_OPT].data + i * size))
			return -1;
	}
	return 0;
}

int fd_record_at(int fd, const struct fd_entry *e, int list, unsigned i, void *out)
{
	struct record_list r;
	uint32_t id = e->spill;
	struct spill *s;
	int found = -1;

	records_of((struct fd_entry *)e, list, &r); /* read only */
	if (i < *r.n) {
		memcpy(out, r.items + i * r.size, r.size);
		return 0;
	}
	if (!id)
		return -1;
	i -= *r.n;
	state_lock_masked();
	s = spill_get(fd, &id, 0);
	if (s && (i + 1) * r.size <= s->list[list].len) {
		memcpy(out, s->list[list].data + i * r.size, r.size);
		found = 0;
	}
	state_unlock();
	return found;
}

int fd_option(int fd, const struct fd_entry *e, int level, int name, struct pending_opt *out)
{
	const int key[2] = { level, name };
	uint32_t id = e->spill;
	struct record_list r;
	struct spill *s;
	const char *o;

	records_of((struct fd_entry *)e, REC_OPT, &r); /* read only */
	o = find_in(r.items, *r.n, &r, key);
	if (o) {
		memcpy(out, o, sizeof(*out));
		return 0;
	}
	if (!id)
		return -1;
	state_lock_masked();
	s = spill_get(fd, &id, 0);
	o = s ? find_in(s->list[REC_OPT].data, s->list[REC_OPT].len / r.size, &r, key) : NULL;
	if (o)
		memcpy(out, o, sizeof(*out));
	state_unlock();
	return o ? 0 : -1;
}
