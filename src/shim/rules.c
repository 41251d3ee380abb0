/*
 * Reading the rule encoding written by unixify/encoding.py and matching sockets
 * against it.  The text syntax is parsed only in Python; here every byte of the
 * encoding is validated, and anything unexpected marks the rules as broken, which
 * makes every IP bind/connect fail with EACCES rather than fall back to an open port.
 * The encoding comes inline in UNIXIFY_RULES, read at load, or from a file that
 * UNIXIFY_RULES names, read at the first socket call (rulefile.c).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "shim.h"

/* The launcher checks the same limits (unixify/encoding.py), so a rule set it accepts
 * always loads here. */
#define MAX_RULES 100000
#define MAX_ENCODING (64 << 20)
#define MAX_VALUE 4096
/* Below this many rules a scan takes well under a microsecond: not worth the index's
 * 256 KiB port table. */
#define INDEX_MIN_RULES 32
/* Rules for at most this many ports are filed under each port; wider ranges are wild. */
#define NARROW_PORTS 16
#define N_PORTS 65536

/*
 * A rule set is built privately and then published whole: it never changes after, so
 * matching reads it without a lock.  One mapping holds the header, the rules and the
 * arena of string values; the index has its own.
 */
struct ruleset {
	size_t mapped;
	int n, cap;
	enum rules_state state;
	int predict[2];           /* [AF_INET6?]: PREDICT_* for stream sockets */
	int use_systemd, use_unix;
	int refusal[2][2];        /* [AF_INET6?][SOCK_DGRAM?] */
	struct rule *rules;
	char *arena;              /* NUL-terminated copies of string values */
	size_t arena_used, arena_size;
	uint32_t *index;          /* NULL: scan all rules */
	size_t index_mapped;
	const uint32_t *port_first; /* N_PORTS + 1 offsets into by_port */
	const uint32_t *by_port;    /* rule numbers for each port, in rule order */
	const uint32_t *wild;       /* IP rules for any port or a wide range */
	const uint32_t *unix_rules; /* from-unix and from-abstract rules */
	uint32_t n_wild, n_unix;
};

enum rules_state rules_state = RULES_NONE;
int predict_stream_out[2];
int rules_use_systemd, rules_use_unix;
static struct ruleset *set;       /* published; NULL until then */
static struct ruleset *building;  /* the constructor's, for rules_append() */
static struct ruleset broken_set = { .state = RULES_BROKEN };

/* A file-backed rule set waiting for its first use (rulefile.c reads it). */
static char ref_path[PATH_MAX];
static size_t ref_size;
static int ref_systemd;

struct cursor {
	struct ruleset *set;
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

static const char *arena_copy(struct ruleset *s, const char *v, size_t n)
{
	char *p;

	if (s->arena_used + n + 1 > s->arena_size)
		return NULL;
	p = s->arena + s->arena_used;
	memcpy(p, v, n);
	p[n] = 0;
	s->arena_used += n + 1;
	return p;
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

static int parse_addr(struct rule *r, const char *v, size_t n)
{
	if (field_prefix(v, n, r->addr, &r->addr_v4, &r->prefix))
		return -1;
	r->has_addr = 1;
	return 0;
}

static int parse_ports(struct rule *r, const char *v, size_t n)
{
	if (field_ports(v, n, &r->port_lo, &r->port_hi))
		return -1;
	r->has_ports = 1;
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
		if (r->n_numbers == 5 || field_uint(v + start, i - start, 0xffffffffUL, &num))
			return -1;
		r->numbers[r->n_numbers++] = (uint32_t)num;
		start = i + 1;
	}
	return 0;
}

static int parse_action(struct rule *r, const char *v, size_t n)
{
	static const char letters[] = "PARBISVCFE";
	const char *p;

	if (n != 1 || !(p = memchr(letters, v[0], sizeof(letters) - 1)))
		return -1;
	r->action = (uint8_t)(ACT_PATH + (p - letters));
	return 0;
}

static int set_string(struct ruleset *s, const char **field, const char *v, size_t n)
{
	if (*field || memchr(v, 0, n))
		return -1;
	*field = arena_copy(s, v, n);
	return *field ? 0 : -1;
}

static int apply_field(struct ruleset *s, struct rule *r, char key, const char *v, size_t n)
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
		if (field_uint(v, n, 4095, &num) || num == 0)
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
		if (field_uint(v, n, 0xfffffffeUL, &num))
			return -1;
		if (key == 'o')
			r->uid = (uid_t)num;
		else
			r->gid = (gid_t)num;
		return 0;
	case 'T':
		return n == 0 || n >= sizeof(((struct sockaddr_un *)0)->sun_path) * 4
			       ? -1 : set_string(s, &r->target, v, n);
	case 'N':
		return set_string(s, &r->systemd_name, v, n);
	case 'O':
	case 'G':
		if (n == 0 || n > 256)
			return -1;
		return set_string(s, key == 'O' ? &r->owner_name : &r->group_name, v, n);
	case 'u':
	case 'b':
		if (n > GLOB_MAX)
			return -1;
		return set_string(s, key == 'u' ? &r->from_unix : &r->from_abstract, v, n);
	}
	return -1;
}

