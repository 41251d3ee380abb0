/*
 * A process's connections to its own converted listeners.
 *
 * Natively a connect to an address one of the process's own listeners is bound to (or,
 * for a wildcard listener, any local address on its port) reaches that listener: Apache
 * wakes its idle children so.  The listener is a Unix socket now, so such a connect goes
 * to the listener's Unix address, before any 'out' rule is asked; and when that address
 * cannot be had (a blackholed listener), it fails rather than go to real TCP, where
 * another user's server may have taken the port we gave up.
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

/* Ports some converted listener of this process stands for, a bit per port: a connect
 * to another port looks no further.  Zero pages until used; never cleared. */
static uint64_t listener_ports[65536 / 64];

void listener_note(const struct ipaddr *local)
{
	uint16_t port = ipaddr_port(local);

	__atomic_fetch_or(&listener_ports[port / 64], 1ull << (port % 64), __ATOMIC_RELAXED);
}

static int port_noted(uint16_t port)
{
	return (__atomic_load_n(&listener_ports[port / 64], __ATOMIC_RELAXED) >> (port % 64)) & 1;
}

/* Loopback, as the kernel reads a destination: 127/8, ::1, or their IPv4-mapped form. */
static int is_loopback(const uint8_t *bytes, int v4)
{
	static const uint8_t one[16] = { [15] = 1 };

	return v4 ? bytes[0] == 127 : !memcmp(bytes, one, 16);
}

/* Is a a local address in this network namespace?  Asked of the kernel with a bind
 * that takes no port (IP_BIND_ADDRESS_NO_PORT), so no port opens.  When it cannot
 * tell (or may not ask: the program's own seccomp filter may forbid the probe socket),
 * yes: our listener rather than real TCP to the port we gave up. */
static int is_local(const struct ipaddr *a)
{
	struct ipaddr probe = *a;
	int one = 1, s, r = 1, saved = errno;

	if (sandboxed())
		return 1;
	s = REAL(socket)(a->sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		errno = saved;
		return 1;
	}
	ipaddr_set_port(&probe, 0);
	if (REAL(setsockopt)(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) == 0 &&
	    REAL(bind)(s, &probe.sa, ipaddr_len(&probe)) != 0)
		r = errno != EADDRNOTAVAIL;
	REAL(close)(s);
	errno = saved;
	return r;
}

/* Multicast and broadcast: bind takes them (so the locality probe would say yes), but a
 * TCP connect there fails (ENETUNREACH); no listener of ours stands for them. */
static int not_unicast(const uint8_t *bytes, int v4)
{
	static const uint8_t broadcast[4] = { 255, 255, 255, 255 };

	return v4 ? (bytes[0] & 0xf0) == 0xe0 || !memcmp(bytes, broadcast, 4) : bytes[0] == 0xff;
}

struct own_search {
	const uint8_t *dest; /* destination address bytes (4 for IPv4 and IPv4-mapped) */
	int dest_v4;
	uint16_t port;
	int type;
	int exact_fd, wild_fd; /* the first listener bound to dest; to a wildcard address */
	struct fd_entry exact, wild;
};

/* A listener that an IPv6 wildcard bind does not extend to IPv4 (IPV6_V6ONLY set)? */
static int v6only(int fd, const struct fd_entry *e)
{
	struct pending_opt o;
	int v = 0;

	if (fd_option(fd, e, IPPROTO_IPV6, IPV6_V6ONLY, &o) || o.len < sizeof(v))
		return 0;
	memcpy(&v, o.value, sizeof(v));
	return v != 0;
}

static void consider(int fd, const struct fd_entry *e, void *arg)
{
	struct own_search *s = arg;
	const uint8_t *bytes;
	int v4;

	if (e->kind != FD_CONVERTED || e->role != ROLE_LISTENER || e->type != s->type ||
	    ipaddr_port(&e->local) != s->port)
		return;
	bytes = ipaddr_bytes(&e->local, &v4);
	if (ipaddr_is_any(&e->local)) {
		/* an IPv4 wildcard takes IPv4 only; an IPv6 one both, unless v6only */
		if ((v4 && !s->dest_v4) || s->wild_fd >= 0)
			return;
		s->wild_fd = fd;
		s->wild = *e;
		return;
	}
	if (v4 != s->dest_v4 || memcmp(bytes, s->dest, v4 ? 4 : 16) || s->exact_fd >= 0)
		return;
	s->exact_fd = fd;
	s->exact = *e;
}

