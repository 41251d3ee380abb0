#define _GNU_SOURCE
/*
 * records: what the shim must remember of an IP socket it may convert, past any small
 * number.  Prints "key=value" lines.
 *
 *   records epoll ADDR PORT N    a non-blocking stream socket registered with N epoll
 *                                instances, removed from the first and the last, then
 *                                connected; reports how many of the others see it (and
 *                                which of the two do), and how many EPOLL_CTL_MOD / DEL
 *                                calls on the others then fail
 *   records epoll ADDR PORT N bind  the same, binding ADDR port 0 before the connect
 *   records opts ADDR PORT THEN  set many IP- and TCP-level options on a stream socket and
 *                                read them back; then THEN ("bind" to ADDR port 0,
 *                                "connect" to ADDR PORT, or "dup" and close the
 *                                original) and read them back again (after "dup", a new
 *                                socket must have none of them); reports the options
 *                                that read back wrong
 *   records nomem ADDR           with no memory to spare, one option and one epoll
 *                                registration more than a socket's entry holds inline
 */
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"

static int stream_socket(const char *host, int flags)
{
	int fd = socket(strchr(host, ':') ? AF_INET6 : AF_INET, SOCK_STREAM | flags, 0);

	if (fd < 0)
		die("socket");
	return fd;
}

static int epoll_many(const char *host, int port, int n, int bind_first)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	int fd = stream_socket(host, SOCK_NONBLOCK), seen = 0, mod_fail = 0, del_fail = 0;
	int ep[64];

	if (n < 3 || n > 64)
		return 2;
	for (int i = 0; i < n; i++) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i };

		ep[i] = epoll_create1(EPOLL_CLOEXEC);
		if (ep[i] < 0 || epoll_ctl(ep[i], EPOLL_CTL_ADD, fd, &ev))
			die("epoll");
	}
	if (bind_first) { /* a pending socket becomes IP, then converts at connect */
		struct sockaddr_storage any;
		socklen_t anylen = make_addr(host, 0, &any);

		if (bind(fd, (struct sockaddr *)&any, anylen))
			die("bind");
	}
	/* the first and the last leave before the conversion, and must stay out */
	if (epoll_ctl(ep[0], EPOLL_CTL_DEL, fd, NULL) || epoll_ctl(ep[n - 1], EPOLL_CTL_DEL, fd, NULL))
		die("epoll_del");
	if (connect(fd, (struct sockaddr *)&ss, len) && errno != EINPROGRESS)
		die("connect");
	for (int i = 1; i < n - 1; i++) {
		struct epoll_event ev = { 0 };

		if (epoll_wait(ep[i], &ev, 1, 3000) == 1 && ev.data.u32 == (uint32_t)i)
			seen++;
		else
			printf("unseen=%d\n", i);
	}
	for (int i = 0; i < n; i += n - 1) {
		struct epoll_event ev;

		if (epoll_wait(ep[i], &ev, 1, 0) != 0)
			printf("stale=%d\n", i);
	}
	for (int i = 1; i < n - 1; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };

		mod_fail += epoll_ctl(ep[i], EPOLL_CTL_MOD, fd, &ev) != 0;
		del_fail += epoll_ctl(ep[i], EPOLL_CTL_DEL, fd, NULL) != 0;
	}
	printf("seen=%d\nmod_fail=%d\ndel_fail=%d\n", seen, mod_fail, del_fail);
	return 0;
}

struct opt {
	int level, name, value;
	const char *text;
};

#define OPT(level, name, value) { level, name, value, #name }
static const struct opt tcp_opts[] = {
	OPT(IPPROTO_TCP, TCP_NODELAY, 1),         OPT(IPPROTO_TCP, TCP_KEEPIDLE, 77),
	OPT(IPPROTO_TCP, TCP_KEEPINTVL, 13),      OPT(IPPROTO_TCP, TCP_KEEPCNT, 5),
	OPT(IPPROTO_TCP, TCP_USER_TIMEOUT, 12345), OPT(IPPROTO_TCP, TCP_NOTSENT_LOWAT, 4096),
	OPT(IPPROTO_TCP, TCP_MAXSEG, 1000),       OPT(IPPROTO_TCP, TCP_SYNCNT, 4),
	OPT(IPPROTO_TCP, TCP_LINGER2, 30),
};
static const struct opt ip4_opts[] = {
	OPT(IPPROTO_IP, IP_TOS, 0x10),   OPT(IPPROTO_IP, IP_TTL, 33),
	OPT(IPPROTO_IP, IP_FREEBIND, 1), OPT(IPPROTO_IP, IP_RECVERR, 1),
	OPT(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1),
};
static const struct opt ip6_opts[] = {
	OPT(IPPROTO_IPV6, IPV6_V6ONLY, 1),  OPT(IPPROTO_IPV6, IPV6_UNICAST_HOPS, 33),
	OPT(IPPROTO_IPV6, IPV6_TCLASS, 0x10), OPT(IPPROTO_IPV6, IPV6_RECVERR, 1),
	OPT(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1),
};
#define N(a) (int)(sizeof(a) / sizeof((a)[0]))