/* Fields a rule must or must not have for its action. */
static int check_rule(const struct rule *r)
{
	if (!r->action)
		return -1;
	if ((r->action == ACT_PATH || r->action == ACT_ABSTRACT || r->action == ACT_FC ||
	     r->action == ACT_RECEIVE) != (r->target != NULL))
		return -1;
	if (r->action == ACT_RECEIVE ? r->n_numbers > 1 || r->dir == DIR_OUT ||
				       r->type == SOCK_DGRAM || r->target[0] != '/' ||
				       (r->n_numbers && (r->noremove || r->mode >= 0 ||
					r->uid != (uid_t)-1 || r->gid != (gid_t)-1))
	    : r->n_numbers != (r->action == ACT_VSOCK ? 2 : r->action == ACT_TIPC ? 5
			       : r->action == ACT_FC ? 1 : 0))
		return -1;
	if (r->action == ACT_FC && (r->target[0] != '/' || r->dir == DIR_IN))
		return -1;
	if ((r->action == ACT_REJECT) != (r->reject_errno != 0))
		return -1;
	if ((r->noremove || r->mode >= 0 || r->uid != (uid_t)-1 || r->gid != (gid_t)-1) &&
	    r->action != ACT_PATH && r->action != ACT_RECEIVE)
		return -1;
	if (r->action == ACT_BLACKHOLE && r->dir != DIR_IN)
		return -1;
	if (r->action == ACT_PATH && r->target[0] != '/')
		return -1;
	return 0;
}

static int parse_field(struct cursor *c, struct rule *r)
{
	struct field f;

	if (field_next(c->s, c->len, &c->pos, MAX_VALUE, &f, &c->error))
		return -1;
	if (apply_field(c->set, r, f.key, f.value, f.len))
		return fail(c, "bad field");
	return 0;
}

/* A fresh rule at the end of s, or NULL when s is full. */
static struct rule *set_append(struct ruleset *s)
{
	struct rule *r;

	if (!s || s->n >= s->cap)
		return NULL;
	r = &s->rules[s->n++];
	memset(r, 0, sizeof(*r));
	r->mode = -1;
	r->uid = (uid_t)-1;
	r->gid = (gid_t)-1;
	return r;
}

static int parse_encoding(struct cursor *c)
{
	struct ruleset *s = c->set;

	if (c->len < 4 || memcmp(c->s, "UFY1", 4))
		return fail(c, "unknown format or version (expected UFY1)");
	c->pos = 4;
	while (c->pos < c->len) {
		struct rule *r;

		if (c->s[c->pos] != '{')
			return fail(c, "expected '{'");
		r = set_append(s);
		if (!r)
			return fail(c, "more rules than the limit of 100000");
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
		s->use_systemd |= r->action == ACT_SYSTEMD;
		s->use_unix |= r->from_unix || r->from_abstract;
	}
	return 0;
}

