/*
 * unixify-dispatcher CHANNEL_FD: accept on the listeners the front hands us, route each
 * connection by its local address and port, and pass the accepted socket on:
 *
 *   protocol A: one datagram of one '\0' byte with SCM_RIGHTS carrying the fd, to a
 *               Unix datagram socket found at the route's path (no symlink followed);
 *   protocol B: "03 00 00 00" with the fd, on a SOCK_SEQPACKET registration of the
 *               route's slot (registrations come from the front, checked there).
 *
 * A receiver that is momentarily full makes the connection wait in the receiver's own
 * bounded queue, sent when it becomes writable; past the bound, or with the receiver
 * gone, the connection is reset and counted.  Queued connections hold fds: at a budget
 * well under RLIMIT_NOFILE accepting pauses until they drain.
 *
 * Channel messages (SOCK_SEQPACKET, first byte says which):
 *   front -> us: 'L' + listener fds (staged), 'T' + memfd of a table (commit: the staged
 *                listeners become the listener set), 'R' slot(u32 BE) + fd (a checked
 *                registration: we send its "80 00 00 00"), 'S' status,
 *                'Q' quit (stop accepting, deliver what is queued, exit 0)
 *   us -> front: 't' "ok" or why the table was refused; 's' + memfd of the status text
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "dispatcher.h"

#define ACCEPT_BURST 64
#define MAX_CHANNEL_FDS 253
#define DRAIN_SECONDS 10
#define IDLE_RECEIVERS 1024   /* connected receivers kept without traffic waiting */

enum watch_kind { W_CHANNEL, W_SIGNAL, W_LISTENER, W_RECEIVER, W_REG, W_TIMER, W_GONE };
struct watch {
	int kind;
	void *obj;
};

/* Why a connection was refused; counted and (rate-limited) logged. */
enum reason { R_NO_ROUTE, R_REJECT, R_QUEUE_FULL, R_GONE, R_SYMLINK, R_NOT_SOCKET,
	      R_OWNER, R_PATH, R_NO_SLOT, R_DRAIN, N_REASONS };
static const char *const reason_names[N_REASONS] = {
	"no-route", "reject", "queue-full", "receiver-gone", "symlink", "not-a-socket",
	"wrong-owner", "bad-path", "no-registration", "shutdown",
};

struct conn {
	int fd;
	struct ipaddr local, peer;
};

struct queue {
	struct conn *items;
	uint32_t head, len, cap;
};

struct receiver {
	struct watch w;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	uid_t owner;
	int sock;               /* connected datagram socket, or -1 */
	int in_epoll;           /* sock is in epoll (for one EPOLLOUT at a time) */
	int armed;              /* ... and that EPOLLOUT is pending */
	int ready;              /* on the list flushed at the next tick */
	struct receiver *next_ready;
	struct queue q;
	uint64_t delivered, refused;
	struct receiver *next;  /* hash chain */
};

struct reg {
	struct watch w;
	int fd;
	struct slot *slot;
};

struct slot {
	uint32_t id;
	struct reg **regs;
	int n_regs, cap_regs;
	unsigned rr;
	int armed;
	struct queue q;
	uint64_t delivered, refused;
};

struct listener {
	struct watch w;
	int fd;
	dev_t dev;
	ino_t ino;
};

static int epfd, channel, sigfd, timerfd;

/*
 * Objects let go of while one epoll batch is handled: a later event of the same batch
 * may still name them (a registration whose send failed while a listener was served,
 * a listener a reload closed), so they are marked gone and freed after the batch.
 */
static void **graveyard;
static int n_graves, cap_graves;

static void bury(struct watch *w, void *obj)
{
	w->kind = W_GONE;
	if (n_graves == cap_graves) {
		void **more = realloc(graveyard, (size_t)(cap_graves * 2 + 16) * sizeof(*more));

		if (!more)
			return; /* kept for good rather than freed too early */
		graveyard = more;
		cap_graves = cap_graves * 2 + 16;
	}
	graveyard[n_graves++] = obj;
}

static void empty_graveyard(void)
{
	while (n_graves)
		free(graveyard[--n_graves]);
}
static struct receiver *ready_list;
static int tick_set;
static struct table *table;
static struct listener **listeners;
static int n_listeners;
static int staged[4096];
static int n_staged;
static struct receiver **rbuckets;
static size_t n_rbuckets, n_receivers, n_connected;
static struct slot **slots;
static int n_slots;
static uint64_t queued_total, queue_budget;
static int accepting = 1, paused_until_drain;
static struct timespec resume_at;   /* accepting paused for want of fds until then */
static int quitting;
static struct timespec drain_deadline;
static uint64_t accepted, delivered, refusals[N_REASONS];
static struct { time_t second; uint64_t suppressed; } log_gate[N_REASONS];

