/*
 * Reading the rule encoding written by unixify/encoding.py and matching sockets
 * against it.  The text syntax is parsed only in Python; here every byte of the
 * encoding is validated, and anything unexpected marks the rules as broken, which
 * makes every IP bind/connect fail with EACCES rather than fall back to an open port.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "shim.h"

#define MAX_RULES 1024
#define MAX_VALUE 4096

enum rules_state rules_state = RULES_NONE;
int predict_stream_out;
int rules_use_systemd, rules_use_unix;
static struct rule *rules;
static int n_rules;
static char *arena;        /* NUL-terminated copies of string values */
static size_t arena_used, arena_size;

struct cursor {
	const char *s;
	size_t pos, len;
	const char *error;
};

static int fail(struct cursor *c, const char *why)
{
	if (!c->error)
		c->error = why;
	return -1;
}

static const char *arena_copy(const char *s, size_t n)
{
	char *p;

	if (arena_used + n + 1 > arena_size)
		return NULL;
	p = arena + arena_used;
	memcpy(p, s, n);
	p[n] = 0;
	arena_used += n + 1;
	return p;
}

/* Parse a decimal in [0, max] spanning exactly s[0..n). */
static int parse_uint(const char *s, size_t n, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;

	if (n == 0 || n > 10)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > max)
		return -1;
	*out = v;
	return 0;
}

static int parse_octal(const char *s, size_t n, unsigned long *out)
{
	unsigned long v = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '7')
			return -1;
		v = v * 8 + (unsigned long)(s[i] - '0');
	}
	*out = v;
	return 0;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