/*
 * How socket() guesses whether a stream socket of family will be converted.  When the
 * first rule that can match its outgoing connections has no address or port condition
 * and converts, every connect() converts: socket() can make the Unix socket straight
 * away and spare the program an IP socket made only to be thrown away
 * (PREDICT_ALWAYS).  When a rule with a condition may convert before any rule that
 * decides all connections, only the connects themselves tell: socket() guesses from
 * what this process's recent ones did (PREDICT_LEARN, convert.c).  Else none converts.
 */
static int predict(const struct ruleset *s, int family)
{
	int conditional = 0;

	for (int i = 0; i < s->n; i++) {
		const struct rule *r = &s->rules[i];
		int converts = r->action == ACT_PATH || r->action == ACT_ABSTRACT;

		if (r->from_unix || r->from_abstract || r->dir == DIR_IN ||
		    r->type == SOCK_DGRAM || (r->family && r->family != family) ||
		    r->action == ACT_SYSTEMD) /* systemd: not at connect */
			continue;
		if (r->has_addr || r->has_ports) {
			conditional |= converts;
			continue;
		}
		if (conditional)
			return PREDICT_LEARN;
		return converts ? PREDICT_ALWAYS : PREDICT_NEVER;
	}
	return conditional ? PREDICT_LEARN : PREDICT_NEVER;
}

/*
 * A socket that the first rule able to match it rejects for its family alone
 * ("ipv6,reject=EAFNOSUPPORT") is refused at socket() already, as by a kernel without
 * that family: programs fall back to the other family there, not at bind or connect.
 * 0 when socket() should go ahead.
 */
static int first_rule_rejects(const struct ruleset *s, int family, int type)
{
	for (int i = 0; i < s->n; i++) {
		const struct rule *r = &s->rules[i];

		if (r->from_unix || r->from_abstract || (r->family && r->family != family) ||
		    (r->type && r->type != type) || r->action == ACT_SYSTEMD)
			continue; /* cannot match this socket at all (systemd: not at connect) */
		if (r->action != ACT_REJECT || !r->family || r->dir || r->has_addr || r->has_ports)
			return 0;
		return r->reject_errno;
	}
	return 0;
}

static int narrow(const struct rule *r)
{
	return r->has_ports && r->port_hi - r->port_lo < NARROW_PORTS;
}

static int is_unix_rule(const struct rule *r)
{
	return r->from_unix || r->from_abstract;
}

/*
 * The index: for each port, the rules that name it (a single port or a narrow range);
 * the wild rules, which may match any port; and the from-unix/from-abstract rules.
 * Each list is in rule order, so merging a port's list with the wild one and stopping
 * at the first match keeps "first rule wins".  Without memory for it, scan everything.
 */
static void build_index(struct ruleset *s)
{
	size_t n_by_port = 0, n_wild = 0, n_unix = 0, size;
	uint32_t *first, *by_port, *wild, *unix_rules, sum = 0;

	for (int i = 0; i < s->n; i++) {
		const struct rule *r = &s->rules[i];

		if (is_unix_rule(r))
			n_unix++;
		else if (narrow(r))
			n_by_port += (size_t)(r->port_hi - r->port_lo) + 1;
		else
			n_wild++;
	}
	size = (N_PORTS + 1 + n_by_port + n_wild + n_unix) * sizeof(uint32_t);
	first = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (first == MAP_FAILED)
		return;
	by_port = first + N_PORTS + 1;
	wild = by_port + n_by_port;
	unix_rules = wild + n_wild;
	for (int i = 0; i < s->n; i++) {
		if (!is_unix_rule(&s->rules[i]) && narrow(&s->rules[i]))
			for (unsigned p = s->rules[i].port_lo; p <= s->rules[i].port_hi; p++)
				first[p]++;
	}
	for (unsigned p = 0; p < N_PORTS; p++) { /* counts become where each run starts */
		uint32_t count = first[p];

		first[p] = sum;
		sum += count;
	}
	for (int i = 0; i < s->n; i++) {
		const struct rule *r = &s->rules[i];

		if (is_unix_rule(r))
			unix_rules[s->n_unix++] = (uint32_t)i;
		else if (!narrow(r))
			wild[s->n_wild++] = (uint32_t)i;
		else
			for (unsigned p = r->port_lo; p <= r->port_hi; p++)
				by_port[first[p]++] = (uint32_t)i;
	}
	/* each first[p] now ends p's run, where p + 1's starts */
	memmove(first + 1, first, N_PORTS * sizeof(*first));
	first[0] = 0;
	s->index = first;
	s->index_mapped = size;
	s->port_first = first;
	s->by_port = by_port;
	s->wild = wild;
	s->unix_rules = unix_rules;
}

