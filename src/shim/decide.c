/*
 * Which rule a socket call meets: shared by the shim's conversions (convert.c) and the
 * seccomp supervisor (src/supervisor).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>

#include "shim.h"

static const char *action_name(int action)
{
	static const char *const names[] = { "?", "path", "abstract", "reject", "blackhole",
					     "ignore", "systemd", "vsock", "tipc", "fc",
					     "receive" };
	return action >= ACT_PATH && action <= ACT_RECEIVE ? names[action] : "?";
}

/* What a log line says the socket call is about. */
static void query_text(const struct sock_query *q, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN];

	if (q->unix_name) {
		snprintf(buf, size, "%s%s", q->abstract ? "@" : "", q->unix_name);
		return;
	}
	ipaddr_format(q->addr, ip, sizeof(ip));
	snprintf(buf, size, "%s port %u", ip, ipaddr_port(q->addr));
}

/*
 * The common part of bind and connect: find the rule, and if it converts, produce the
 * expanded target.  Returns 1 when the call should go to libc unchanged, 0 when the
 * rule converts (r and target set), -1 with errno when the call must fail.
 */
int rule_decide(int fd, const struct sock_query *q, const struct rule **r,
		char *target, size_t size)
{
	char text[sizeof(((struct sockaddr_un *)0)->sun_path) + 16];
	int idx;

	rules_need();
	if (rules_state == RULES_NONE)
		return 1;
	if (rules_state == RULES_BROKEN) {
		errno = EACCES;
		return -1;
	}
	idx = rules_match(q);
	text[0] = 0;
	if (log_verbosity >= LOG_DEBUG_) /* formatting costs more than the rest */
		query_text(q, text, sizeof(text));
	if (idx < 0) {
		ulog(LOG_DEBUG_, "fd %d: %s %s matches no rule", fd,
		     q->dir == DIR_IN ? "bind" : "connect", text);
		return 1;
	}
	*r = rule_at(idx);
	ulog(LOG_DEBUG_, "fd %d: %s %s matches rule %d (%s)", fd,
	     q->dir == DIR_IN ? "bind" : "connect", text, idx + 1, action_name((*r)->action));
	switch ((*r)->action) {
	case ACT_IGNORE:
		return 1;
	case ACT_REJECT:
		errno = (*r)->reject_errno;
		return -1;
	case ACT_PATH:
	case ACT_ABSTRACT:
	case ACT_RECEIVE:
		if (rule_expand(*r, q, target, size)) {
			query_text(q, text, sizeof(text));
			ulog(LOG_ERR_, "rule %d: %s for %s is too long", idx + 1,
			     action_name((*r)->action), text);
			return -1;
		}
		break;
	case ACT_BLACKHOLE:
	case ACT_SYSTEMD:
	case ACT_VSOCK:
	case ACT_TIPC:
	case ACT_FC:
		target[0] = 0;
		break;
	default:
		ulog(LOG_ERR_, "rule %d: '%s' is not supported by this shim", idx + 1,
		     action_name((*r)->action));
		errno = EACCES;
		return -1;
	}
	return 0;
}