static void now(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

static int after(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec >= b->tv_nsec);
}

/* ---- refusing, visibly ---- */

static void reset_close(int fd)
{
	struct linger lg = { 1, 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

static void refuse(struct conn *c, enum reason why, const char *where)
{
	struct timespec ts;
	char local[INET6_ADDRSTRLEN], peer[INET6_ADDRSTRLEN];

	refusals[why]++;
	reset_close(c->fd);
	if (why == R_REJECT)
		return; /* what the configuration asked for */
	now(&ts);
	if (log_gate[why].second == ts.tv_sec) {
		log_gate[why].suppressed++;
		return;
	}
	ipaddr_format(&c->local, local, sizeof(local));
	ipaddr_format(&c->peer, peer, sizeof(peer));
	ulog(LOG_WARN_, "refused a connection from %s port %u to %s port %u: %s%s%s "
	     "(%llu refused for this reason so far, %llu not logged)", peer,
	     ipaddr_port(&c->peer), local, ipaddr_port(&c->local), reason_names[why],
	     where ? " " : "", where ? where : "", (unsigned long long)refusals[why],
	     (unsigned long long)log_gate[why].suppressed);
	log_gate[why].second = ts.tv_sec;
	log_gate[why].suppressed = 0;
}

/* ---- queues ---- */

static int queue_push(struct queue *q, const struct conn *c)
{
	if (q->len == q->cap) {
		uint32_t cap = q->cap ? q->cap * 2 : 16;
		struct conn *items = malloc(cap * sizeof(*items));

		if (!items)
			return -1;
		for (uint32_t i = 0; i < q->len; i++)
			items[i] = q->items[(q->head + i) % q->cap];
		free(q->items);
		q->items = items;
		q->cap = cap;
		q->head = 0;
	}
	q->items[(q->head + q->len++) % q->cap] = *c;
	queued_total++;
	return 0;
}

static struct conn *queue_head(struct queue *q)
{
	return q->len ? &q->items[q->head] : NULL;
}

static void queue_pop(struct queue *q)
{
	q->head = (q->head + 1) % q->cap;
	q->len--;
	queued_total--;
}

static void queue_refuse_all(struct queue *q, enum reason why, const char *where,
			     uint64_t *refused)
{
	struct conn *c;

	while ((c = queue_head(q))) {
		struct conn copy = *c;

		queue_pop(q);
		(*refused)++;
		refuse(&copy, why, where);
	}
}

static void enqueue(struct queue *q, struct conn *c, uint32_t bound, uint64_t *refused,
		    const char *where)
{
	if (q->len >= bound || queue_push(q, c) < 0) {
		(*refused)++;
		refuse(c, R_QUEUE_FULL, where);
	}
}

/* Where connections go, a receiver or a slot, as the queueing code sees it. */
struct outbox {
	struct queue *q;
	uint64_t *delivered, *refused;
	int (*send)(void *to, int fd); /* 0 sent; -1 full (EAGAIN); else the reason */
	void *to;
	const char *where;
};

static void passed_on(const struct outbox *o, int fd)
{
	close(fd);
	(*o->delivered)++;
	delivered++;
}

/* Send what waits, in order: 1 when the destination is full again. */
static int outbox_flush(const struct outbox *o)
{
	struct conn *c;

	while ((c = queue_head(o->q))) {
		int why = o->send(o->to, c->fd);

		if (why < 0)
			return 1;
		if (why) {
			queue_refuse_all(o->q, (enum reason)why, o->where, o->refused);
			return 0;
		}
		passed_on(o, c->fd);
		queue_pop(o->q);
	}
	return 0;
}

/* c to the destination, or behind those waiting for it: 1 when it is full. */
static int outbox_deliver(const struct outbox *o, struct conn *c, uint32_t bound)
{
	int why;

	if (o->q->len) {
		enqueue(o->q, c, bound, o->refused, o->where);
		return 0;
	}
	why = o->send(o->to, c->fd);
	if (why == 0) {
		passed_on(o, c->fd);
	} else if (why < 0) {
		enqueue(o->q, c, bound, o->refused, o->where);
		return 1;
	} else {
		(*o->refused)++;
		refuse(c, (enum reason)why, o->where);
	}
	return 0;
}

/* ---- passing an fd ---- */

static int send_fd(int sock, const void *data, size_t len, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { (void *)data, len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);

	memset(u.buf, 0, sizeof(u.buf));
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* ---- protocol A receivers ---- */

static size_t hash_path(const char *path, uid_t owner)
{
	uint64_t h = 1469598103934665603ULL ^ owner;

	for (; *path; path++)
		h = (h ^ (uint8_t)*path) * 1099511628211ULL;
	return (size_t)(h ^ h >> 29);
}

static int receivers_grow(void)
{
	size_t n = n_rbuckets ? n_rbuckets * 2 : 256;
	struct receiver **b = calloc(n, sizeof(*b));

	if (!b)
		return -1;
	for (size_t i = 0; i < n_rbuckets; i++) {
		for (struct receiver *r = rbuckets[i], *next; r; r = next) {
			size_t h = hash_path(r->path, r->owner) & (n - 1);

			next = r->next;
			r->next = b[h];
			b[h] = r;
		}
	}
	free(rbuckets);
	rbuckets = b;
	n_rbuckets = n;
	return 0;
}

static struct receiver *receiver_get(const char *path, uid_t owner)
{
	struct receiver *r;
	size_t h;

	if (n_rbuckets) {
		for (r = rbuckets[hash_path(path, owner) & (n_rbuckets - 1)]; r; r = r->next) {
			if (r->owner == owner && !strcmp(r->path, path))
				return r;
		}
	}
	if ((n_receivers + 1 > n_rbuckets && receivers_grow()) || !(r = calloc(1, sizeof(*r))))
		return NULL;
	r->w.kind = W_RECEIVER;
	r->w.obj = r;
	r->sock = -1;
	r->owner = owner;
	strcpy(r->path, path); /* fits: checked by the caller */
	h = hash_path(path, owner) & (n_rbuckets - 1);
	r->next = rbuckets[h];
	rbuckets[h] = r;
	n_receivers++;
	return r;
}

static void receiver_disconnect(struct receiver *r)
{
	if (r->sock >= 0) {
		close(r->sock); /* leaves epoll with it */
		n_connected--;
	}
	r->sock = -1;
	r->in_epoll = r->armed = 0;
}

/* Fewer connected sockets kept for receivers with nothing waiting (at a reload, and
 * when twice as many are connected: thousands of %a receivers must not eat the fds). */
static void receivers_trim(void)
{
	if (n_connected <= IDLE_RECEIVERS)
		return;
	for (size_t i = 0; i < n_rbuckets; i++)
		for (struct receiver *r = rbuckets[i]; r; r = r->next)
			if (!r->q.len)
				receiver_disconnect(r);
}

/* Connect to the socket file at r->path: every component opened without following a
 * symlink, the file itself pinned by an O_PATH fd and checked (a socket; its owner when
 * the route names one), then reached through that fd, so what we checked is what we
 * connect to.  0, or the reason. */
static int receiver_connect(struct receiver *r)
{
	struct open_how how = { .flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
				.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS };
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int pin, sock, why = 0;

	if (n_connected >= 2 * IDLE_RECEIVERS)
		receivers_trim();
	pin = (int)syscall(SYS_openat2, AT_FDCWD, r->path, &how, sizeof(how));
	if (pin < 0)
		return errno == ELOOP ? R_SYMLINK : R_GONE;
	if (fstat(pin, &st) < 0)
		why = R_GONE;
	else if (!S_ISSOCK(st.st_mode))
		why = S_ISLNK(st.st_mode) ? R_SYMLINK : R_NOT_SOCKET;
	else if (r->owner != (uid_t)-1 && st.st_uid != r->owner)
		why = R_OWNER;
	if (why) {
		close(pin);
		return why;
	}
	snprintf(sun.sun_path, sizeof(sun.sun_path), "/proc/self/fd/%d", pin);
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		if (sock >= 0)
			close(sock);
		close(pin);
		return R_GONE;
	}
	close(pin);
	r->sock = sock;
	n_connected++;
	return 0;
}

/* 0 sent; -1 with errno EAGAIN: full; else the reason it cannot be sent. */
static int receiver_send(struct receiver *r, int fd)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		int why;

		if (r->sock < 0 && (why = receiver_connect(r)))
			return why;
		if (send_fd(r->sock, "", 1, fd) == 0)
			return 0;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			errno = EAGAIN;
			return -1;
		}
		/* gone or replaced (ECONNREFUSED): look at the path again, once */
		receiver_disconnect(r);
	}
	return R_GONE;
}