/* What matching needs beyond the rules themselves, worked out once. */
static void set_finish(struct ruleset *s)
{
	s->predict[0] = predict(s, AF_INET);
	s->predict[1] = predict(s, AF_INET6);
	for (int v6 = 0; v6 < 2; v6++) {
		for (int dgram = 0; dgram < 2; dgram++)
			s->refusal[v6][dgram] = first_rule_rejects(s, v6 ? AF_INET6 : AF_INET,
								   dgram ? SOCK_DGRAM : SOCK_STREAM);
	}
	if (s->n >= INDEX_MIN_RULES)
		build_index(s);
	s->state = RULES_OK;
}

/* Room for cap rules and strings bytes of string values; NULL without memory. */
static struct ruleset *set_new(size_t cap, size_t strings)
{
	size_t size = sizeof(struct ruleset) + cap * sizeof(struct rule) + strings + 1;
	struct ruleset *s = mmap(NULL, size, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (s == MAP_FAILED)
		return NULL;
	s->mapped = size;
	s->cap = (int)cap;
	s->rules = (struct rule *)(s + 1);
	s->arena = (char *)(s->rules + cap);
	s->arena_size = strings + 1;
	return s;
}

static void set_free(struct ruleset *s)
{
	if (!s || s == &broken_set)
		return;
	if (s->index)
		munmap(s->index, s->index_mapped);
	munmap(s, s->mapped);
}

/*
 * Make s the rule set of this process, unless another thread (or a signal handler that
 * interrupted us) published one first: then that one stays and s is dropped.  No lock,
 * so nothing waits for anything.  Returns the set in force; *won says whether it is s.
 */
static struct ruleset *publish(struct ruleset *s, int *won)
{
	struct ruleset *expected = NULL;

	*won = __atomic_compare_exchange_n(&set, &expected, s, 0, __ATOMIC_ACQ_REL,
					   __ATOMIC_ACQUIRE);
	if (!*won) {
		set_free(s);
		s = expected;
	}
	/* every publisher stores the same values, from the one set in force */
	predict_stream_out[0] = s->predict[0];
	predict_stream_out[1] = s->predict[1];
	rules_use_unix = s->use_unix;
	rules_use_systemd = s->use_systemd;
	__atomic_store_n(&rules_state, s->state, __ATOMIC_RELEASE);
	return s;
}

static const struct ruleset *current(void)
{
	const struct ruleset *s = __atomic_load_n(&set, __ATOMIC_ACQUIRE);

	if (!s && rules_state == RULES_LAZY) {
		rules_load();
		s = __atomic_load_n(&set, __ATOMIC_ACQUIRE);
	}
	return s ? s : &broken_set;
}

int rules_refuse_socket(int family, int type)
{
	return current()->refusal[family == AF_INET6][type == SOCK_DGRAM];
}

/* The rule set in text[0..len), or NULL with c->error (and c->pos) saying why. */
static struct ruleset *decode(const char *text, size_t len, struct cursor *c)
{
	size_t cap = 0;
	struct ruleset *s;

