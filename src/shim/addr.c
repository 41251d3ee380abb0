/* IP addresses as the wrapped program sees them: what it bound, connected to, or the
 * stand-ins we report for Unix peers. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shim.h"

#define SIN6_LEN_RFC2133 24 /* the kernel's name for it */

socklen_t ipaddr_len(const struct ipaddr *a)
{
	return a->sa.sa_family == AF_INET6 ? sizeof(a->in6) : sizeof(a->in4);
}

int ipaddr_from_sockaddr(struct ipaddr *out, const struct sockaddr *sa, socklen_t len)
{
	memset(out, 0, sizeof(*out));
	if (!sa || len < sizeof(sa_family_t))
		return -1;
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		memcpy(&out->in4, sa, sizeof(out->in4));
		return 0;
	}
	/* the kernel takes RFC 2133's sockaddr_in6 too, 24 bytes without sin6_scope_id */
	if (sa->sa_family == AF_INET6 && len >= SIN6_LEN_RFC2133) {
		memcpy(&out->in6, sa, len < sizeof(out->in6) ? len : sizeof(out->in6));
		return 0;
	}
	return -1;
}

void v4_mapped(struct ipaddr *a, struct in_addr v4, uint16_t port)
{
	memset(a, 0, sizeof(*a));
	a->in6.sin6_family = AF_INET6;
	a->in6.sin6_port = port;
	a->in6.sin6_addr.s6_addr[10] = a->in6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(a->in6.sin6_addr.s6_addr + 12, &v4, sizeof(v4));
}

/*
 * Besides the usual forms, the kernel reads two more as IP addresses: an IPv4 socket
 * binds AF_UNSPEC with the unspecified address, and a UDP one sends to AF_UNSPEC, as to
 * AF_INET (BSD compatibility); an IPv6 datagram socket connects and sends to AF_INET
 * addresses as to their IPv4-mapped form.  The rules must see those too.
 */
int ipaddr_for_socket(struct ipaddr *out, const struct sockaddr *sa, socklen_t len,
		      int family, int type, enum ip_call call)
{
	if (ipaddr_from_sockaddr(out, sa, len) == 0) {
		if (family == AF_INET6 && type == SOCK_DGRAM && call != CALL_BIND &&
		    out->sa.sa_family == AF_INET) {
			struct sockaddr_in v4 = out->in4;

			v4_mapped(out, v4.sin_addr, v4.sin_port);
		}
		return 0;
	}
	if (family != AF_INET || !sa || len < sizeof(struct sockaddr_in) ||
	    sa->sa_family != AF_UNSPEC)
		return -1;
	memcpy(&out->in4, sa, sizeof(out->in4));
	out->in4.sin_family = AF_INET;
	if (call == CALL_BIND ? out->in4.sin_addr.s_addr == htonl(INADDR_ANY)
			      : call == CALL_SEND && type == SOCK_DGRAM)
		return 0;
	memset(out, 0, sizeof(*out));
	return -1;
}

uint16_t ipaddr_port(const struct ipaddr *a)
{
	return ntohs(a->sa.sa_family == AF_INET6 ? a->in6.sin6_port : a->in4.sin_port);
}

void ipaddr_set_port(struct ipaddr *a, uint16_t port)
{
	if (a->sa.sa_family == AF_INET6)
		a->in6.sin6_port = htons(port);
	else
		a->in4.sin_port = htons(port);
}

void ipaddr_any(struct ipaddr *a, int family)
{
	memset(a, 0, sizeof(*a));
	a->sa.sa_family = family;
}