/*
 * A full receiver (the kernel queues about 10 datagrams for it) takes one more as soon
 * as it has taken one: answering every such wakeup would cost a wakeup per connection.
 * So one EPOLLOUT at a time is asked for (EPOLLONESHOT), and the receiver is flushed a
 * moment after it, when it has made room for several.  The moment adapts: a flush that
 * finds the queue nearly empty came late (the receiver waited), one that finds room
 * for one or two came early.
 */
#define TICK_MIN_NS 20000
#define TICK_MAX_NS 1000000
static long tick_ns = 200000;

static void receiver_arm(struct receiver *r)
{
	struct epoll_event ev = { .events = EPOLLOUT | EPOLLONESHOT, .data.ptr = &r->w };

	if (r->armed || r->sock < 0)
		return;
	if (epoll_ctl(epfd, r->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, r->sock, &ev) == 0)
		r->in_epoll = r->armed = 1;
}

static void receiver_writable(struct receiver *r)
{
	struct itimerspec its = { .it_value.tv_nsec = tick_ns };

	r->armed = 0;
	if (r->ready)
		return;
	r->ready = 1;
	r->next_ready = ready_list;
	ready_list = r;
	if (!tick_set && timerfd_settime(timerfd, 0, &its, NULL) == 0)
		tick_set = 1;
}