	for (const char *p = text; (p = memchr(p, '{', len - (size_t)(p - text))) != NULL; p++)
		cap++; /* at least one '{' per rule; more inside strings */
	s = set_new(cap < MAX_RULES ? cap : MAX_RULES, len);
	if (!s) {
		c->error = "out of memory";
		return NULL;
	}
	c->set = s;
	c->s = text;
	c->len = len;
	if (parse_encoding(c)) {
		set_free(s);
		return NULL;
	}
	set_finish(s);
	return s;
}

static void log_ready(const struct ruleset *s, const char *source)
{
	static const char *const how[] = { "", "; stream sockets start as Unix sockets",
					   "; stream sockets start as their connects suggest" };

	ulog(LOG_DEBUG_, "%d rule(s) from %s%s", s->n, source,
	     how[s->predict[0] > s->predict[1] ? s->predict[0] : s->predict[1]]);
}

static void from_unsock(void)
{
	int won;

	if (!unsock_configured())
		return;
	building = set_new(4, 1024); /* unsock.c makes at most three rules */
	if (!building) {
		ulog(LOG_ERR_, "cannot allocate memory for rules; IP sockets will be refused");
		publish(&broken_set, &won);
		return;
	}
	if (unsock_rules()) {
		set_free(building);
		building = NULL;
		publish(&broken_set, &won);
		return;
	}
	set_finish(building);
	log_ready(publish(building, &won), "UNSOCK_* variables");
	building = NULL;
}

static void from_environment(const char *env)
{
	struct cursor c = { 0 };
	struct ruleset *s = decode(env, strlen(env), &c);
	int won;

	if (!s) {
		ulog(LOG_ERR_, "UNIXIFY_RULES is malformed (%s at byte %zu); IP bind/connect "
		     "will fail with EACCES. Set it only through the unixify command.",
		     c.error, c.pos);
		publish(&broken_set, &won);
		return;
	}
	log_ready(publish(s, &won), "UNIXIFY_RULES");
}

/* "SIZE:FLAGS:PATH" (after the '@'): remember it; NULL, or what is wrong with it. */
static const char *parse_reference(const char *ref)
{
	const char *flags = strchr(ref, ':'), *path = flags ? strchr(flags + 1, ':') : NULL;
	unsigned long size;

	if (!path)
		return "expected @SIZE:FLAGS:PATH";
	if (field_uint(ref, (size_t)(flags - ref), MAX_ENCODING, &size))
		return "SIZE is not a number up to the limit of 67108864 bytes";
	flags++;
	if (path - flags > 1 || (path - flags == 1 && flags[0] != 'S'))
		return "unknown FLAGS";
	path++;
	if (path[0] != '/' || strlen(path) >= sizeof(ref_path))
		return "PATH is not an absolute path";
	ref_size = size;
	ref_systemd = path - flags == 2;
	memcpy(ref_path, path, strlen(path) + 1);
	return NULL;
}

static void from_reference(const char *ref)
{
	const char *why = parse_reference(ref);
	int won;

	if (why) {
		ulog(LOG_ERR_, "UNIXIFY_RULES=@%s: %s; IP bind/connect will fail with EACCES. "
		     "Set it only through the unixify command.", ref, why);
		publish(&broken_set, &won);
		return;
	}
	/* systemd_init() must know before the first socket call */
	rules_use_systemd = ref_systemd;
	rules_state = RULES_LAZY;
}

void rules_init(void)
{
	const char *env = getenv("UNIXIFY_RULES");
	int saved = errno;

	if (!env)
		from_unsock(); /* no rules of ours: unsock's variables, if any, stand for some */
	else if (env[0] == '@')
		from_reference(env + 1);
	else
		from_environment(env);
	errno = saved;
}

/* The file-backed rules, read now; on any doubt the broken set, which fails closed. */
static struct ruleset *load(const char **why, struct cursor *c)
{
	char *text = rulefile_read(ref_path, ref_size, why);
	struct ruleset *s;

	if (!text)
		return NULL;
	s = decode(text, ref_size, c);
	munmap(text, ref_size + 1);
	if (s && s->use_systemd != ref_systemd) {
		set_free(s);
		*why = "its systemd rules differ from what UNIXIFY_RULES announced";
		return NULL;
	}
	return s;
}

void rules_load(void)
{
	struct ruleset *s = __atomic_load_n(&set, __ATOMIC_ACQUIRE);
	struct cursor c = { 0 };
	const char *why = NULL;
	int won, saved = errno;

	if (s) { /* published meanwhile: make the globals agree */
		publish(s, &won);
		errno = saved;
		return;
	}
	s = load(&why, &c);
	s = publish(s ? s : &broken_set, &won);
	if (won && s->state == RULES_OK)
		log_ready(s, ref_path);
	else if (won && c.error)
		ulog(LOG_ERR_, "rules file %s is malformed (%s at byte %zu); IP bind/connect "
		     "will fail with EACCES", ref_path, c.error, c.pos);
	else if (won)
		ulog(LOG_ERR_, "rules file %s: %s; IP bind/connect will fail with EACCES",
		     ref_path, why);
	errno = saved;
}

struct rule *rules_append(void)
{
	return set_append(building);
}

const char *rules_keep_string(const char *s)
{
	return building ? arena_copy(building, s, strlen(s)) : NULL;
}

const struct rule *rule_at(int index)
{
	return &current()->rules[index];
}

int rules_count(void)
{
	return current()->n;
}

enum rule_miss rule_mismatch(const struct rule *r, const struct sock_query *q)
{
	uint16_t port;