/* A listener of ours that a stream connect to dest reaches natively: its fd with *l
 * filled, or -1. */
static int find_listener(const struct ipaddr *dest, int type, struct fd_entry *l)
{
	struct own_search s = { .port = ipaddr_port(dest), .type = type, .exact_fd = -1,
				.wild_fd = -1 };
	struct ipaddr d = *dest;

	if (ipaddr_is_any(&d)) /* connecting to the unspecified address is to loopback */
		ipaddr_loopback_like(&d, d.sa.sa_family, dest);
	s.dest = ipaddr_bytes(&d, &s.dest_v4);
	if (not_unicast(s.dest, s.dest_v4))
		return -1;
	state_lock(); /* reading entries only */
	fd_for_each(consider, &s);
	state_unlock();
	if (s.exact_fd >= 0) {
		*l = s.exact;
		return s.exact_fd;
	}
	if (s.wild_fd < 0 || (s.dest_v4 && s.wild.local.sa.sa_family == AF_INET6 &&
			      v6only(s.wild_fd, &s.wild)))
		return -1;
	if (!is_loopback(s.dest, s.dest_v4) && !is_local(&d))
		return -1;
	*l = s.wild;
	return s.wild_fd;
}

/* The Unix address of our listener fd (entry l): the file we made for it, else where
 * the rules put its address if this process holds that file, or its abstract name, or
 * the passed socket's own address.  0 with sun and len set, or -1. */
static int listener_address(int fd, const struct fd_entry *l, struct sockaddr_un *sun,
			    socklen_t *len)
{
	struct sock_query q = { .dir = DIR_IN, .type = l->type, .addr = &l->local };
	char target[sizeof(sun->sun_path)];
	const struct rule *r;
	int idx, n;

	if (l->sockfile >= 0 && sockfile_path(l->sockfile, target, sizeof(target)) == 0) {
		n = unix_path_fill(sun, target);
		goto done;
	}
	idx = rules_match(&q);
	r = idx >= 0 ? rule_at(idx) : NULL;
	if (r && r->action == ACT_SYSTEMD) {
		*len = sizeof(*sun);
		return REAL(getsockname)(fd, (struct sockaddr *)sun, len) ||
		       sun->sun_family != AF_UNIX || *len <= sizeof(sa_family_t) ? -1 : 0;
	}
	if (!r || (r->action != ACT_PATH && r->action != ACT_ABSTRACT) ||
	    rule_expand(r, &q, target, sizeof(target)) ||
	    (r->action == ACT_PATH && sockfile_find(target) < 0))
		return -1;
	n = unix_addr_fill(sun, r, target);
done:
	if (n < 0)
		return -1;
	*len = (socklen_t)n;
	return 0;
}

int own_listener(int fd, const struct ipaddr *dest, int type, struct sockaddr_un *sun,
		 socklen_t *len)
{
	struct fd_entry l;
	char ip[INET6_ADDRSTRLEN];
	int lfd;

	if (type != SOCK_STREAM || !port_noted(ipaddr_port(dest)))
		return 1;
	lfd = find_listener(dest, type, &l);
	if (lfd < 0)
		return 1;
	if (listener_address(lfd, &l, sun, len) == 0) {
		ulog(LOG_DEBUG_, "fd %d: connect to our own listener fd %d", fd, lfd);
		return 0;
	}
	ipaddr_format(dest, ip, sizeof(ip));
	ulog(LOG_INFO_, "fd %d: %s port %u is our own listener fd %d, which nobody can reach; "
	     "refusing", fd, ip, ipaddr_port(dest), lfd);
	errno = ECONNREFUSED;
	return -1;
}
