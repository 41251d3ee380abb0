/*
 * The shim's matcher for `unixify explain`, in a library of its own
 * (libunixify-match.so): the same rules.c, glob.c and addr.c as libunixify.so, without
 * its start-up or interposed calls, so that the launcher can load it with ctypes and
 * neither read its own UNIXIFY_* environment nor change any socket of its own.
 * unixify_match() is all it exports.
 */
#include <arpa/inet.h>
#include <string.h>

#include "shim.h"

/* rules.c's ties to the process's own rules, which this library never loads */
void ulog(int level UNUSED, const char *fmt UNUSED, ...)
{
}

int unsock_configured(void)
{
	return 0;
}

int unsock_rules(void)
{
	return -1;
}

char *rulefile_read(const char *path UNUSED, size_t size UNUSED, const char **why)
{
	*why = "not read by the matcher library";
	return NULL;
}

static int query_address(struct ipaddr *a, const char *ip, unsigned port)
{
	memset(a, 0, sizeof(*a));
	if (port > 65535)
		return -1;
	if (inet_pton(AF_INET, ip, &a->in4.sin_addr) == 1)
		a->sa.sa_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &a->in6.sin6_addr) == 1)
		a->sa.sa_family = AF_INET6;
	else
		return -1;
	ipaddr_set_port(a, (uint16_t)port);
	return 0;
}

/* A path=, abstract= or receive= rule's target for q into target, as a socket call
 * would get it: "" when it does not fit (in size, or in a Unix address: the call fails). */
static void expand(const struct rule *r, const struct sock_query *q, char *target,
		   size_t size)
{
	struct sockaddr_un sun;

	if ((r->action != ACT_PATH && r->action != ACT_ABSTRACT && r->action != ACT_RECEIVE) ||
	    !size)
		return;
	if (rule_expand(r, q, target, size) || unix_addr_fill(&sun, r, target) < 0)
		target[0] = 0;
}

/*
 * The rules (len bytes of their encoding) asked about a bind (dir DIR_IN) or a connect
 * or send (DIR_OUT) of a socket of type to ip (text) and port, or with ip NULL, of a Unix
 * socket to unix_name (an abstract name if abstract).  why[i] gets rule_mismatch() of
 * rule i < n_why; a matching path=, abstract= or receive= rule's expansion goes to target ("" if
 * it does not fit in size or in a Unix address).  The index of the first matching rule, -1 when none
 * matches, -2 when the rules or the query are malformed.
 */
API int unixify_match(const char *rules, size_t len, int dir, int type, const char *ip,
		      unsigned port, const char *unix_name, int abstract, unsigned char *why,
		      size_t n_why, char *target, size_t size);
API int unixify_match(const char *rules, size_t len, int dir, int type, const char *ip,
		      unsigned port, const char *unix_name, int abstract, unsigned char *why,
		      size_t n_why, char *target, size_t size)
{
	struct sock_query q = { .dir = dir, .type = type, .unix_name = unix_name,
				.abstract = abstract };
	struct ruleset *s;
	struct ipaddr a;
	int match;

	if (size)
		target[0] = 0;
	if (ip ? query_address(&a, ip, port) : !unix_name)
		return -2;
	if (ip) {
		q.addr = &a;
		q.unix_name = NULL;
	}
	s = ruleset_decode(rules, len);
	if (!s)
		return -2;
	for (int i = 0; i < ruleset_count(s) && (size_t)i < n_why; i++)
		why[i] = (unsigned char)rule_mismatch(ruleset_rule(s, i), &q);
	match = ruleset_match(s, &q);
	if (match >= 0)
		expand(ruleset_rule(s, match), &q, target, size);
	ruleset_free(s);
	return match;
}