static int receiver_send_to(void *to, int fd)
{
	return receiver_send(to, fd);
}

static struct outbox receiver_outbox(struct receiver *r)
{
	return (struct outbox){ &r->q, &r->delivered, &r->refused, receiver_send_to, r,
				r->path };
}

static void receiver_flush(struct receiver *r)
{
	struct outbox o = receiver_outbox(r);

	if (outbox_flush(&o))
		receiver_arm(r);
}

static void tick(void)
{
	uint64_t expirations, most = 0;
	struct receiver *r = ready_list;

	if (read(timerfd, &expirations, sizeof(expirations)) < 0) {
		/* nothing to read: a tick already handled */
	}
	tick_set = 0;
	ready_list = NULL;
	while (r) {
		struct receiver *next = r->next_ready;
		uint64_t before = r->delivered;

		r->ready = 0;
		receiver_flush(r);
		if (r->delivered - before > most)
			most = r->delivered - before;
		r = next;
	}
	if (most >= 8 && tick_ns > TICK_MIN_NS)
		tick_ns = tick_ns * 3 / 4 < TICK_MIN_NS ? TICK_MIN_NS : tick_ns * 3 / 4;
	else if (most <= 3 && tick_ns < TICK_MAX_NS)
		tick_ns = tick_ns * 5 / 4 > TICK_MAX_NS ? TICK_MAX_NS : tick_ns * 5 / 4;
}

/* ---- protocol B slots ---- */

static struct slot *slot_get(uint32_t id, int create)
{
	struct slot *s, **grown;

	for (int i = 0; i < n_slots; i++)
		if (slots[i]->id == id)
			return slots[i];
	if (!create)
		return NULL;
	grown = realloc(slots, (size_t)(n_slots + 1) * sizeof(*slots));
	if (!grown)
		return NULL;
	slots = grown;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->id = id;
	slots[n_slots++] = s;
	return s;
}

static void reg_events(struct reg *g)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (g->slot->armed ? EPOLLOUT : 0),
				  .data.ptr = &g->w };

	epoll_ctl(epfd, EPOLL_CTL_MOD, g->fd, &ev);
}

static void slot_arm(struct slot *s, int on)
{
	if (s->armed == on)
		return;
	s->armed = on;
	for (int i = 0; i < s->n_regs; i++)
		reg_events(s->regs[i]);
}

static void reg_remove(struct reg *g)
{
	struct slot *s = g->slot;

	for (int i = 0; i < s->n_regs; i++) {
		if (s->regs[i] == g) {
			s->regs[i] = s->regs[--s->n_regs];
			break;
		}
	}
	close(g->fd); /* leaves epoll with it */
	bury(&g->w, g);
	ulog(LOG_INFO_, "a receiver of slot %u left (%d registered)", s->id, s->n_regs);
}

/* 0 sent; -1 EAGAIN: every registration full; R_NO_SLOT: none left. */
static int slot_send(struct slot *s, int fd)
{
	static const uint8_t hdr[4] = { 3, 0, 0, 0 };

	for (int tried = 0; s->n_regs && tried < s->n_regs; tried++) {
		struct reg *g = s->regs[s->rr++ % (unsigned)s->n_regs];

		if (send_fd(g->fd, hdr, sizeof(hdr), fd) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			reg_remove(g);
			tried = -1; /* the list changed: try them all again */
		}
	}
	if (!s->n_regs)
		return R_NO_SLOT;
	errno = EAGAIN;
	return -1;
}

