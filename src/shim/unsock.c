/*
 * Drop-in for unsock: with no UNIXIFY_RULES in the environment, unsock's variables are
 * turned into rules for the one matching engine:
 *
 *   UNSOCK_DIR=/d [UNSOCK_ADDR=a.b.c.d[/bits]] [UNSOCK_PORT=p] [UNSOCK_MODE=ooo]
 *       ipv4,addr=a.b.c.d/bits[,port=p],path=/d/%p.sock[,mode=ooo]
 *       (UNSOCK_ADDR defaults to 127.175.0.0/32; /0 matches every IPv4 address)
 *   UNSOCK_BLOCK_INET6=1     ipv6,reject=EAFNOSUPPORT   (refused at socket(), as unsock)
 *   UNSOCK_BLOCK_INET=1      ipv4,reject=EACCES         (what the first rule leaves)
 *
 * Accepted clients are reported from UNSOCK_ADDR's address (port UNSOCK_PORT if set),
 * as unsock does.  UNSOCK_ACCEPT_CONVERT_ALL / _VSOCK ask for what converted listeners
 * always do here: report peers as IPv4.  A control file at /d/<port>.sock is honoured
 * like at any rule's path.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

#define DEFAULT_ADDR "127.175.0.0"

struct ipaddr unsock_peer;

static int flag(const char *name)
{
	const char *v = getenv(name);

	return v && *v && strcmp(v, "0") != 0;
}

int unsock_configured(void)
{
	return getenv("UNSOCK_DIR") || flag("UNSOCK_BLOCK_INET") || flag("UNSOCK_BLOCK_INET6");
}

static int bad(const char *name, const char *value, const char *why)
{
	ulog(LOG_ERR_, "%s=%s: %s; IP bind/connect will fail with EACCES", name, value, why);
	return -1;
}

static int number(const char *s, unsigned long max, int base, unsigned long *out)
{
	char *end;

	if (!*s || *s == '-' || *s == '+')
		return -1;
	errno = 0;
	*out = strtoul(s, &end, base);
	return *end || errno || *out > max ? -1 : 0;
}

/* UNSOCK_ADDR: an IPv4 address with an optional prefix length. */
static int parse_addr(struct rule *r, const char *text)
{
	char host[INET_ADDRSTRLEN];
	const char *slash = strchr(text, '/');
	size_t n = slash ? (size_t)(slash - text) : strlen(text);
	unsigned long bits = 32;
	struct in_addr a;

	if (n >= sizeof(host) || (slash && number(slash + 1, 32, 10, &bits)))
		return -1;
	memcpy(host, text, n);
	host[n] = 0;
	if (inet_pton(AF_INET, host, &a) != 1)
		return -1;
	memcpy(r->addr, &a, 4);
	r->has_addr = 1;
	r->addr_v4 = 1;
	r->prefix = (uint8_t)bits;
	ipaddr_any(&unsock_peer, AF_INET);
	unsock_peer.in4.sin_addr = a;
	return 0;
}

static int conversion_rule(const char *dir)
{
	const char *addr = getenv("UNSOCK_ADDR"), *port = getenv("UNSOCK_PORT");
	const char *mode = getenv("UNSOCK_MODE");
	char target[sizeof(((struct sockaddr_un *)0)->sun_path) + 16];
	size_t len = strlen(dir);
	unsigned long num;
	struct rule *r = rules_append();

	while (len > 1 && dir[len - 1] == '/')
		len--;
	if (dir[0] != '/')
		return bad("UNSOCK_DIR", dir, "not an absolute path");
	if (len + sizeof("/65535.sock") > sizeof(((struct sockaddr_un *)0)->sun_path))
		return bad("UNSOCK_DIR", dir, "too long for socket paths in it");
	snprintf(target, sizeof(target), "%.*s/%%p.sock", (int)len, dir);
	r->action = ACT_PATH;
	r->family = AF_INET;
	r->target = rules_keep_string(target);
	if (parse_addr(r, addr ? addr : DEFAULT_ADDR))
		return bad("UNSOCK_ADDR", addr, "not an IPv4 address[/bits]");
	if (port) {
		if (number(port, 65535, 10, &num) || num == 0)
			return bad("UNSOCK_PORT", port, "not a port number");
		r->has_ports = 1;
		r->port_lo = r->port_hi = (uint16_t)num;
		ipaddr_set_port(&unsock_peer, (uint16_t)num);
	}
	if (mode) {
		if (number(mode, 07777, 8, &num))
			return bad("UNSOCK_MODE", mode, "not an octal file mode");
		r->mode = (int)num;
	}
	return 0;
}

static void reject_rule(int family, int err)
{
	struct rule *r = rules_append();

	r->action = ACT_REJECT;
	r->family = (uint8_t)family;
	r->reject_errno = err;
}

int unsock_rules(void)
{
	const char *dir = getenv("UNSOCK_DIR");

	if (dir && conversion_rule(dir))
		return -1;
	if (flag("UNSOCK_BLOCK_INET6"))
		reject_rule(AF_INET6, EAFNOSUPPORT);
	if (flag("UNSOCK_BLOCK_INET"))
		reject_rule(AF_INET, EACCES);
	return 0;
}
