/* static_net: a socket program for the seccomp back end's tests, linked statically.
 *   serve ADDR PORT N     accept N connections (accept4 non-blocking when NB is set in
 *                         the environment; SIGALRM every 1 ms when ALARM is; made
 *                         non-dumpable first when NODUMP is), answer each "hello PEER"
 *                         and report
 *   connect ADDR PORT     connect, print what the server says
 *   connect-alarm ADDR PORT  the same with SIGALRM firing every 1 ms meanwhile
 *   connect2 ADDR PORT    connect, then again after a line on stdin
 *   domain ADDR PORT      connect, print SO_DOMAIN and SO_PROTOCOL
 *   uring                 io_uring_setup, print the result
 *   udp                   make a UDP socket, print the result
 *   int80 ADDR PORT       connect through the i386 ABI (int 0x80), print the result
 * Lines: "ok ...", or "error CALL ERRNO-NAME". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static int fill(const char *addr, const char *port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, addr, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((unsigned short)atoi(port));
		return sizeof(*in);
	}
	inet_pton(AF_INET6, addr, &in6->sin6_addr);
	in6->sin6_family = AF_INET6;
	in6->sin6_port = htons((unsigned short)atoi(port));
	return sizeof(*in6);
}

static int fail(const char *call)
{
	printf("error %s %s\n", call, strerrorname_np(errno));
	return 1;
}

static void describe(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)ss;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		snprintf(buf, size, "inet:%s:%d", ip, ntohs(in->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, size, "inet6:[%s]:%d", ip, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, size, "family%d", ss->ss_family);
	}
}

static void tick(int sig);

static int serve(const char *addr, const char *port, int n)
{
	struct sockaddr_storage ss, peer, local;
	socklen_t len = (socklen_t)fill(addr, port, &ss), plen;
	int nb = getenv("NB") != NULL, one = 1;
	int s = socket(ss.ss_family, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
	char text[128], ltext[128], reply[300];

	if (s < 0)
		return fail("socket");
	if (getenv("NODUMP"))
		prctl(PR_SET_DUMPABLE, 0);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&ss, len))
		return fail("bind");
	if (listen(s, 16))
		return fail("listen");
	len = sizeof(local);
	if (getsockname(s, (struct sockaddr *)&local, &len))
		return fail("getsockname");
	describe(&local, ltext, sizeof(ltext));
	printf("listening %s\n", ltext);
	fflush(stdout);
	if (getenv("ALARM")) {
		struct sigaction sa = { .sa_handler = tick, .sa_flags = SA_RESTART };
		struct itimerval it = { { 0, 1000 }, { 0, 1000 } };

		sigaction(SIGALRM, &sa, NULL);
		setitimer(ITIMER_REAL, &it, NULL);
	}
	for (int i = 0; i < n; i++) {
		struct pollfd p = { .fd = s, .events = POLLIN };
		int c;

		plen = sizeof(peer);
		if (nb && poll(&p, 1, 10000) != 1)
			return fail("poll");
		c = accept4(s, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
		if (c < 0)
			return fail("accept4");
		if (setsockopt(c, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one)))
			return fail("setsockopt");
		describe(&peer, text, sizeof(text));
		snprintf(reply, sizeof(reply), "hello %s\n", text);
		if (write(c, reply, strlen(reply)) < 0)
			return fail("write");
		printf("accepted %s\n", text);
		fflush(stdout);
		close(c);
	}
	return 0;
}

static void tick(int sig)
{
	(void)sig;
}

static int client(const char *addr, const char *port, int alarm)
{
	struct sockaddr_storage ss, name;
	socklen_t len = (socklen_t)fill(addr, port, &ss);
	char buf[256] = "", text[128];
	int s = socket(ss.ss_family, SOCK_STREAM, 0), r;
	ssize_t got;

	if (s < 0)
		return fail("socket");
	if (alarm) {
		struct sigaction sa = { .sa_handler = tick, .sa_flags = SA_RESTART };
		struct itimerval it = { { 0, 1000 }, { 0, 1000 } };

		sigaction(SIGALRM, &sa, NULL);
		setitimer(ITIMER_REAL, &it, NULL);
	}
	r = connect(s, (struct sockaddr *)&ss, len);
	if (r)
		return fail("connect");
	if (alarm) {
		struct itimerval off = { { 0, 0 }, { 0, 0 } };
		setitimer(ITIMER_REAL, &off, NULL);
	}
	len = sizeof(name);
	if (getpeername(s, (struct sockaddr *)&name, &len))
		return fail("getpeername");
	describe(&name, text, sizeof(text));
	got = read(s, buf, sizeof(buf) - 1);
	buf[got > 0 ? got : 0] = 0;
	printf("ok peer %s said %s", text, buf);
	return 0;
}

static int domain(const char *addr, const char *port)
{
	struct sockaddr_storage ss;
	socklen_t len = (socklen_t)fill(addr, port, &ss), l1 = sizeof(int), l2 = sizeof(int);
	int s = socket(ss.ss_family, SOCK_STREAM, 0), family = -1, proto = -1;

	if (s < 0 || connect(s, (struct sockaddr *)&ss, len))
		return fail("connect");
	if (getsockopt(s, SOL_SOCKET, SO_DOMAIN, &family, &l1) ||
	    getsockopt(s, SOL_SOCKET, SO_PROTOCOL, &proto, &l2))
		return fail("getsockopt");
	printf("ok domain %d protocol %d\n", family, proto);
	return 0;
}

static int uring(void)
{
	char params[120] = { 0 };
	long r = syscall(__NR_io_uring_setup, 4, params);

	if (r < 0)
		return fail("io_uring_setup");
	printf("ok io_uring %ld\n", r);
	return 0;
}

static int int80(const char *addr, const char *port)
{
	/* i386 pointers are 32 bits: the address must live below 4 GiB */
	struct sockaddr_storage *ss = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	long len, r;
	int s;

	if (ss == MAP_FAILED)
		return fail("mmap");
	len = fill(addr, port, ss);
	s = socket(ss->ss_family, SOCK_STREAM, 0);
	if (s < 0)
		return fail("socket");
	/* i386 connect is system call 362 */
	__asm__ volatile("int $0x80" : "=a"(r) : "a"(362L), "b"((long)s), "c"(ss), "d"(len)
			 : "memory");
	if (r < 0) {
		errno = (int)-r;
		return fail("connect");
	}
	printf("ok int80 connected\n");
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && !strcmp(argv[1], "serve"))
		return serve(argv[2], argv[3], atoi(argv[4]));
	if (argc == 4 && !strcmp(argv[1], "connect"))
		return client(argv[2], argv[3], 0);
	if (argc == 4 && !strcmp(argv[1], "connect2")) {
		char line[16];

		if (client(argv[2], argv[3], 0) || !fgets(line, sizeof(line), stdin))
			return 1;
		return client(argv[2], argv[3], 0);
	}
	if (argc == 4 && !strcmp(argv[1], "connect-alarm"))
		return client(argv[2], argv[3], 1);
	if (argc == 4 && !strcmp(argv[1], "domain"))
		return domain(argv[2], argv[3]);
	if (argc == 2 && !strcmp(argv[1], "udp")) {
		if (socket(AF_INET, SOCK_DGRAM, 0) < 0)
			return fail("socket");
		printf("ok udp socket\n");
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "uring"))
		return uring();
	if (argc == 4 && !strcmp(argv[1], "int80"))
		return int80(argv[2], argv[3]);
	fprintf(stderr, "usage: see the comment at the top\n");
	return 2;
}
