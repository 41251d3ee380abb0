#define _GNU_SOURCE
/*
 * guess: stream clients under a rule with a condition, where socket() guesses whether
 * the socket will be converted.  What the kernel really made is read with raw system
 * calls the shim does not see ("unix" or "inet"); everything else through libc, as a
 * program sees it.  Prints "key=value" lines.
 *
 *   guess steps HOST CPORT TPORT SEQ
 *       for each letter of SEQ a blocking socket connected to CPORT ('c') or TPORT ('t'),
 *       then closed: "stepN=MADE,CONNECT,PEERPORT,AFTER" (MADE what socket() made, AFTER
 *       what the connected socket is)
 *   guess client HOST CPORT TPORT STEER DEST [MODE]
 *       STEER's connects as above (the empty word: none), then one non-blocking socket
 *       set up (options, an epoll registration), asked about before connecting, and
 *       connected to CPORT or TPORT (DEST 'c' or 't').  MODE, words joined by commas:
 *       "bind" binds HOST port 0 first; "extra" also sets SO_OOBINLINE and
 *       SO_BINDTODEVICE "lo" (and a 20-byte IP_OPTIONS on IPv4); "defaults" asks for
 *       options never set before connecting, and what a new TCP socket says; "dup" makes a
 *       copy before binding or connecting ("copy_" and "bound_copy" keys); "fork" connects in
 *       a child ("child_" keys), the parent only closes; "forkparent" has a child that
 *       exits at once and the parent connects; "exec" connects in a new image
 */
#include <fcntl.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

static const char *host;
static int is6, copy = -1;

static int raw_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	return (int)syscall(SYS_getsockopt, fd, level, name, val, len);
}

static const char *made(int fd)
{
	int family = -1;
	socklen_t len = sizeof(family);

	if (raw_getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len))
		return "none";
	return family == AF_UNIX ? "unix" : family == AF_INET || family == AF_INET6 ? "inet"
									      : "other";
}

static const char *result(int r)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), r ? "-1,%s" : "0", r ? strerrorname_np(errno) : "");
	return buf;
}

static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = addr_ip(ss, ip, sizeof(ip));

	snprintf(buf, size, "%d,%s,%d", ss->ss_family, ip, port < 0 ? 0 : port);
}

static int peer_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getpeername(fd, (struct sockaddr *)&ss, &len))
		return -1;
	return ntohs(((struct sockaddr_in *)&ss)->sin_port); /* same place in both */
}

static int new_socket(int flags)
{
	int fd = socket(is6 ? AF_INET6 : AF_INET, SOCK_STREAM | flags, 0);

	if (fd < 0)
		die("socket");
	return fd;
}

static int connect_to(int fd, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);

	return connect(fd, (struct sockaddr *)&ss, len);
}

static void steps(const char *seq, int cport, int tport, const char *prefix)
{
	for (int i = 0; seq[i] == 'c' || seq[i] == 't'; i++) {
		int fd = new_socket(0);
		const char *was = made(fd);
		int r = connect_to(fd, seq[i] == 'c' ? cport : tport);

		printf("%sstep%d=%s,%s,%d,%s\n", prefix, i, was, result(r), peer_port(fd),
		       made(fd));
		close(fd);
	}
}

static int get_int(int fd, int level, int name, int raw)
{
	int v = -1;
	socklen_t len = sizeof(v);

	if ((raw ? raw_getsockopt : getsockopt)(fd, level, name, &v, &len))
		return -1;
	return v;
}

/* The options "client" sets, as libc and as the kernel (when it is an IP socket) read
 * them back. */
struct opt { const char *name; int level, optname, value; };

static void options(struct opt *o, size_t *n)
{
	struct opt all[] = {
		{ "nodelay", IPPROTO_TCP, TCP_NODELAY, 1 },
		{ "keepidle", IPPROTO_TCP, TCP_KEEPIDLE, 77 },
		{ "keepalive", SOL_SOCKET, SO_KEEPALIVE, 1 },
		{ "tos", is6 ? IPPROTO_IPV6 : IPPROTO_IP, is6 ? IPV6_TCLASS : IP_TOS, 0x10 },
	};

	memcpy(o, all, sizeof(all));
	*n = sizeof(all) / sizeof(all[0]);
}

