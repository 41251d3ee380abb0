/*
 * What a converted socket answers for the IP-, IPv6-, TCP- and UDP-level options the
 * program never set: what a real socket of its family and type answers on this machine.
 * Programs read them and act on them: sshd drops a connection that carries IP options,
 * others log or tune by TCP_MAXSEG, TCP_CONGESTION or TCP_INFO.
 *
 * The answers are learned once per process and family/type, from a real socket that is
 * never bound (socket() alone opens no port), and inherited by forked children.  A
 * process that installs a seccomp filter learns them all just before (sandbox.c); one
 * that is sandboxed without having learned them falls back to the kernel's defaults
 * below.  A few answers depend on the socket's state: a connected socket answers as a
 * loopback connection does (MSS, path MTU), IPV6_V6ONLY follows the bound address, and
 * TCP_INFO is made up around the state.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>

#include "shim.h"

/* The options we learn, with the kernel's default for an unbound socket. */
static const struct known {
	int level, name;
	int fallback;    /* an int, unless */
	int err;         /* it is this error, or */
	uint8_t len;     /* len bytes of */
	const char *str; /* this */
} known[] = {
	{ IPPROTO_IP, IP_OPTIONS, 0, 0, 0, "" },
	{ IPPROTO_IP, IP_TOS, 0, 0, 0, NULL },
	{ IPPROTO_IP, IP_TTL, 64, 0, 0, NULL },
	{ IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_WANT, 0, 0, NULL },
	{ IPPROTO_IP, IP_MTU, 0, ENOTCONN, 0, NULL },
	{ IPPROTO_IP, IP_RECVERR, 0, 0, 0, NULL },
	{ IPPROTO_IP, IP_PKTINFO, 0, 0, 0, NULL },
	{ IPPROTO_IP, IP_FREEBIND, 0, 0, 0, NULL },
	{ IPPROTO_IP, IP_TRANSPARENT, 0, 0, 0, NULL },
	{ IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 0, 0, 0, NULL },
	{ IPPROTO_IP, IP_MULTICAST_TTL, 1, 0, 0, NULL },
	{ IPPROTO_IP, IP_MULTICAST_LOOP, 1, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_V6ONLY, 0, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_UNICAST_HOPS, 64, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 1, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_MULTICAST_LOOP, 1, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_WANT, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_MTU, 0, ENOTCONN, 0, NULL },
	{ IPPROTO_IPV6, IPV6_TCLASS, 0, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_RECVERR, 0, 0, 0, NULL },
	{ IPPROTO_IPV6, IPV6_RECVPKTINFO, 0, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_NODELAY, 0, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_MAXSEG, 536, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_CORK, 0, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_KEEPIDLE, 7200, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_KEEPINTVL, 75, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_KEEPCNT, 9, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_SYNCNT, 6, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_LINGER2, 60, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_DEFER_ACCEPT, 0, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_WINDOW_CLAMP, 0, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_QUICKACK, 1, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_CONGESTION, 0, 0, 16, "cubic" },
	{ IPPROTO_TCP, TCP_USER_TIMEOUT, 0, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_FASTOPEN, 0, 0, 0, NULL },
	{ IPPROTO_TCP, TCP_NOTSENT_LOWAT, -1, 0, 0, NULL },
	{ IPPROTO_UDP, UDP_CORK, 0, 0, 0, NULL },
	{ IPPROTO_UDP, UDP_SEGMENT, 0, 0, 0, NULL },
	{ IPPROTO_UDP, UDP_GRO, 0, 0, 0, NULL },
};
#define N_KNOWN (sizeof(known) / sizeof(known[0]))

struct answer {
	int err;        /* getsockopt failed with this */
	uint8_t len;
	uint8_t value[16];
};

/* [IPv6][datagram]; learned[] is set once answers[] is complete. */
static struct answer answers[2][2][N_KNOWN];
static int learned[2][2];

static int known_index(int level, int name)
{
	for (unsigned i = 0; i < N_KNOWN; i++)
		if (known[i].level == level && known[i].name == name)
			return (int)i;
	return -1;
}