	/* IP rules match IP sockets, from-unix rules paths, from-abstract abstract names */
	if (!q->unix_name && is_unix_rule(r))
		return MISS_UNIX_ONLY;
	if (q->unix_name && !is_unix_rule(r))
		return MISS_IP_ONLY;
	if (r->dir && r->dir != q->dir)
		return MISS_DIR;
	if ((r->action == ACT_SYSTEMD || r->action == ACT_RECEIVE) && q->dir != DIR_IN)
		return MISS_SYSTEMD; /* passed sockets and receivers stand in for listeners only */
	if (r->type && r->type != q->type)
		return MISS_TYPE;
	if (r->family && (!q->addr || r->family != q->addr->sa.sa_family))
		return MISS_FAMILY;
	if (q->unix_name) {
		if (!(q->abstract ? r->from_abstract : r->from_unix))
			return MISS_UNIX_KIND;
		return glob_match(r->from_unix ? r->from_unix : r->from_abstract, q->unix_name)
			       ? MISS_NONE : MISS_GLOB;
	}
	if (r->has_addr && !ipaddr_in_prefix(q->addr, r->addr, r->addr_v4, r->prefix))
		return MISS_ADDR;
	port = ipaddr_port(q->addr);
	if (r->has_ports && (port < r->port_lo || port > r->port_hi))
		return MISS_PORT;
	return MISS_NONE;
}

static int rule_matches(const struct rule *r, const struct sock_query *q)
{
	return rule_mismatch(r, q) == MISS_NONE;
}

/* The first rule of lists a and b (merged in rule order) that matches q, or -1. */
static int first_match(const struct ruleset *s, const uint32_t *a, size_t na,
		       const uint32_t *b, size_t nb, const struct sock_query *q)
{
	size_t i = 0, j = 0;

	while (i < na || j < nb) {
		uint32_t k = j == nb || (i < na && a[i] < b[j]) ? a[i++] : b[j++];

		if (rule_matches(&s->rules[k], q))
			return (int)k;
	}
	return -1;
}

static int set_match(const struct ruleset *s, const struct sock_query *q)
{
	uint32_t from, to;

	if (!s->index) {
		for (int i = 0; i < s->n; i++) {
			if (rule_matches(&s->rules[i], q))
				return i;
		}
		return -1;
	}
	if (q->unix_name)
		return first_match(s, s->unix_rules, s->n_unix, NULL, 0, q);
	from = s->port_first[ipaddr_port(q->addr)];
	to = s->port_first[ipaddr_port(q->addr) + 1];
	return first_match(s, s->by_port + from, to - from, s->wild, s->n_wild, q);
}

int rules_match(const struct sock_query *q)
{
	return set_match(current(), q);
}

/* A rule set of the caller's own, for explain's matcher (match.c). */
struct ruleset *ruleset_decode(const char *text, size_t len)
{
	struct cursor c = { 0 };