static int slot_send_to(void *to, int fd)
{
	return slot_send(to, fd);
}

static struct outbox slot_outbox(struct slot *s, char *where, size_t size)
{
	snprintf(where, size, "slot %u", s->id);
	return (struct outbox){ &s->q, &s->delivered, &s->refused, slot_send_to, s, where };
}

static void slot_flush(struct slot *s)
{
	char where[32];
	struct outbox o = slot_outbox(s, where, sizeof(where));

	slot_arm(s, outbox_flush(&o));
}

static const uint8_t accepted_msg[4] = { 0x80, 0, 0, 0 };

static void reg_add(uint32_t id, int fd)
{
	struct slot *s = slot_get(id, 1);
	struct reg *g = calloc(1, sizeof(*g));
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };

	if (!s || !g || (s->n_regs == s->cap_regs && !(s->regs = realloc(
		     s->regs, (size_t)(s->cap_regs = s->cap_regs * 2 + 4) * sizeof(*s->regs))))) {
		ulog(LOG_ERR_, "out of memory for a registration of slot %u", id);
		free(g);
		close(fd);
		return;
	}
	g->w.kind = W_REG;
	g->w.obj = g;
	g->fd = fd;
	g->slot = s;
	ev.data.ptr = &g->w;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		free(g);
		close(fd);
		return;
	}
	/* the acceptance comes from here, so it precedes every connection on the socket */
	if (send(fd, accepted_msg, sizeof(accepted_msg), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		close(fd); /* leaves epoll with it */
		free(g);
		return;
	}
	s->regs[s->n_regs++] = g;
	reg_events(g);
	ulog(LOG_INFO_, "a receiver registered slot %u (%d registered)", id, s->n_regs);
	slot_flush(s);
}

static void reg_event(struct reg *g, uint32_t events)
{
	struct slot *s = g->slot;

	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
		char buf[64];
		ssize_t n = recv(g->fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
			reg_remove(g);
			g = NULL;
		}
	}
	if (s->q.len)
		slot_flush(s);
	(void)g;
}

/* ---- accepting and routing ---- */

static void set_accepting(int on)
{
	if (accepting == on)
		return;
	accepting = on;
	for (int i = 0; i < n_listeners; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &listeners[i]->w };

		epoll_ctl(epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, listeners[i]->fd, &ev);
	}
}

static void check_budget(void)
{
	if (quitting)
		return;
	if (queued_total >= queue_budget && !paused_until_drain) {
		paused_until_drain = 1;
		ulog(LOG_WARN_, "%llu connections wait for receivers (the budget): not "
		     "accepting until half of them are passed on",
		     (unsigned long long)queued_total);
	} else if (paused_until_drain && queued_total <= queue_budget / 2) {
		paused_until_drain = 0;
		ulog(LOG_INFO_, "accepting again");
	}
	set_accepting(!paused_until_drain && !resume_at.tv_sec);
}

static void deliver_send(const struct route *rt, struct conn *c)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct receiver *r;
	struct outbox o;

	if (rt->templated) {
		struct ipaddr plain = c->local;
		int v4;
		const uint8_t *bytes = ipaddr_bytes(&c->local, &v4);

		if (v4 && c->local.sa.sa_family == AF_INET6) { /* %a writes IPv4 plainly */
			memset(&plain, 0, sizeof(plain));
			plain.in4.sin_family = AF_INET;
			memcpy(&plain.in4.sin_addr, bytes, 4);
			plain.in4.sin_port = c->local.in6.sin6_port;
		}
		if (ipaddr_expand(rt->target, &plain, SOCK_STREAM, path, sizeof(path)) < 0) {
			refuse(c, R_PATH, rt->target);
			return;
		}
	} else if (strlen(rt->target) < sizeof(path)) {
		strcpy(path, rt->target);
	} else {
		refuse(c, R_PATH, rt->target);
		return;
	}
	r = receiver_get(path, rt->owner);
	if (!r) {
		refuse(c, R_GONE, "(out of memory)");
		return;
	}
	o = receiver_outbox(r);
	if (outbox_deliver(&o, c, rt->queue))
		receiver_arm(r);
}

static void deliver_slot(const struct route *rt, struct conn *c)
{
	struct slot *s = slot_get(rt->slot, 1);
	char where[32];
	struct outbox o;

	if (!s) {
		refuse(c, R_NO_SLOT, "(out of memory)");
		return;
	}
	o = slot_outbox(s, where, sizeof(where));
	if (outbox_deliver(&o, c, rt->queue))
		slot_arm(s, 1);
}

