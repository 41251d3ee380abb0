/*
 * The route table: decoded from the encoding unixify/dispatchconf.py writes (the rule
 * encoding's syntax, fields.c), and looked up first match first.  Routes whose local
 * address is one host (/32, /128) are filed in a hash table by that address; a lookup
 * merges the routes filed under the connection's local address with the others, in
 * route order, so thousands of per-container routes cost one hash probe.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dispatcher.h"

#define MAX_ROUTES 1000000
#define MAX_VALUE 4096

struct bucket {
	uint8_t used, v4;
	uint8_t addr[16];
	uint32_t first, count;  /* into by_addr */
};

struct table {
	int n;
	struct route *routes;
	char *strings;
	size_t strings_used;
	struct bucket *buckets;
	size_t n_buckets;        /* a power of two, or 0 */
	uint32_t *by_addr;       /* route numbers, grouped by bucket, in route order */
	uint32_t *wild;          /* the routes not filed by address */
	uint32_t n_wild;
};

static int exact(const struct route *r)
{
	return r->has_addr && r->prefix == (r->addr_v4 ? 32 : 128);
}

static size_t hash_addr(const uint8_t *addr, int v4)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)v4;

	for (int i = 0; i < (v4 ? 4 : 16); i++)
		h = (h ^ addr[i]) * 1099511628211ULL;
	return (size_t)(h ^ h >> 29);
}

static struct bucket *find_bucket(const struct table *t, const uint8_t *addr, int v4,
				  int insert)
{
	size_t mask = t->n_buckets - 1;
	size_t len = v4 ? 4 : 16;

	for (size_t i = hash_addr(addr, v4) & mask;; i = (i + 1) & mask) {
		struct bucket *b = &t->buckets[i];

		if (!b->used) {
			if (!insert)
				return NULL;
			b->used = 1;
			b->v4 = (uint8_t)v4;
			memcpy(b->addr, addr, len);
			return b;
		}
		if (b->v4 == v4 && !memcmp(b->addr, addr, len))
			return b;
	}
}

static int build_index(struct table *t)
{
	uint32_t n_exact = 0, offset = 0;

	for (int i = 0; i < t->n; i++)
		n_exact += exact(&t->routes[i]);
	t->wild = calloc((size_t)(t->n - n_exact) + 1, sizeof(uint32_t));
	if (!t->wild)
		return -1;
	if (n_exact) {
		for (t->n_buckets = 16; t->n_buckets < 2 * (size_t)n_exact;)
			t->n_buckets *= 2;
		t->buckets = calloc(t->n_buckets, sizeof(*t->buckets));
		t->by_addr = calloc(n_exact, sizeof(uint32_t));
		if (!t->buckets || !t->by_addr)
			return -1;
	}
	for (int i = 0; i < t->n; i++) {
		const struct route *r = &t->routes[i];

		if (exact(r))
			find_bucket(t, r->addr, r->addr_v4, 1)->count++;
	}
	for (size_t i = 0; i < t->n_buckets; i++) {
		t->buckets[i].first = offset;
		offset += t->buckets[i].count;
		t->buckets[i].count = 0;
	}
	for (int i = 0; i < t->n; i++) {
		const struct route *r = &t->routes[i];
		struct bucket *b;

		if (!exact(r)) {
			t->wild[t->n_wild++] = (uint32_t)i;
			continue;
		}
		b = find_bucket(t, r->addr, r->addr_v4, 0);
		t->by_addr[b->first + b->count++] = (uint32_t)i;
	}
	return 0;
}

static int apply_field(struct table *t, struct route *r, const struct field *f)
{
	const char *v = f->value;
	size_t n = f->len;
	unsigned long num;

	switch (f->key) {
	case 'A':
		if (n != 1 || r->action || !memchr("SBR", v[0], 3))
			return -1;
		r->action = v[0] == 'S' ? ROUTE_SEND : v[0] == 'B' ? ROUTE_SLOT : ROUTE_REJECT;
		return 0;
	case 'a':
		r->has_addr = 1;
		return field_prefix(v, n, r->addr, &r->addr_v4, &r->prefix);
	case 'f':
		r->has_from = 1;
		return field_prefix(v, n, r->from, &r->from_v4, &r->from_prefix);
	case 'p':
		r->has_ports = 1;
		return field_ports(v, n, &r->port_lo, &r->port_hi);
	case 'q':
		r->has_from_ports = 1;
		return field_ports(v, n, &r->from_lo, &r->from_hi);
	case 's':
	case 'Q':
	case 'o':
		if (field_uint(v, n, f->key == 'o' ? 0xfffffffeUL : 0xffffffffUL, &num))
			return -1;
		if (f->key == 's')
			r->slot = (uint32_t)num;
		else if (f->key == 'Q')
			r->queue = (uint32_t)num;
		else
			r->owner = (uid_t)num;
		return 0;
	case 'T':
		if (r->target || n == 0 || v[0] != '/' || memchr(v, 0, n))
			return -1;
		memcpy(t->strings + t->strings_used, v, n);
		t->strings[t->strings_used + n] = 0;
		r->target = t->strings + t->strings_used;
		t->strings_used += n + 1;
		r->templated = memchr(v, '%', n) != NULL;
		return 0;
	}
	return -1;
}