/* Ask a real, unbound socket of family and type; 0, or -1 when none can be made. */
static int learn(int family, int type)
{
	struct answer *a = answers[family == AF_INET6][type == SOCK_DGRAM];
	struct answer got[N_KNOWN];
	int s, *done = &learned[family == AF_INET6][type == SOCK_DGRAM];

	if (__atomic_load_n(done, __ATOMIC_ACQUIRE))
		return 0;
	if (sandboxed())
		return -1;
	s = REAL(socket)(family, type | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	for (unsigned i = 0; i < N_KNOWN; i++) {
		socklen_t len = sizeof(got[i].value);

		memset(&got[i], 0, sizeof(got[i]));
		if (REAL(getsockopt)(s, known[i].level, known[i].name, got[i].value, &len))
			got[i].err = errno;
		else
			got[i].len = (uint8_t)(len < sizeof(got[i].value) ? len : sizeof(got[i].value));
	}
	REAL(close)(s);
	/* Concurrent learners (threads, a signal handler) write the same answers. */
	memcpy(a, got, sizeof(got));
	__atomic_store_n(done, 1, __ATOMIC_RELEASE);
	return 0;
}

void sockopt_learn(void)
{
	int saved = errno;

	learn(AF_INET, SOCK_STREAM);
	learn(AF_INET6, SOCK_STREAM);
	learn(AF_INET, SOCK_DGRAM);
	learn(AF_INET6, SOCK_DGRAM);
	errno = saved;
}

/* The kernel's default for option k on an unbound socket of this type, in a. */
static void fallback(const struct known *k, int type, struct answer *a)
{
	int v = k->fallback;

	memset(a, 0, sizeof(*a));
	if ((type == SOCK_DGRAM) != (k->level == IPPROTO_UDP) &&
	    (k->level == IPPROTO_TCP || k->level == IPPROTO_UDP)) {
		a->err = type == SOCK_DGRAM ? ENOPROTOOPT : EOPNOTSUPP;
		return;
	}
	a->err = k->err;
	if (k->str) {
		a->len = k->len;
		memcpy(a->value, k->str, strlen(k->str));
		return;
	}
	a->len = sizeof(v);
	memcpy(a->value, &v, sizeof(v));
}

static int connected(const struct fd_entry *e)
{
	return e->type == SOCK_STREAM && (e->role == ROLE_CLIENT || e->role == ROLE_ACCEPTED);
}

/* Where a bound or connected socket answers otherwise than an unbound one: 1 with the
 * value in *v, else 0.  Connections answer as on loopback. */
static int state_answer(const struct fd_entry *e, int level, int name, int *v)
{
	int v6 = e->family == AF_INET6;

	if (v6 && level == IPPROTO_IPV6 && name == IPV6_V6ONLY && e->role != ROLE_CLIENT &&
	    e->local.sa.sa_family == AF_INET6 && !ipaddr_is_any(&e->local) &&
	    !IN6_IS_ADDR_V4MAPPED(&e->local.in6.sin6_addr)) {
		*v = 1; /* bound to one IPv6 address: the kernel sets it */
		return 1;
	}
	if (!connected(e))
		return 0;
	if (level == IPPROTO_TCP && name == TCP_MAXSEG)
		*v = 32768;
	else if ((level == IPPROTO_IP && name == IP_MTU) ||
		 (v6 && level == IPPROTO_IPV6 && name == IPV6_MTU))
		*v = v6 ? 65536 : 65535;
	else if (!v6 && e->role == ROLE_ACCEPTED && level == IPPROTO_IP &&
		 name == IP_MULTICAST_TTL)
		*v = 64; /* the SYN's TTL */
	else
		return 0;
	return 1;
}

/* TCP_INFO: a fresh connection's numbers around the state the socket is in. */
static int tcp_info(const struct fd_entry *e, void *val, socklen_t *len)
{
	struct tcp_info ti = { 0 };
	int v;

	if (e->type != SOCK_STREAM) {
		errno = ENOPROTOOPT;
		return -1;
	}
	ti.tcpi_state = e->role == ROLE_LISTENER ? TCP_LISTEN
			: e->role == ROLE_CLIENT || e->role == ROLE_ACCEPTED ? TCP_ESTABLISHED
									    : TCP_CLOSE;
	if (connected(e) && state_answer(e, IPPROTO_TCP, TCP_MAXSEG, &v)) {
		ti.tcpi_snd_mss = ti.tcpi_rcv_mss = ti.tcpi_advmss = (uint32_t)v;
		ti.tcpi_pmtu = 65535;
		ti.tcpi_rto = 200000; /* microseconds: the minimum, as on loopback */
		ti.tcpi_snd_cwnd = 10;
		ti.tcpi_snd_ssthresh = 0x7fffffff; /* not in slow start yet */
		ti.tcpi_rcv_ssthresh = ti.tcpi_rcv_space = 65483;
	} else {
		ti.tcpi_snd_mss = 536;
		ti.tcpi_rto = 1000000; /* the initial one */
	}
	sockopt_copy_out(IPPROTO_TCP, &ti, sizeof(ti), val, len);
	return 0;
}

void sockopt_copy_out(int level, const void *value, socklen_t size, void *val, socklen_t *len)
{
	int v;

	/* The IPv4 level answers a buffer shorter than an int with one byte, if that
	 * holds the value (ip_sockglue.c); the others truncate. */
	if (level == IPPROTO_IP && size == sizeof(v) && *len > 0 && *len < sizeof(v)) {
		memcpy(&v, value, sizeof(v));
		if (v >= 0 && v <= 255) {
			*(unsigned char *)val = (unsigned char)v;
			*len = 1;
			return;
		}
	}
	if (*len > size)
		*len = size;
	if (*len) /* val may be NULL then */
		memcpy(val, value, *len);
}

static int give(int level, const struct answer *a, void *val, socklen_t *len)
{
	if (a->err) {
		errno = a->err;
		return -1;
	}
	sockopt_copy_out(level, a->value, a->len, val, len);
	return 0;
}

/* An option outside the table: a real socket's own answer, or ENOPROTOOPT in a sandbox. */
static int ask_real(const struct fd_entry *e, int level, int name, void *val, socklen_t *len)
{
	int s, r, saved;

	if (sandboxed() ||
	    (s = REAL(socket)(e->family, e->type | SOCK_CLOEXEC, 0)) < 0) {
		errno = ENOPROTOOPT;
		return -1;
	}
	r = REAL(getsockopt)(s, level, name, val, len);
	saved = errno;
	REAL(close)(s);
	errno = saved;
	return r;
}

int sockopt_answer(const struct fd_entry *e, int level, int name, void *val, socklen_t *len)
{
	struct answer a;
	int i, v, saved = errno, dgram = e->type == SOCK_DGRAM;

	if (level == IPPROTO_TCP && name == TCP_INFO)
		return tcp_info(e, val, len);
	if (state_answer(e, level, name, &v)) {
		a = (struct answer){ .len = sizeof(v) };
		memcpy(a.value, &v, sizeof(v));
		return give(level, &a, val, len);
	}
	i = known_index(level, name);
	if (i < 0)
		return ask_real(e, level, name, val, len);
	if (learn(e->family, e->type) == 0)
		a = answers[e->family == AF_INET6][dgram][i];
	else
		fallback(&known[i], e->type, &a);
	errno = saved;
	return give(level, &a, val, len);
}