int hex_decode(const char *hex, size_t n_bytes, uint8_t *out)
{
	for (size_t i = 0; i < n_bytes; i++) {
		int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static int parse_addr(struct rule *r, const char *v, size_t n)
{
	const char *slash = memchr(v, '/', n);
	size_t hexlen, bytes;
	unsigned long plen;

	if (!slash)
		return -1;
	hexlen = (size_t)(slash - v);
	if (hexlen != 8 && hexlen != 32)
		return -1;
	bytes = hexlen / 2;
	if (hex_decode(v, bytes, r->addr))
		return -1;
	if (parse_uint(slash + 1, n - hexlen - 1, bytes * 8, &plen))
		return -1;
	r->has_addr = 1;
	r->addr_v4 = bytes == 4;
	r->prefix = (uint8_t)plen;
	return 0;
}

static int parse_ports(struct rule *r, const char *v, size_t n)
{
	const char *dash = memchr(v, '-', n);
	unsigned long lo, hi;

	if (!dash || parse_uint(v, (size_t)(dash - v), 65535, &lo) ||
	    parse_uint(dash + 1, n - (size_t)(dash - v) - 1, 65535, &hi) || hi < lo)
		return -1;
	r->has_ports = 1;
	r->port_lo = (uint16_t)lo;
	r->port_hi = (uint16_t)hi;
	return 0;
}

/* Colon-separated 32-bit numbers. */
static int parse_numbers(struct rule *r, const char *v, size_t n)
{
	size_t start = 0;

	if (r->n_numbers)
		return -1;
	for (size_t i = 0; i <= n; i++) {
		unsigned long num;

		if (i < n && v[i] != ':')
			continue;
		if (r->n_numbers == 5 || parse_uint(v + start, i - start, 0xffffffffUL, &num))
			return -1;
		r->numbers[r->n_numbers++] = (uint32_t)num;
		start = i + 1;
	}
	return 0;
}

static int parse_action(struct rule *r, const char *v, size_t n)
{
	static const char letters[] = "PARBISVCF";
	const char *p;

	if (n != 1 || !(p = memchr(letters, v[0], sizeof(letters) - 1)))
		return -1;
	r->action = (uint8_t)(ACT_PATH + (p - letters));
	return 0;
}

static int set_string(const char **field, const char *v, size_t n)
{
	if (*field || memchr(v, 0, n))
		return -1;
	*field = arena_copy(v, n);
	return *field ? 0 : -1;
}

static int apply_field(struct rule *r, char key, const char *v, size_t n)
{
	unsigned long num;

	switch (key) {
	case 'A':
		return parse_action(r, v, n);
	case 'd':
		if (n != 1 || (v[0] != 'i' && v[0] != 'o'))
			return -1;
		r->dir = v[0] == 'i' ? DIR_IN : DIR_OUT;
		return 0;
	case 't':
		if (n != 1 || (v[0] != 's' && v[0] != 'd'))
			return -1;
		r->type = v[0] == 's' ? SOCK_STREAM : SOCK_DGRAM;
		return 0;
	case 'a':
		return parse_addr(r, v, n);
	case 'p':
		return parse_ports(r, v, n);
	case 'v':
		return parse_numbers(r, v, n);
	case 'e':
		if (parse_uint(v, n, 4095, &num) || num == 0)
			return -1;
		r->reject_errno = (int)num;
		return 0;
	case 'n':
		if (n != 1 || v[0] != '1')
			return -1;
		r->noremove = 1;
		return 0;
	case 'f':
		if (n != 1 || (v[0] != '4' && v[0] != '6'))
			return -1;
		r->family = v[0] == '4' ? AF_INET : AF_INET6;
		return 0;
	case 'm':
		if (n == 0 || n > 5 || parse_octal(v, n, &num) || num > 07777)
			return -1;
		r->mode = (int)num;
		return 0;
	case 'o':
	case 'g':
		if (parse_uint(v, n, 0xfffffffeUL, &num))
			return -1;
		if (key == 'o')
			r->uid = (uid_t)num;
		else
			r->gid = (gid_t)num;
		return 0;
	case 'T':
		return n == 0 || n >= sizeof(((struct sockaddr_un *)0)->sun_path) * 4
			       ? -1 : set_string(&r->target, v, n);
	case 'N':
		return set_string(&r->systemd_name, v, n);
	case 'u':
	case 'b':
		if (n > GLOB_MAX)
			return -1;
		return set_string(key == 'u' ? &r->from_unix : &r->from_abstract, v, n);
	}
	return -1;
}

/* Fields a rule must or must not have for its action. */
static int check_rule(const struct rule *r)
{
	if (!r->action)
		return -1;
	if ((r->action == ACT_PATH || r->action == ACT_ABSTRACT || r->action == ACT_FC) !=
	    (r->target != NULL))
		return -1;
	if (r->n_numbers != (r->action == ACT_VSOCK ? 2 : r->action == ACT_TIPC ? 5
			     : r->action == ACT_FC ? 1 : 0))
		return -1;
	if (r->action == ACT_FC && (r->target[0] != '/' || r->dir == DIR_IN))
		return -1;
	if ((r->action == ACT_REJECT) != (r->reject_errno != 0))
		return -1;
	if ((r->noremove || r->mode >= 0 || r->uid != (uid_t)-1 || r->gid != (gid_t)-1) &&
	    r->action != ACT_PATH)
		return -1;
	if (r->action == ACT_BLACKHOLE && r->dir != DIR_IN)
		return -1;
	if (r->action == ACT_PATH && r->target[0] != '/')
		return -1;
	return 0;
}

static int parse_field(struct cursor *c, struct rule *r)
{
	char key = c->s[c->pos++];
	unsigned long n;
	size_t start = c->pos;

	while (c->pos < c->len && c->s[c->pos] != ':')
		c->pos++;
	if (c->pos >= c->len || parse_uint(c->s + start, c->pos - start, MAX_VALUE, &n))
		return fail(c, "bad field length");
	c->pos++; /* ':' */
	if (n > c->len - c->pos)
		return fail(c, "field runs past the end");
	if (apply_field(r, key, c->s + c->pos, n))
		return fail(c, "bad field");
	c->pos += n;
	return 0;
}

static int parse_encoding(struct cursor *c)
{
	if (c->len < 4 || memcmp(c->s, "UFY1", 4))
		return fail(c, "unknown format or version (expected UFY1)");
	c->pos = 4;
	while (c->pos < c->len) {
		struct rule *r;

		if (c->s[c->pos] != '{')
			return fail(c, "expected '{'");
		if (n_rules >= MAX_RULES)
			return fail(c, "too many rules");
		r = rules_append();
		c->pos++;
		while (c->pos < c->len && c->s[c->pos] != '}') {
			if (parse_field(c, r))
				return -1;
		}
		if (c->pos >= c->len)
			return fail(c, "unterminated rule");
		c->pos++;
		if (check_rule(r))
			return fail(c, "inconsistent rule");
		rules_use_systemd |= r->action == ACT_SYSTEMD;
		rules_use_unix |= r->from_unix || r->from_abstract;
	}
	return 0;
}

/*
 * When the first rule that can match an outgoing stream connection has no address or
 * port condition and converts, every connect() of a stream socket will convert.  Then
 * socket() can make the Unix socket straight away and spare the program the cost of an
 * IP socket made only to be thrown away.
 */
static void predict(void)
{
	for (int i = 0; i < n_rules; i++) {
		const struct rule *r = &rules[i];

		if (r->from_unix || r->from_abstract || r->dir == DIR_IN || r->type == SOCK_DGRAM)
			continue;
		predict_stream_out = !r->has_addr && !r->has_ports &&
				     (r->action == ACT_PATH || r->action == ACT_ABSTRACT);
		return;
	}
}

/*
 * A socket that the first rule able to match it rejects for its family alone
 * ("ipv6,reject=EAFNOSUPPORT") is refused at socket() already, as by a kernel without
 * that family: programs fall back to the other family there, not at bind or connect.
 * 0 when socket() should go ahead.
 */
static int refusal[2][2]; /* [AF_INET6?][SOCK_DGRAM?] */

static int first_rule_rejects(int family, int type)
{
	for (int i = 0; i < n_rules; i++) {
		const struct rule *r = &rules[i];

		if (r->from_unix || r->from_abstract || (r->family && r->family != family) ||
		    (r->type && r->type != type) || r->action == ACT_SYSTEMD)
			continue; /* cannot match this socket at all (systemd: not at connect) */
		if (r->action != ACT_REJECT || !r->family || r->dir || r->has_addr || r->has_ports)
			return 0;
		return r->reject_errno;
	}
	return 0;
}

int rules_refuse_socket(int family, int type)
{
	return refusal[family == AF_INET6][type == SOCK_DGRAM];
}

static void precompute(void)
{
	predict();
	for (int v6 = 0; v6 < 2; v6++) {
		for (int dgram = 0; dgram < 2; dgram++)
			refusal[v6][dgram] = first_rule_rejects(v6 ? AF_INET6 : AF_INET,
								dgram ? SOCK_DGRAM : SOCK_STREAM);
	}
}

static int rules_alloc(size_t strings)
{
	arena_size = strings + 2 * MAX_RULES;
	rules = mmap(NULL, MAX_RULES * sizeof(*rules) + arena_size, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (rules == MAP_FAILED) {
		rules = NULL;
		rules_state = RULES_BROKEN;
		ulog(LOG_ERR_, "cannot allocate memory for rules; IP sockets will be refused");
		return -1;
	}
	arena = (char *)(rules + MAX_RULES);
	return 0;
}

static void rules_ready(const char *source)
{
	rules_state = RULES_OK;
	precompute();
	ulog(LOG_DEBUG_, "%d rule(s) from %s%s", n_rules, source,
	     predict_stream_out ? "; stream sockets start as Unix sockets" : "");
}

static void rules_broken(void)
{
	n_rules = 0;
	rules_use_systemd = rules_use_unix = 0; /* broken rules refuse IP sockets only */
	rules_state = RULES_BROKEN;
}

struct rule *rules_append(void)
{
	struct rule *r;

	if (n_rules >= MAX_RULES)
		return NULL;
	r = &rules[n_rules++];
	memset(r, 0, sizeof(*r));
	r->mode = -1;
	r->uid = (uid_t)-1;
	r->gid = (gid_t)-1;
	return r;
}

const char *rules_keep_string(const char *s)
{
	return arena_copy(s, strlen(s));
}

void rules_init(void)
{
	const char *env = getenv("UNIXIFY_RULES");
	struct cursor c = { 0 };
	int saved = errno;

	if (!env) {
		/* no rules of ours: unsock's variables, if any, stand for some */
		if (unsock_configured() && rules_alloc(1024) == 0) {
			if (unsock_rules())
				rules_broken();
			else
				rules_ready("UNSOCK_* variables");
		}
		errno = saved;
		return;
	}
	c.s = env;
	c.len = strlen(env);
	if (rules_alloc(c.len)) {
		errno = saved;
		return;
	}
	if (parse_encoding(&c)) {
		rules_broken();
		ulog(LOG_ERR_, "UNIXIFY_RULES is malformed (%s at byte %zu); IP bind/connect "
		     "will fail with EACCES. Set it only through the unixify command.",
		     c.error, c.pos);
	} else {
		rules_ready("UNIXIFY_RULES");
	}
	errno = saved;
}

const struct rule *rule_at(int index)
{
	return &rules[index];
}

static int addr_matches(const struct rule *r, const struct ipaddr *a)
{
	int v4;
	const uint8_t *bytes = ipaddr_bytes(a, &v4);
	unsigned full, rest;

	if (v4 != r->addr_v4)
		return 0;
	full = r->prefix / 8;
	rest = r->prefix % 8;
	if (memcmp(bytes, r->addr, full))
		return 0;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));

		if ((bytes[full] & mask) != (r->addr[full] & mask))
			return 0;
	}
	return 1;
}

