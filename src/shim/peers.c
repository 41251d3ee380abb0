/*
 * Datagram peers: which IP address the program sees for which Unix address.
 *
 * A converted datagram socket receives from Unix addresses (a wrapped client's private
 * path, a native client's path or abstract name) and the program expects IP addresses
 * it can send replies to.  Each Unix address seen gets a stable stand-in (loopback with
 * a port of its own), and sending to that stand-in goes back to the Unix address.
 * Destinations a rule converted are recorded the other way round, so that a reply from
 * the rule's path reports the IP address the program sent to.
 *
 * One table per process, hashed both ways, recycled oldest first when full.  It lives
 * in one mmap made at the first datagram, and is used with the state lock held only
 * for the lookup itself.  Changes block signals (state_lock_masked); lookups, made for
 * every datagram, do not: under the plain lock only a signal handler on this thread can
 * change the table meanwhile, and it finishes before the lookup goes on, so a lookup
 * that finds the generation moved is made again under the masked lock.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

#include "shim.h"

#define MAX_PEERS 1024 /* a power of two */
#define NO_PEER (-1)

struct peer {
	struct ipaddr ip;
	unsigned stamp;             /* the clock when it was recorded */
	int16_t next_ip, next_unix; /* hash chains */
	uint8_t used;
	uint8_t dest;               /* a destination the program sent to, not a sender */
	uint8_t len;                /* bytes of path used; 0: an unnamed socket */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

struct peer_table {
	int16_t head_ip[MAX_PEERS], head_unix[MAX_PEERS];
	unsigned clock;             /* next slot to recycle */
	struct peer peers[MAX_PEERS];
};

static struct peer_table *table;
static atomic_uint generation; /* moved by every change */

static unsigned hash_bytes(const void *p, size_t n, unsigned h)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 16777619u; /* FNV-1a */
	return h;
}

static unsigned hash_ip(const struct ipaddr *a)
{
	return hash_bytes(a, ipaddr_len(a), 2166136261u) & (MAX_PEERS - 1);
}

static unsigned hash_unix(const char *path, size_t len, int family)
{
	return hash_bytes(path, len, 2166136261u ^ (unsigned)family) & (MAX_PEERS - 1);
}

static int ip_equal(const struct ipaddr *a, const struct ipaddr *b)
{
	return a->sa.sa_family == b->sa.sa_family && !memcmp(a, b, ipaddr_len(a));
}