void ipaddr_loopback(struct ipaddr *a, int family)
{
	ipaddr_any(a, family);
	if (family == AF_INET6)
		a->in6.sin6_addr = in6addr_loopback;
	else
		a->in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

void ipaddr_loopback_like(struct ipaddr *a, int family, const struct ipaddr *model)
{
	struct in_addr loopback = { htonl(INADDR_LOOPBACK) };

	ipaddr_loopback(a, family);
	if (family == AF_INET6 && model->sa.sa_family == AF_INET6 &&
	    IN6_IS_ADDR_V4MAPPED(&model->in6.sin6_addr))
		v4_mapped(a, loopback, 0);
}

int ipaddr_is_any(const struct ipaddr *a)
{
	if (a->sa.sa_family == AF_INET6)
		return IN6_IS_ADDR_UNSPECIFIED(&a->in6.sin6_addr);
	return a->in4.sin_addr.s_addr == htonl(INADDR_ANY);
}

const uint8_t *ipaddr_bytes(const struct ipaddr *a, int *v4)
{
	if (a->sa.sa_family == AF_INET) {
		*v4 = 1;
		return (const uint8_t *)&a->in4.sin_addr;
	}
	if (IN6_IS_ADDR_V4MAPPED(&a->in6.sin6_addr)) {
		*v4 = 1;
		return a->in6.sin6_addr.s6_addr + 12;
	}
	*v4 = 0;
	return a->in6.sin6_addr.s6_addr;
}

void ipaddr_format(const struct ipaddr *a, char *buf, size_t size)
{
	const void *src = a->sa.sa_family == AF_INET6 ? (const void *)&a->in6.sin6_addr
						      : (const void *)&a->in4.sin_addr;
	if (!inet_ntop(a->sa.sa_family, src, buf, size) && size)
		buf[0] = 0;
}

/*
 * Ports we report for Unix peers and for binds to port 0: distinct, in the kernel's
 * default ephemeral range, stable for the life of the socket they are stored in.  A
 * server's workers each number their clients, so the counter lives in a shared page
 * made when the first listener is converted, which the workers it forks afterwards
 * share; a process without one (an exec'd worker) starts at a point its pid picks.
 */
#define PORT_FIRST 32768
#define PORT_COUNT (60999 - PORT_FIRST + 1)

static _Atomic(atomic_uint *) shared_ports;
static atomic_uint own_ports;

void fake_port_share(void)
{
	atomic_uint *none = NULL, *page;
	int saved = errno;

	if (atomic_load_explicit(&shared_ports, memory_order_acquire))
		return;
	page = mmap(NULL, sizeof(*page), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		    -1, 0);
	if (page == MAP_FAILED) {
		errno = saved;
		return; /* each process counts for itself */
	}
	atomic_init(page, atomic_load(&own_ports) + (unsigned)getpid() * 4099u);
	if (!atomic_compare_exchange_strong(&shared_ports, &none, page))
		munmap(page, sizeof(*page)); /* a signal handler made one meanwhile */
	errno = saved;
}

uint16_t fake_port(void)
{
	atomic_uint *c = atomic_load_explicit(&shared_ports, memory_order_acquire);
	unsigned n;

	if (c)
		n = atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
	else
		n = atomic_fetch_add_explicit(&own_ports, 1, memory_order_relaxed) +
		    (unsigned)getpid() * 4099u;
	/* 7919 is prime to PORT_COUNT: every port once before any repeats */
	return (uint16_t)(PORT_FIRST + (n % PORT_COUNT) * 7919u % PORT_COUNT);
}

/* Hand an address to the caller as the kernel does: copy at most *dstlen bytes and
 * report the full length, so a short buffer means truncation, not overflow. */
int copy_out_addr(const void *src, socklen_t srclen, struct sockaddr *dst, socklen_t *dstlen)
{
	if (!dst || !dstlen) {
		errno = EFAULT;
		return -1;
	}
	if ((int)*dstlen < 0) {
		errno = EINVAL;
		return -1;
	}
	memcpy(dst, src, *dstlen < srclen ? *dstlen : srclen);
	*dstlen = srclen;
	return 0;
}

int ipaddr_in_prefix(const struct ipaddr *a, const uint8_t *net, int v4, unsigned len)
{
	int a_v4;
	const uint8_t *bytes = ipaddr_bytes(a, &a_v4);
	unsigned full = len / 8, rest = len % 8;

	if (a_v4 != v4)
		return 0;
	if (memcmp(bytes, net, full))
		return 0;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));

		if ((bytes[full] & mask) != (net[full] & mask))
			return 0;
	}
	return 1;
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

/* The text a placeholder stands for, in piece or a constant. */
static const char *placeholder(char which, const struct ipaddr *a, int type, char *piece,
			       size_t size)
{
	switch (which) {
	case 'p':
		if (!a)
			return "unknown";
		snprintf(piece, size, "%u", ipaddr_port(a));
		return piece;
	case 'a':
		if (!a)
			return "unknown";
		ipaddr_format(a, piece, size);
		return piece;
	case 't':
		return type == SOCK_STREAM ? "tcp" : type == SOCK_DGRAM ? "udp" : "unknown";
	case '%':
		return "%";
	}
	return NULL; /* the parser lets no other placeholder through */
}

int ipaddr_expand(const char *tmpl, const struct ipaddr *a, int type, char *out, size_t size)
{
	char piece[INET6_ADDRSTRLEN + 8];
	const char *p = tmpl;
	size_t used = 0;

	for (;;) {
		const char *pct = strchr(p, '%');
		const char *add;

		if (append(out, size, &used, p, pct ? (size_t)(pct - p) : strlen(p)))
			return -1;
		if (!pct)
			break;
		add = placeholder(pct[1], a, type, piece, sizeof(piece));
		if (!add) {
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

static int unix_name_fill(struct sockaddr_un *sun, const char *name, size_t off)
{
	size_t len = strlen(name);

	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	if (len + off >= sizeof(sun->sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun->sun_path + off, name, len);
	/* abstract names are the exact bytes given, with no terminating NUL */
	return (int)(offsetof(struct sockaddr_un, sun_path) + off + len + (off ? 0 : 1));
}

int unix_addr_fill(struct sockaddr_un *sun, const struct rule *r, const char *name)
{
	return unix_name_fill(sun, name, r->action == ACT_ABSTRACT);
}

int unix_path_fill(struct sockaddr_un *sun, const char *path)
{
	return unix_name_fill(sun, path, 0);
}