static int rule_matches(const struct rule *r, const struct sock_query *q)
{
	uint16_t port;

	/* IP rules match IP sockets, from-unix rules paths, from-abstract abstract names */
	if (q->unix_name ? !(q->abstract ? r->from_abstract : r->from_unix)
			 : r->from_unix || r->from_abstract)
		return 0;
	if (r->dir && r->dir != q->dir)
		return 0;
	if (r->action == ACT_SYSTEMD && q->dir != DIR_IN)
		return 0; /* passed sockets stand in for listeners only */
	if (r->type && r->type != q->type)
		return 0;
	if (r->family && (!q->addr || r->family != q->addr->sa.sa_family))
		return 0;
	if (q->unix_name)
		return glob_match(r->from_unix ? r->from_unix : r->from_abstract, q->unix_name);
	if (r->has_addr && !addr_matches(r, q->addr))
		return 0;
	port = ipaddr_port(q->addr);
	if (r->has_ports && (port < r->port_lo || port > r->port_hi))
		return 0;
	return 1;
}

int rules_match(const struct sock_query *q)
{
	for (int i = 0; i < n_rules; i++) {
		if (rule_matches(&rules[i], q))
			return i;
	}
	return -1;
}

static int append(char *out, size_t size, size_t *used, const char *s, size_t n)
{
	if (*used + n >= size) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(out + *used, s, n);
	*used += n;
	return 0;
}

int rule_expand(const struct rule *r, const struct sock_query *q, char *out, size_t size)
{
	char piece[INET6_ADDRSTRLEN + 8];
	const char *p = r->target;
	size_t used = 0;

	for (;;) {
		const char *pct = strchr(p, '%');
		const char *add = piece;

		if (append(out, size, &used, p, pct ? (size_t)(pct - p) : strlen(p)))
			return -1;
		if (!pct)
			break;
		switch (pct[1]) {
		case 'p':
			if (q->addr)
				snprintf(piece, sizeof(piece), "%u", ipaddr_port(q->addr));
			else
				add = "unknown";
			break;
		case 'a':
			if (q->addr)
				ipaddr_format(q->addr, piece, sizeof(piece));
			else
				add = "unknown";
			break;
		case 't':
			add = q->type == SOCK_STREAM ? "tcp" : q->type == SOCK_DGRAM ? "udp" : "unknown";
			break;
		case '%':
			add = "%";
			break;
		default: /* the parser lets no other placeholder through */
			errno = EINVAL;
			return -1;
		}
		if (append(out, size, &used, add, strlen(add)))
			return -1;
		p = pct + 2;
	}
	out[used] = 0;
	return 0;
}