static void set_options(int fd, int extra)
{
	struct opt o[8];
	size_t n;
	int one = 1;

	options(o, &n);
	for (size_t i = 0; i < n; i++) {
		if (setsockopt(fd, o[i].level, o[i].optname, &o[i].value, sizeof(int)))
			printf("set_fail=%s\n", o[i].name);
	}
	if (!extra)
		return;
	if (setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one)))
		printf("set_fail=oobinline:%s\n", strerrorname_np(errno));
	if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3))
		printf("set_fail=bindtodevice:%s\n", strerrorname_np(errno));
	if (!is6) {
		unsigned char nops[20];

		memset(nops, IPOPT_NOP, sizeof(nops));
		if (setsockopt(fd, IPPROTO_IP, IP_OPTIONS, nops, sizeof(nops)))
			printf("set_fail=ipoptions:%s\n", strerrorname_np(errno));
	}
}

static void report_options(int fd, const char *prefix, int extra)
{
	int real = !strcmp(made(fd), "inet");
	struct opt o[8];
	size_t n;

	options(o, &n);
	for (size_t i = 0; i < n; i++) {
		printf("%s%s=%d\n", prefix, o[i].name, get_int(fd, o[i].level, o[i].optname, 0));
		if (real)
			printf("%sraw_%s=%d\n", prefix, o[i].name,
			       get_int(fd, o[i].level, o[i].optname, 1));
	}
	if (extra && real) {
		char dev[16] = "";
		unsigned char opts[40];
		socklen_t len = sizeof(dev);

		printf("%sraw_oobinline=%d\n", prefix, get_int(fd, SOL_SOCKET, SO_OOBINLINE, 1));
		raw_getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &len);
		printf("%sraw_bindtodevice=%s\n", prefix, dev);
		len = sizeof(opts);
		if (!is6 && raw_getsockopt(fd, IPPROTO_IP, IP_OPTIONS, opts, &len) == 0)
			printf("%sraw_ipoptions=%u\n", prefix, (unsigned)len);
	}
}

/* Connect fd (non-blocking, registered with ep as 4242) to port and say all about it. */
static void finish(int fd, int ep, int port, const char *prefix, int extra)
{
	struct epoll_event ev = { 0 };
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char text[128];
	int r = connect_to(fd, port), n;

	printf("%sconnect=%s\n", prefix, result(r));
	n = ep >= 0 ? epoll_wait(ep, &ev, 1, 10000) : -2;
	printf("%sevent=%d,%llu,%d\n", prefix, n, n == 1 ? (unsigned long long)ev.data.u64 : 0ULL,
	       n == 1 && (ev.events & EPOLLOUT) != 0);
	printf("%sso_error=%d\n", prefix, get_int(fd, SOL_SOCKET, SO_ERROR, 0));
	printf("%speer_port=%d\n", prefix, peer_port(fd));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
		addr_text(&ss, text, sizeof(text));
		printf("%slocal=%s\n", prefix, text);
	}
	printf("%sreal=%s\n", prefix, made(fd));
	if (copy >= 0)
		printf("%scopy_peer_port=%d\n%scopy_real=%s\n", prefix, peer_port(copy), prefix,
		       made(copy));
	printf("%swrite=%zd\n", prefix, write(fd, "x", 1));
	report_options(fd, prefix, extra);
	fflush(stdout);
}

static int exec_image(int fd, int port, const char *self, int extra)
{
	char fdtext[16], porttext[16];

	fcntl(fd, F_SETFD, 0);
	snprintf(fdtext, sizeof(fdtext), "%d", fd);
	snprintf(porttext, sizeof(porttext), "%d", port);
	fflush(stdout);
	execl(self, self, "execd", host, fdtext, porttext, extra ? "extra" : "", (char *)NULL);
	die("exec");
	return 2;
}

static int has(const char *mode, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = mode; (p = strstr(p, word)) != NULL; p += n) {
		if ((p == mode || p[-1] == ',') && (p[n] == ',' || !p[n]))
			return 1;
	}
	return 0;
}