static int check_route(const struct route *r)
{
	if (!r->action || (r->action == ROUTE_SEND) != (r->target != NULL))
		return -1;
	if (r->action != ROUTE_REJECT && r->queue == 0)
		return -1;
	return 0;
}

static int decode(struct table *t, const char *s, size_t len, const char **why)
{
	size_t pos = 4;

	if (len < 4 || memcmp(s, "UFD1", 4)) {
		*why = "unknown format or version (expected UFD1)";
		return -1;
	}
	while (pos < len) {
		struct route *r = &t->routes[t->n];

		if (s[pos] != '{' || t->n >= MAX_ROUTES) {
			*why = s[pos] != '{' ? "expected '{'" : "too many routes";
			return -1;
		}
		memset(r, 0, sizeof(*r));
		r->owner = (uid_t)-1;
		pos++;
		while (pos < len && s[pos] != '}') {
			struct field f;

			if (field_next(s, len, &pos, MAX_VALUE, &f, why))
				return -1;
			if (apply_field(t, r, &f)) {
				*why = "bad field";
				return -1;
			}
		}
		if (pos >= len || check_route(r)) {
			*why = pos >= len ? "unterminated route" : "inconsistent route";
			return -1;
		}
		pos++;
		t->n++;
	}
	return 0;
}

struct table *table_decode(const char *text, size_t size, const char **why)
{
	struct table *t = calloc(1, sizeof(*t));
	size_t braces = 0;

	for (size_t i = 0; i < size; i++)
		braces += text[i] == '{';
	if (t) {
		/* at most one route per '{', and strings fit in the text plus NULs */
		t->routes = calloc(braces + 1, sizeof(*t->routes));
		t->strings = malloc(size + braces + 1);
	}
	if (!t || !t->routes || !t->strings) {
		*why = "out of memory";
		table_free(t);
		return NULL;
	}
	if (decode(t, text, size, why))
		goto fail;
	if (build_index(t)) {
		*why = "out of memory";
		goto fail;
	}
	return t;
fail:
	table_free(t);
	return NULL;
}

void table_free(struct table *t)
{
	if (!t)
		return;
	free(t->routes);
	free(t->strings);
	free(t->buckets);
	free(t->by_addr);
	free(t->wild);
	free(t);
}

int table_size(const struct table *t)
{
	return t->n;
}

static int route_matches(const struct route *r, const struct ipaddr *local,
			 const struct ipaddr *peer)
{
	uint16_t port;

	if (r->has_addr && !ipaddr_in_prefix(local, r->addr, r->addr_v4, r->prefix))
		return 0;
	port = ipaddr_port(local);
	if (r->has_ports && (port < r->port_lo || port > r->port_hi))
		return 0;
	if (r->has_from && !ipaddr_in_prefix(peer, r->from, r->from_v4, r->from_prefix))
		return 0;
	port = ipaddr_port(peer);
	if (r->has_from_ports && (port < r->from_lo || port > r->from_hi))
		return 0;
	return 1;
}

const struct route *table_lookup(const struct table *t, const struct ipaddr *local,
				 const struct ipaddr *peer)
{
	const uint32_t *a = NULL;
	size_t na = 0, i = 0, j = 0;

	if (t->n_buckets) {
		int v4;
		const uint8_t *bytes = ipaddr_bytes(local, &v4);
		const struct bucket *b = find_bucket(t, bytes, v4, 0);

		if (b) {
			a = t->by_addr + b->first;
			na = b->count;
		}
	}
	while (i < na || j < t->n_wild) {
		uint32_t k = j == t->n_wild || (i < na && a[i] < t->wild[j]) ? a[i++]
									     : t->wild[j++];

		if (route_matches(&t->routes[k], local, peer))
			return &t->routes[k];
	}
	return NULL;
}