static void route_conn(struct conn *c)
{
	const struct route *rt = table_lookup(table, &c->local, &c->peer);

	if (!rt)
		refuse(c, R_NO_ROUTE, NULL);
	else if (rt->action == ROUTE_REJECT)
		refuse(c, R_REJECT, NULL);
	else if (rt->action == ROUTE_SEND)
		deliver_send(rt, c);
	else
		deliver_slot(rt, c);
}

static void accept_from(struct listener *l)
{
	for (int i = 0; i < ACCEPT_BURST && accepting; i++) {
		struct conn c;
		socklen_t len = sizeof(c.peer);

		memset(&c, 0, sizeof(c));
		c.fd = accept4(l->fd, &c.peer.sa, &len, SOCK_CLOEXEC);
		if (c.fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				ulog(LOG_WARN_, "accept: %s; pausing for 100 ms", strerror(errno));
				now(&resume_at);
				resume_at.tv_nsec += 100000000;
				if (resume_at.tv_nsec >= 1000000000) {
					resume_at.tv_sec++;
					resume_at.tv_nsec -= 1000000000;
				}
				set_accepting(0);
			}
			return; /* EAGAIN, or a connection that went away (ECONNABORTED) */
		}
		accepted++;
		len = sizeof(c.local);
		if (getsockname(c.fd, &c.local.sa, &len) < 0) {
			close(c.fd);
			continue;
		}
		route_conn(&c);
		check_budget();
	}
}

/* ---- the table and listeners from the front ---- */

static void listener_close(struct listener *l)
{
	close(l->fd); /* leaves epoll with it */
	bury(&l->w, l);
}

/* The staged fds become the listener set: a socket we listen on already keeps its
 * listener (and fd), so no connection waiting in its backlog notices the swap. */
static int adopt_listeners(void)
{
	struct listener **next = calloc((size_t)n_staged + 1, sizeof(*next));
	int n = 0;

	if (!next)
		return -1;
	for (int i = 0; i < n_staged; i++) {
		struct stat st;
		struct listener *l = NULL;

		if (fstat(staged[i], &st) < 0) {
			close(staged[i]);
			continue;
		}
		for (int j = 0; j < n_listeners; j++) {
			if (listeners[j] && listeners[j]->dev == st.st_dev &&
			    listeners[j]->ino == st.st_ino) {
				l = listeners[j];
				listeners[j] = NULL;
				close(staged[i]);
				break;
			}
		}
		if (!l && (l = calloc(1, sizeof(*l)))) {
			struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &l->w };

			l->w.kind = W_LISTENER;
			l->w.obj = l;
			l->fd = staged[i];
			l->dev = st.st_dev;
			l->ino = st.st_ino;
			fcntl(l->fd, F_SETFL, fcntl(l->fd, F_GETFL) | O_NONBLOCK);
			if (accepting)
				epoll_ctl(epfd, EPOLL_CTL_ADD, l->fd, &ev);
		} else if (!l) {
			close(staged[i]);
			continue;
		}
		next[n++] = l;
	}
	for (int j = 0; j < n_listeners; j++)
		if (listeners[j])
			listener_close(listeners[j]);
	free(listeners);
	listeners = next;
	n_listeners = n;
	n_staged = 0;
	return 0;
}

/* Every waiting connection, routed again (under a new table). */
static void reroute_queued(void)
{
	struct queue all = { 0 };
	struct conn *c;

	for (size_t i = 0; i < n_rbuckets; i++) {
		for (struct receiver *r = rbuckets[i]; r; r = r->next) {
			while ((c = queue_head(&r->q))) {
				struct conn copy = *c;

				queue_pop(&r->q);
				if (queue_push(&all, &copy) < 0)
					refuse(&copy, R_GONE, "(out of memory)");
			}
		}
	}
	for (int i = 0; i < n_slots; i++) {
		while ((c = queue_head(&slots[i]->q))) {
			struct conn copy = *c;

			queue_pop(&slots[i]->q);
			if (queue_push(&all, &copy) < 0)
				refuse(&copy, R_GONE, "(out of memory)");
		}
	}
	while ((c = queue_head(&all))) {
		struct conn copy = *c;

		queue_pop(&all);
		route_conn(&copy);
	}
	free(all.items);
}