/* With the lock held: make sure the table exists. */
static int table_ready(void)
{
	struct peer_table *t;

	if (table)
		return 0;
	t = mmap(NULL, sizeof(*t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t == MAP_FAILED)
		return -1;
	memset(t->head_ip, 0xff, sizeof(t->head_ip));
	memset(t->head_unix, 0xff, sizeof(t->head_unix));
	table = t;
	return 0;
}

static void unlink_chain(int16_t *head, int idx, int by_ip)
{
	for (int16_t *p = head; *p != NO_PEER;) {
		struct peer *e = &table->peers[*p];

		if (*p == idx) {
			*p = by_ip ? e->next_ip : e->next_unix;
			return;
		}
		p = by_ip ? &e->next_ip : &e->next_unix;
	}
}

static int find_unix(const char *path, size_t len, int family)
{
	int i = table->head_unix[hash_unix(path, len, family)];

	for (; i != NO_PEER; i = table->peers[i].next_unix) {
		const struct peer *e = &table->peers[i];

		if (e->len == len && e->ip.sa.sa_family == family && !memcmp(e->path, path, len))
			return i;
	}
	return NO_PEER;
}

static int find_ip(const struct ipaddr *a)
{
	int i = table->head_ip[hash_ip(a)];

	for (; i != NO_PEER; i = table->peers[i].next_ip) {
		if (ip_equal(&table->peers[i].ip, a))
			return i;
	}
	return NO_PEER;
}

static void forget(int idx)
{
	struct peer *e = &table->peers[idx];

	if (!e->used)
		return;
	unlink_chain(&table->head_ip[hash_ip(&e->ip)], idx, 1);
	unlink_chain(&table->head_unix[hash_unix(e->path, e->len, e->ip.sa.sa_family)], idx, 0);
	e->used = 0;
}

/* With the lock held: record path <-> ip, replacing older pairings of either. */
static void insert(const char *path, size_t len, const struct ipaddr *ip, int dest)
{
	int idx;
	struct peer *e;

	if ((idx = find_unix(path, len, ip->sa.sa_family)) != NO_PEER)
		forget(idx);
	if ((idx = find_ip(ip)) != NO_PEER)
		forget(idx);
	atomic_fetch_add(&generation, 1);
	idx = (int)(table->clock & (MAX_PEERS - 1));
	forget(idx);
	e = &table->peers[idx];
	e->stamp = table->clock++;
	e->ip = *ip;
	e->len = (uint8_t)len;
	memcpy(e->path, path, len);
	e->used = 1;
	e->dest = (uint8_t)dest;
	e->next_ip = table->head_ip[hash_ip(ip)];
	table->head_ip[hash_ip(ip)] = (int16_t)idx;
	e->next_unix = table->head_unix[hash_unix(path, len, ip->sa.sa_family)];
	table->head_unix[hash_unix(path, len, ip->sa.sa_family)] = (int16_t)idx;
}

static size_t path_len(const struct sockaddr_un *sun, socklen_t len)
{
	size_t off = offsetof(struct sockaddr_un, sun_path);

	if (len <= off)
		return 0;
	len -= (socklen_t)off;
	if (len > sizeof(sun->sun_path))
		len = sizeof(sun->sun_path);
	/* a path may come with its terminating NUL or without; compare without */
	if (sun->sun_path[0])
		return strnlen(sun->sun_path, len);
	return len;
}

/* Run lookup (which only reads the table and writes its results) under the plain lock,
 * and again under the masked one if the table changed meanwhile.  Its result. */
static int look_up(int (*lookup)(void *), void *arg)
{
	unsigned before;
	int r;

	state_lock();
	before = atomic_load(&generation);
	r = table ? lookup(arg) : -1;
	atomic_signal_fence(memory_order_seq_cst); /* the reads above stay above */
	if (atomic_load(&generation) != before) {
		state_mask_signals();
		r = table ? lookup(arg) : -1;
	}
	state_unlock();
	return r;
}

struct unix_query {
	const char *path;
	size_t len;
	const struct ipaddr *ip; /* remember: the pairing to look for */
	struct ipaddr *out;      /* to_ip: the stand-in found */
};

/* Is path <-> ip recorded, and recently enough that recycling is far off?  0 if so. */
static int recorded(void *arg)
{
	const struct unix_query *q = arg;
	int idx = find_unix(q->path, q->len, q->ip->sa.sa_family);

	return idx != NO_PEER && ip_equal(&table->peers[idx].ip, q->ip) &&
	       table->peers[idx].dest && find_ip(q->ip) == idx &&
	       table->clock - table->peers[idx].stamp < MAX_PEERS / 2 ? 0 : -1;
}

void peers_remember(const struct sockaddr_un *sun, socklen_t len, const struct ipaddr *ip)
{
	struct unix_query q = { sun->sun_path, path_len(sun, len), ip, NULL };

	if (look_up(recorded, &q) == 0)
		return; /* the common case: the same destination again */
	state_lock_masked();
	if (table_ready() == 0)
		insert(q.path, q.len, ip, 1);
	state_unlock();
}

static int stand_in(void *arg)
{
	const struct unix_query *q = arg;
	int idx = find_unix(q->path, q->len, q->out->sa.sa_family);

	if (idx == NO_PEER)
		return -1;
	*q->out = table->peers[idx].ip;
	return table->peers[idx].dest;
}

#define STAND_IN_TRIES 64

/*
 * With the lock held: a stand-in for a new sender, in out.  Any local user can send to a
 * converted client's autobound address, and from as many addresses as it likes, so a
 * stand-in must never be an address the table pairs already (a destination a rule
 * converted): that sender's datagrams would pass for the destination's and the
 * program's next ones to it would go to that sender.  Nor, if it can be helped, one a
 * rule decides (the program may send there later); a rule for every port leaves no
 * choice.  0, or -1 when no port is left for it.
 */
static int new_stand_in(struct ipaddr *out, int family)
{
	struct sock_query q = { .dir = DIR_OUT, .type = SOCK_DGRAM, .addr = out };
	uint16_t fallback = 0;

	ipaddr_loopback(out, family);
	for (int i = 0; i < STAND_IN_TRIES; i++) {
		ipaddr_set_port(out, fake_port());
		if (find_ip(out) != NO_PEER)
			continue;
		if (rules_match(&q) < 0)
			return 0;
		if (!fallback)
			fallback = ipaddr_port(out);
	}
	ipaddr_set_port(out, fallback);
	return fallback ? 0 : -1;
}

int peers_to_ip(const struct sockaddr_un *sun, socklen_t len, int family, struct ipaddr *out)
{
	struct unix_query q = { sun->sun_path, path_len(sun, len), NULL, out };
	int r = 0;

	out->sa.sa_family = (sa_family_t)family;
	if ((r = look_up(stand_in, &q)) >= 0)
		return r;
	rules_need(); /* a new stand-in asks the rules, which may still have to be read */
	state_lock_masked();
	if (table_ready()) {
		r = -1;
	} else if ((r = stand_in(&q)) < 0) { /* a first datagram from it */
		r = new_stand_in(out, family);
		if (r == 0)
			insert(q.path, q.len, out, 0);
	}
	state_unlock();
	return r;
}

int peers_unknown(int family, struct ipaddr *out)
{
	int r;

	rules_need();
	state_lock_masked();
	r = table_ready() ? -1 : new_stand_in(out, family);
	state_unlock();
	return r;
}

struct ip_query {
	const struct ipaddr *ip;
	struct sockaddr_un *sun;
	socklen_t *len;
};

static int unix_address(void *arg)
{
	const struct ip_query *q = arg;
	int idx = find_ip(q->ip);
	const struct peer *e;

	if (idx == NO_PEER)
		return -1;
	e = &table->peers[idx];
	memset(q->sun, 0, sizeof(*q->sun));
	q->sun->sun_family = AF_UNIX;
	memcpy(q->sun->sun_path, e->path, e->len);
	/* a path goes with its NUL if there is room; an abstract name never */
	*q->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + e->len +
			      (e->len && e->path[0] && e->len < sizeof(e->path) ? 1 : 0));
	return e->len ? 0 : 1;
}

int peers_to_unix(const struct ipaddr *ip, struct sockaddr_un *sun, socklen_t *len)
{
	struct ip_query q = { ip, sun, len };

	return look_up(unix_address, &q);
}