/* Options never set, asked before connecting, and what a new TCP socket says. */
static void defaults(int fd)
{
	int tcp = (int)syscall(SYS_socket, is6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	struct opt o[] = {
		{ "sndbuf", SOL_SOCKET, SO_SNDBUF, 0 },
		{ "ttl", is6 ? IPPROTO_IPV6 : IPPROTO_IP, is6 ? IPV6_UNICAST_HOPS : IP_TTL, 0 },
		{ "keepcnt", IPPROTO_TCP, TCP_KEEPCNT, 0 },
	};

	for (size_t i = 0; i < sizeof(o) / sizeof(o[0]); i++) {
		printf("%s=%d\n", o[i].name, get_int(fd, o[i].level, o[i].optname, 0));
		printf("tcp_%s=%d\n", o[i].name, get_int(tcp, o[i].level, o[i].optname, 1));
	}
	close(tcp);
}

static int client(int cport, int tport, const char *steer, char dest, const char *mode,
		  const char *self)
{
	struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = 4242 };
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char text[128];
	int extra = has(mode, "extra"), port = dest == 'c' ? cport : tport;
	int fd, ep;
	pid_t pid;

	steps(steer, cport, tport, "steer_");
	fd = new_socket(SOCK_NONBLOCK | SOCK_CLOEXEC);
	printf("made=%s\n", made(fd));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
		addr_text(&ss, text, sizeof(text));
		printf("sockname=%s\n", text);
	}
	printf("domain=%d\n", get_int(fd, SOL_SOCKET, SO_DOMAIN, 0));
	printf("protocol=%d\n", get_int(fd, SOL_SOCKET, SO_PROTOCOL, 0));
	set_options(fd, extra);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll");
	if (has(mode, "defaults"))
		defaults(fd);
	if (has(mode, "dup") && (copy = dup(fd)) < 0)
		die("dup");
	if (has(mode, "bind")) {
		socklen_t n = make_addr(host, 0, &ss);

		printf("bind=%s\n", result(bind(fd, (struct sockaddr *)&ss, n)));
		len = sizeof(ss);
		getsockname(fd, (struct sockaddr *)&ss, &len);
		addr_text(&ss, text, sizeof(text));
		printf("bound=%s\nbound_real=%s\n", text, made(fd));
		len = sizeof(ss);
		if (copy >= 0 && getsockname(copy, (struct sockaddr *)&ss, &len) == 0) {
			addr_text(&ss, text, sizeof(text));
			printf("bound_copy=%s\n", text);
		}
		report_options(fd, "bound_", extra);
	}
	if (has(mode, "exec"))
		return exec_image(fd, port, self, extra);
	if (has(mode, "fork") || has(mode, "forkparent")) {
		int status;

		fflush(stdout);
		pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0 && has(mode, "fork")) {
			finish(fd, ep, port, "child_", 0);
			_exit(0);
		}
		if (pid == 0)
			_exit(0);
		waitpid(pid, &status, 0);
		printf("child_status=%d\n", status);
		if (has(mode, "fork")) {
			printf("parent_close=%d\n", close(fd));
			return 0;
		}
	}
	finish(fd, ep, port, "", extra);
	return 0;
}

/* The image exec started: fd came from the one before, unconnected. */
static int execd(int fd, int port, int extra)
{
	struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = 4242 };
	int ep = epoll_create1(EPOLL_CLOEXEC);

	printf("execd_domain=%d\n", get_int(fd, SOL_SOCKET, SO_DOMAIN, 0));
	printf("execd_made=%s\n", made(fd));
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll");
	finish(fd, ep, port, "", extra);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	host = argv[2];
	is6 = strchr(host, ':') != NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 6 && !strcmp(argv[1], "steps")) {
		steps(argv[5], atoi(argv[3]), atoi(argv[4]), "");
		return 0;
	}
	if ((argc == 7 || argc == 8) && !strcmp(argv[1], "client"))
		return client(atoi(argv[3]), atoi(argv[4]), argv[5], argv[6][0],
			      argc == 8 ? argv[7] : "", argv[0]);
	if (argc == 6 && !strcmp(argv[1], "execd"))
		return execd(atoi(argv[3]), atoi(argv[4]), !strcmp(argv[5], "extra"));
	fprintf(stderr, "usage: see the comment at the top of guess.c\n");
	return 2;
}