static void set_all(int fd, const struct opt *o, int n)
{
	for (int i = 0; i < n; i++) {
		if (setsockopt(fd, o[i].level, o[i].name, &o[i].value, sizeof(int)))
			printf("set_fail=%s:%s\n", o[i].text, strerror(errno));
	}
}

static int check_all(int fd, const struct opt *o, int n, const char *when)
{
	int bad = 0;

	for (int i = 0; i < n; i++) {
		int value = -1;
		socklen_t len = sizeof(value);

		if (getsockopt(fd, o[i].level, o[i].name, &value, &len) || value != o[i].value) {
			printf("%s_bad=%s:%d\n", when, o[i].text, value);
			bad++;
		}
	}
	return bad;
}

static int stale_none(int fd, const struct opt *o, int n)
{
	int stale = 0;

	for (int i = 0; i < n; i++) {
		int value = -1;
		socklen_t len = sizeof(value);

		if (getsockopt(fd, o[i].level, o[i].name, &value, &len) == 0 && value == o[i].value) {
			printf("stale=%s\n", o[i].text);
			stale++;
		}
	}
	return stale;
}

static int options(const char *host, int port, const char *then)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, !strcmp(then, "bind") ? 0 : port, &ss);
	int fd = stream_socket(host, 0), v6 = strchr(host, ':') != NULL, bad;
	const struct opt *ip = v6 ? ip6_opts : ip4_opts;
	int n_ip = v6 ? N(ip6_opts) : N(ip4_opts);

	set_all(fd, tcp_opts, N(tcp_opts));
	set_all(fd, ip, n_ip);
	bad = check_all(fd, tcp_opts, N(tcp_opts), "before") + check_all(fd, ip, n_ip, "before");
	if (!strcmp(then, "dup")) { /* another name for the socket keeps them all */
		int copy = dup(fd);

		if (copy < 0 || close(fd))
			die("dup");
		fd = copy;
	} else if (!strcmp(then, "bind") ? bind(fd, (struct sockaddr *)&ss, len)
					  : connect(fd, (struct sockaddr *)&ss, len)) {
		die(then);
	}
	bad += check_all(fd, tcp_opts, N(tcp_opts), "after") + check_all(fd, ip, n_ip, "after");
	if (!strcmp(then, "dup")) /* a new socket, likely at the closed number, has none */
		bad += stale_none(stream_socket(host, 0), ip, n_ip);
	printf("options=%d\nbad=%d\n", N(tcp_opts) + n_ip, bad);
	return 0;
}

/* Address space limited to what is mapped now: no mmap succeeds until unlimit(). */
static struct rlimit saved_as;

static void limit_memory(void)
{
	char line[128];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");
	struct rlimit tight;

	while (f && fgets(line, sizeof(line), f))
		sscanf(line, "VmSize: %ld kB", &kb);
	if (!f || kb <= 0 || fclose(f) || getrlimit(RLIMIT_AS, &saved_as))
		die("vmsize");
	tight = (struct rlimit){ (rlim_t)kb * 1024, saved_as.rlim_max };
	if (setrlimit(RLIMIT_AS, &tight))
		die("setrlimit");
}

/* A pending socket with as many options and registrations as its entry holds inline; one
 * more of each, with no memory to record them, must fail with ENOMEM (and the
 * registration not stay), then succeed once memory is back. */
static int nomem(const char *host)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT };
	int fd = stream_socket(host, SOCK_NONBLOCK), ep[5], one = 1, r_opt, r_ep, e_opt, e_ep;

	set_all(fd, tcp_opts, 8);
	for (int i = 0; i < 5; i++) {
		ep[i] = epoll_create1(EPOLL_CLOEXEC);
		if (ep[i] < 0 || (i < 4 && epoll_ctl(ep[i], EPOLL_CTL_ADD, fd, &ev)))
			die("epoll");
	}
	printf("limited=1\n");
	limit_memory();
	r_opt = setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
	e_opt = errno;
	r_ep = epoll_ctl(ep[4], EPOLL_CTL_ADD, fd, &ev);
	e_ep = errno;
	printf("opt=%d,%s\nepoll=%d,%s\n", r_opt, strerrorname_np(e_opt), r_ep,
	       strerrorname_np(e_ep));
	printf("undone=%d\n", epoll_wait(ep[4], &ev, 1, 0) == 0);
	if (setrlimit(RLIMIT_AS, &saved_as))
		die("setrlimit");
	printf("opt_later=%d\nepoll_later=%d\n",
	       setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one)),
	       epoll_ctl(ep[4], EPOLL_CTL_ADD, fd, &ev));
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((argc == 5 || argc == 6) && !strcmp(argv[1], "epoll"))
		return epoll_many(argv[2], atoi(argv[3]), atoi(argv[4]), argc == 6);
	if (argc == 5 && !strcmp(argv[1], "opts"))
		return options(argv[2], atoi(argv[3]), argv[4]);
	if (argc == 3 && !strcmp(argv[1], "nomem"))
		return nomem(argv[2]);
	fprintf(stderr, "usage: records epoll|opts ADDR PORT N|THEN, records nomem ADDR\n");
	return 2;
}