	return decode(text, len, &c);
}

int ruleset_match(const struct ruleset *s, const struct sock_query *q)
{
	return set_match(s, q);
}

int ruleset_count(const struct ruleset *s)
{
	return s->n;
}

const struct rule *ruleset_rule(const struct ruleset *s, int index)
{
	return &s->rules[index];
}

void ruleset_free(struct ruleset *s)
{
	set_free(s);
}

int rule_expand(const struct rule *r, const struct sock_query *q, char *out, size_t size)
{
	return ipaddr_expand(r->target, q->addr, q->type, out, size);
}

int rule_names_port(const struct rule *r)
{
	for (const char *p = r->target; p && (p = strchr(p, '%')) != NULL && p[1]; p += 2) {
		if (p[1] == 'p')
			return 1;
	}
	return 0;
}

/* ---- from a Unix name back to the IP address it stands for ---- */

struct captures {
	const char *port, *addr;
	size_t port_len, addr_len;
};

/* Can c be part of what placeholder kind expands to? */
static int placeholder_char(char kind, char c)
{
	if (kind == 'p')
		return c >= '0' && c <= '9';
	if (kind == 't')
		return c >= 'a' && c <= 'z';
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '.' || c == ':';
}

/* Does name fit target, each placeholder standing for a run of the characters it expands
 * to?  The first %p and %a found are captured; what they stand for is checked afterwards
 * by expanding forward.  budget bounds the backtracking a crafted name could cause. */
static int target_fits(const char *pat, const char *name, struct captures *c, int *budget)
{
	if (--*budget < 0)
		return 0;
	for (; *pat; pat++, name++) {
		if (*pat == '%' && pat[1] != '%') {
			size_t run = 0;

			while (name[run] && placeholder_char(pat[1], name[run]))
				run++;
			for (size_t n = run; n >= 1; n--) { /* longest first */
				struct captures saved = *c;

				if (pat[1] == 'p' && !c->port)
					*c = (struct captures){ name, c->addr, n, c->addr_len };
				if (pat[1] == 'a' && !c->addr)
					*c = (struct captures){ c->port, name, c->port_len, n };
				if (target_fits(pat + 2, name + n, c, budget))
					return 1;
				*c = saved;
			}
			return 0;
		}
		if (*pat == '%')
			pat++; /* "%%" is a '%' */
		if (*pat != *name)
			return 0;
	}
	return *name == 0;
}

/* The IP address r's placeholders and conditions say, for a socket of type. */
static void candidate(const struct rule *r, const struct captures *c, struct ipaddr *a)
{
	char text[INET6_ADDRSTRLEN + 1] = "";
	int family = r->family ? r->family : r->has_addr && !r->addr_v4 ? AF_INET6 : AF_INET;
	unsigned long port = 0;

	if (c->addr && c->addr_len < sizeof(text)) {
		memcpy(text, c->addr, c->addr_len);
		text[c->addr_len] = 0;
	}
	if (text[0] && strchr(text, ':'))
		family = AF_INET6;
	else if (text[0])
		family = AF_INET;
	ipaddr_any(a, family);
	if (text[0])
		inet_pton(family, text, family == AF_INET6 ? (void *)&a->in6.sin6_addr
							   : (void *)&a->in4.sin_addr);
	else if (r->has_addr && family == AF_INET && r->addr_v4)
		memcpy(&a->in4.sin_addr, r->addr, 4);
	else if (r->has_addr && family == AF_INET6 && !r->addr_v4)
		memcpy(&a->in6.sin6_addr, r->addr, 16);
	if (c->port && c->port_len <= 5)
		port = strtoul(c->port, NULL, 10);
	else if (r->has_ports)
		port = r->port_lo;
	ipaddr_set_port(a, port <= 65535 ? (uint16_t)port : 0);
}

int rules_invert(int dir, int type, const char *name, int abstract, struct ipaddr *out)
{
	const struct ruleset *s = current();
	char expanded[sizeof(((struct sockaddr_un *)0)->sun_path)];

	for (int i = 0; i < s->n; i++) {
		const struct rule *r = &s->rules[i];
		struct captures c = { 0 };
		struct sock_query q = { .dir = dir, .type = type, .addr = out };
		int budget = 4096;

		if (r->action != (abstract ? ACT_ABSTRACT : ACT_PATH) || (r->dir && r->dir != dir) ||
		    (r->type && r->type != type) || r->from_unix || r->from_abstract ||
		    !target_fits(r->target, name, &c, &budget))
			continue;
		candidate(r, &c, out);
		/* the address must lead back here: the first rule it meets, and this name */
		if (rules_match(&q) == i && !rule_expand(r, &q, expanded, sizeof(expanded)) &&
		    !strcmp(expanded, name))
			return i;
	}
	return -1;
}