static void reply(char kind, const char *text, int fd)
{
	char buf[512];
	size_t n = (size_t)snprintf(buf, sizeof(buf), "%c%s", kind, text);

	if (n >= sizeof(buf))
		n = sizeof(buf) - 1;
	if (fd >= 0) {
		if (send_fd(channel, buf, n, fd) < 0)
			ulog(LOG_ERR_, "cannot answer the front: %s", strerror(errno));
	} else if (send(channel, buf, n, MSG_NOSIGNAL) < 0) {
		ulog(LOG_ERR_, "cannot answer the front: %s", strerror(errno));
	}
}

static void load_table(int memfd)
{
	struct stat st;
	const char *why = "cannot read it";
	struct table *t = NULL;
	void *text;

	if (fstat(memfd, &st) == 0 && st.st_size > 4) {
		text = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, memfd, 0);
		if (text != MAP_FAILED) {
			t = table_decode(text, (size_t)st.st_size, &why);
			munmap(text, (size_t)st.st_size);
		}
	}
	close(memfd);
	if (!t) {
		for (int i = 0; i < n_staged; i++)
			close(staged[i]);
		n_staged = 0;
		reply('t', why, -1);
		return;
	}
	if (adopt_listeners() < 0) {
		table_free(t);
		reply('t', "out of memory", -1);
		return;
	}
	table_free(table);
	table = t;
	reroute_queued();
	receivers_trim();
	check_budget();
	reply('t', "ok", -1);
}

/* ---- status ---- */

static void write_status(FILE *f)
{
	fprintf(f, "listeners %d%s\naccepted %llu\ndelivered %llu\nwaiting %llu\n"
		"fd-budget %llu\nroutes %d\n", n_listeners,
		accepting ? "" : " (not accepting)", (unsigned long long)accepted,
		(unsigned long long)delivered, (unsigned long long)queued_total,
		(unsigned long long)queue_budget, table ? table_size(table) : 0);
	for (int i = 0; i < N_REASONS; i++)
		fprintf(f, "refused %s %llu\n", reason_names[i], (unsigned long long)refusals[i]);
	for (size_t i = 0; i < n_rbuckets; i++)
		for (struct receiver *r = rbuckets[i]; r; r = r->next)
			fprintf(f, "receiver %s delivered %llu refused %llu waiting %u\n", r->path,
				(unsigned long long)r->delivered, (unsigned long long)r->refused,
				r->q.len);
	for (int i = 0; i < n_slots; i++)
		fprintf(f, "slot %u registered %d delivered %llu refused %llu waiting %u\n",
			slots[i]->id, slots[i]->n_regs, (unsigned long long)slots[i]->delivered,
			(unsigned long long)slots[i]->refused, slots[i]->q.len);
}

static void status(void)
{
	int fd = memfd_create("unixify-status", MFD_CLOEXEC);
	FILE *f = fd < 0 ? NULL : fdopen(dup(fd), "w");

	if (!f) {
		if (fd >= 0)
			close(fd);
		reply('s', "", -1);
		return;
	}
	write_status(f);
	fclose(f);
	reply('s', "", fd);
	close(fd);
}

/* ---- quitting ---- */

static void start_quit(void)
{
	if (quitting)
		return;
	quitting = 1;
	for (int i = 0; i < n_listeners; i++)
		listener_close(listeners[i]);
	n_listeners = 0;
	now(&drain_deadline);
	drain_deadline.tv_sec += DRAIN_SECONDS;
	ulog(LOG_INFO_, "stopping: %llu connections to pass on first",
	     (unsigned long long)queued_total);
}

static void refuse_everything_queued(void)
{
	for (size_t i = 0; i < n_rbuckets; i++)
		for (struct receiver *r = rbuckets[i]; r; r = r->next)
			queue_refuse_all(&r->q, R_DRAIN, r->path, &r->refused);
	for (int i = 0; i < n_slots; i++)
		queue_refuse_all(&slots[i]->q, R_DRAIN, "slot", &slots[i]->refused);
}

/* ---- the channel ---- */

static void channel_message(void)
{
	union {
		char buf[CMSG_SPACE(MAX_CHANNEL_FDS * sizeof(int))];
		struct cmsghdr align;
	} u;
	char data[64];
	struct iovec iov = { data, sizeof(data) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	int fds[MAX_CHANNEL_FDS], n_fds = 0;
	ssize_t n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		start_quit(); /* the front is gone */
		close(channel);
		channel = -1;
		return;
	}
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));

			memcpy(fds + n_fds, CMSG_DATA(cm), (size_t)k * sizeof(int));
			n_fds += k;
		}
	}
	if (data[0] == 'L') {
		for (int i = 0; i < n_fds; i++) {
			if (n_staged < (int)(sizeof(staged) / sizeof(staged[0])))
				staged[n_staged++] = fds[i];
			else
				close(fds[i]);
		}
		return;
	}
	if (data[0] == 'T' && n_fds == 1 && !quitting) {
		load_table(fds[0]);
		return;
	}
	if (data[0] == 'R' && n == 5 && n_fds == 1) {
		uint32_t slot = (uint32_t)(uint8_t)data[1] << 24 | (uint32_t)(uint8_t)data[2] << 16 |
				(uint32_t)(uint8_t)data[3] << 8 | (uint8_t)data[4];

		reg_add(slot, fds[0]);
		return;
	}
	for (int i = 0; i < n_fds; i++)
		close(fds[i]);
	if (data[0] == 'S')
		status();
	else if (data[0] == 'Q')
		start_quit();
	else
		ulog(LOG_ERR_, "unknown message from the front (%c)", data[0]);
}

/* ---- main loop ---- */

static void event(struct watch *w, uint32_t events)
{
	switch (w->kind) {
	case W_CHANNEL:
		channel_message();
		break;
	case W_SIGNAL: {
		struct signalfd_siginfo si;

		if (read(sigfd, &si, sizeof(si)) == sizeof(si))
			start_quit();
		break;
	}
	case W_LISTENER:
		accept_from(w->obj);
		break;
	case W_RECEIVER:
		receiver_writable(w->obj);
		break;
	case W_TIMER:
		tick();
		break;
	case W_REG:
		reg_event(w->obj, events);
		break;
	case W_GONE: /* let go of earlier in this batch */
		break;
	}
	check_budget();
}

static int timeout_ms(void)
{
	struct timespec ts, *until = quitting ? &drain_deadline
				    : resume_at.tv_sec ? &resume_at : NULL;
	long ms;

	if (!until)
		return -1;
	now(&ts);
	ms = (until->tv_sec - ts.tv_sec) * 1000 + (until->tv_nsec - ts.tv_nsec) / 1000000;
	return ms < 0 ? 0 : ms > 1000 ? 1000 : (int)ms + 1;
}

static void budget_init(void)
{
	struct rlimit rl;
	const char *env = getenv("UNIXIFY_FD_BUDGET");

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	/* half for connections waiting; the rest for receivers, listeners, accepting */
	queue_budget = rl.rlim_cur == RLIM_INFINITY ? 1 << 20 : rl.rlim_cur / 2;
	if (env && *env)
		queue_budget = strtoull(env, NULL, 10);
	if (queue_budget < 16)
		queue_budget = 16;
}

static int setup(int argc, char **argv)
{
	static struct watch chan_w = { W_CHANNEL, NULL }, sig_w = { W_SIGNAL, NULL },
			    timer_w = { W_TIMER, NULL };
	struct epoll_event ev = { .events = EPOLLIN };
	sigset_t set;

	log_init();
	if (argc != 2 || (channel = atoi(argv[1])) < 3) {
		fprintf(stderr, "usage: %s CHANNEL_FD (run by 'unixify dispatch')\n", argv[0]);
		return -1;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN); /* the front reloads */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (sigfd < 0 || epfd < 0 || timerfd < 0)
		return -1;
	budget_init();
	ev.data.ptr = &chan_w;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, channel, &ev) < 0)
		return -1;
	ev.data.ptr = &timer_w;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, timerfd, &ev) < 0)
		return -1;
	ev.data.ptr = &sig_w;
	return epoll_ctl(epfd, EPOLL_CTL_ADD, sigfd, &ev);
}

int main(int argc, char **argv)
{
	struct epoll_event evs[64];

	if (setup(argc, argv) < 0) {
		if (argc == 2)
			ulog(LOG_ERR_, "dispatcher: cannot start: %s", strerror(errno));
		return 2;
	}
	for (;;) {
		int n = epoll_wait(epfd, evs, 64, timeout_ms());
		struct timespec ts;

		if (n < 0 && errno != EINTR)
			return 2;
		for (int i = 0; i < n; i++)
			event(evs[i].data.ptr, evs[i].events);
		empty_graveyard();
		now(&ts);
		if (resume_at.tv_sec && after(&ts, &resume_at)) {
			resume_at.tv_sec = 0;
			check_budget();
		}
		if (quitting && (!queued_total || after(&ts, &drain_deadline))) {
			if (queued_total)
				ulog(LOG_WARN_, "stopping: %llu connections could not be passed on "
				     "in %d s", (unsigned long long)queued_total, DRAIN_SECONDS);
			refuse_everything_queued();
			return 0;
		}
	}
}
