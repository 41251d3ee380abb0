/*
 * Every kind of shim section, from signal handlers and threads at once.
 *
 *   sigmix SOCKDIR TCP_PORT UDP_PORT LISTEN_PORT SECONDS THREADS FORK_EVERY
 *
 * The rules convert TCP connects to TCP_PORT into SOCKDIR/s, datagrams to UDP_PORT into
 * SOCKDIR/u and listeners on LISTEN_PORT.. into SOCKDIR/l<port>.  We listen at s and
 * answer datagrams at u ourselves (plain Unix sockets).  The main thread and THREADS
 * more run rounds of five kinds in turn, and a timer signal every 100 us runs one round
 * in its handler, so handlers interrupt fast sections (socket, connect, close) and
 * masked ones (options and epoll registrations past the inline ones, datagram peers,
 * socket-file records) on their own thread while other threads are in either.  Every
 * FORK_EVERY'th handler round forks a child that exits at once.  A round fails on:
 *   tcp     connect failing but with EAGAIN, getpeername not AF_INET
 *   opts    an IP/TCP option set before the converted connect read back differently
 *   epoll   a registration made before the converted connect not reporting the socket
 *   udp     sendto failing, getsockname or a reply's address not AF_INET
 *   listen  bind (but with EADDRINUSE: a forked child may still hold the last one) or
 *           listen failing, getsockname not the IPv4 address bound
 * Handlers end the run at SECONDS too (they may leave the threads no time).  Prints
 * counts; a deadlock is ended by alarm() after SECONDS + 20.
 */
#define _GNU_SOURCE
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

enum { TCP, OPTS, EPOLL, UDP, LISTEN, KINDS };
static const char *const kind_names[KINDS] = { "tcp", "opts", "epoll", "udp", "listen" };

#define MAX_THREADS 32
#define N_EPOLLS 6 /* more than the entry holds inline */

static struct sockaddr_storage tcp_target, udp_target;
static socklen_t tcp_len, udp_len;
static int listen_port, fork_every;
static atomic_long rounds[2][KINDS], failures[2][KINDS], forks, handler_total, listen_busy;
static atomic_int stop;
static struct timespec deadline;
static __thread int slot; /* 0: main thread; listener ports are per thread and handler */
static __thread unsigned next_kind;

static const struct { int level, name, value; } options[] = {
	{ IPPROTO_TCP, TCP_NODELAY, 1 },	  { IPPROTO_TCP, TCP_KEEPIDLE, 31 },
	{ IPPROTO_TCP, TCP_KEEPINTVL, 7 },	  { IPPROTO_TCP, TCP_KEEPCNT, 5 },
	{ IPPROTO_TCP, TCP_USER_TIMEOUT, 9000 }, { IPPROTO_TCP, TCP_SYNCNT, 3 },
	{ IPPROTO_TCP, TCP_LINGER2, 11 },	  { IPPROTO_TCP, TCP_NOTSENT_LOWAT, 16384 },
	{ IPPROTO_IP, IP_TOS, 0x20 },		  { IPPROTO_IP, IP_TTL, 33 },
	{ IPPROTO_TCP, TCP_MAXSEG, 1200 },
};

/* connect to the converted TCP target: 1 connected, 0 backlog full, -1 failed */
static int connect_tcp(int fd)
{
	if (connect(fd, (struct sockaddr *)&tcp_target, tcp_len) == 0)
		return 1;
	return errno == EAGAIN ? 0 : -1;
}

static int tcp_round(void)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), c, bad;

	if (fd < 0)
		return 1;
	c = connect_tcp(fd);
	bad = c < 0 || (c > 0 && (getpeername(fd, (struct sockaddr *)&peer, &len) ||
				  peer.ss_family != AF_INET));
	close(fd);
	return bad;
}

static int opts_round(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), bad = 0, c;
	unsigned n = sizeof(options) / sizeof(options[0]);

	if (fd < 0)
		return 1;
	for (unsigned i = 0; i < n; i++)
		if (setsockopt(fd, options[i].level, options[i].name, &options[i].value,
			       sizeof(int)))
			bad = 1;
	c = connect_tcp(fd);
	bad |= c < 0;
	for (unsigned i = 0; c > 0 && i < n; i++) {
		int v = -1;
		socklen_t len = sizeof(v);

		if (getsockopt(fd, options[i].level, options[i].name, &v, &len) ||
		    v != options[i].value)
			bad = 1;
	}
	close(fd);
	return bad;
}

static int epoll_round(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), ep[N_EPOLLS], bad = 0, c;
	struct epoll_event ev = { .events = EPOLLOUT }, got;

	if (fd < 0)
		return 1;
	ev.data.fd = fd;
	for (int i = 0; i < N_EPOLLS; i++) {
		ep[i] = epoll_create1(0);
		if (ep[i] < 0 || epoll_ctl(ep[i], EPOLL_CTL_ADD, fd, &ev))
			bad = 1;
	}
	c = connect_tcp(fd);
	bad |= c < 0;
	for (int i = 0; c > 0 && i < N_EPOLLS; i++)
		if (ep[i] >= 0 && (epoll_wait(ep[i], &got, 1, 0) != 1 || got.data.fd != fd))
			bad = 1;
	for (int i = 0; i < N_EPOLLS; i++)
		if (ep[i] >= 0)
			close(ep[i]);
	close(fd);
	return bad;
}

static int udp_round(void)
{
	struct sockaddr_storage name, from;
	socklen_t len = sizeof(name), flen = sizeof(from);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), bad = 0;
	char buf[16];

	if (fd < 0)
		return 1;
	if (sendto(fd, "ping", 4, 0, (struct sockaddr *)&udp_target, udp_len) != 4)
		bad = errno != EAGAIN;
	else if (getsockname(fd, (struct sockaddr *)&name, &len) || name.ss_family != AF_INET)
		bad = 1;
	/* the echo comes when the main thread drains: often already there for the main
	 * thread's own rounds */
	for (int i = 0; !bad && i < 3; i++) {
		if (recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen) < 0)
			break;
		bad = from.ss_family != AF_INET;
	}
	close(fd);
	return bad;
}

static int listen_round(void)
{
	struct sockaddr_storage a, name;
	socklen_t alen = make_addr("127.0.0.1", listen_port + slot, &a), len = sizeof(name);
	int fd = socket(AF_INET, SOCK_STREAM, 0), bad;

	if (fd < 0)
		return 1;
	if (bind(fd, (struct sockaddr *)&a, alen)) {
		/* a child forked meanwhile may still hold our last one */
		bad = errno != EADDRINUSE;
		if (!bad)
			atomic_fetch_add(&listen_busy, 1);
		close(fd);
		return bad;
	}
	bad = listen(fd, 8) ||
	      getsockname(fd, (struct sockaddr *)&name, &len) || name.ss_family != AF_INET ||
	      ((struct sockaddr_in *)&name)->sin_port != ((struct sockaddr_in *)&a)->sin_port;
	close(fd);
	return bad;
}

static int (*const round_of[KINDS])(void) = { tcp_round, opts_round, epoll_round,
					       udp_round, listen_round };

static void one_round(int in_handler)
{
	unsigned k = next_kind++ % KINDS;

	atomic_fetch_add(&failures[in_handler][k], round_of[k]());
	atomic_fetch_add(&rounds[in_handler][k], 1);
}

static void on_timer(int sig)
{
	int saved = errno, outer = slot;

	struct timespec now;

	(void)sig;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec >= deadline.tv_sec) /* handlers alone may keep a thread busy */
		atomic_store(&stop, 1);
	if (atomic_load(&stop))
		return;
	slot = outer + 1; /* the handler's own listener port */
	one_round(1);
	slot = outer;
	if (fork_every && atomic_fetch_add(&handler_total, 1) % fork_every == 0) {
		pid_t pid = fork();

		if (pid == 0)
			_exit(0);
		if (pid > 0)
			atomic_fetch_add(&forks, 1);
	}
	errno = saved;
}

static void *loop(void *arg)
{
	slot = 2 * (int)(long)arg;
	while (!atomic_load(&stop))
		one_round(0);
	return NULL;
}

static int unix_socket(const char *dir, const char *name, int type)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, type | SOCK_NONBLOCK, 0);

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s", dir, name);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) ||
	    (type == SOCK_STREAM && listen(fd, 4096)))
		die(name);
	return fd;
}

/* accept and close what is pending; answer each datagram to its sender */
static void drain(int listener, int dgram)
{
	struct sockaddr_un from;
	char buf[64];
	ssize_t n;
	int c;

	for (int i = 0; i < 4096 && (c = accept4(listener, NULL, NULL, 0)) >= 0; i++)
		close(c);
	for (int i = 0; i < 4096; i++) {
		socklen_t len = sizeof(from);

		n = recvfrom(dgram, buf, sizeof(buf), 0, (struct sockaddr *)&from, &len);
		if (n < 0)
			break;
		if (len > sizeof(sa_family_t))
			sendto(dgram, buf, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&from, len);
	}
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_timer, .sa_flags = SA_RESTART };
	struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN };
	struct itimerspec its = { .it_interval = { 0, 100000 }, .it_value = { 0, 100000 } };
	struct timespec start, now;
	pthread_t threads[MAX_THREADS];
	int listener, dgram, n_threads, seconds;
	timer_t timer;

	if (argc != 8) {
		fprintf(stderr, "usage: sigmix SOCKDIR TCP_PORT UDP_PORT LISTEN_PORT SECONDS "
				"THREADS FORK_EVERY\n");
		return 2;
	}
	tcp_len = make_addr("127.0.0.1", atoi(argv[2]), &tcp_target);
	udp_len = make_addr("127.0.0.1", atoi(argv[3]), &udp_target);
	listen_port = atoi(argv[4]);
	seconds = atoi(argv[5]);
	n_threads = atoi(argv[6]);
	fork_every = atoi(argv[7]);
	if (n_threads < 0 || n_threads > MAX_THREADS)
		n_threads = MAX_THREADS;
	listener = unix_socket(argv[1], "s", SOCK_STREAM);
	dgram = unix_socket(argv[1], "u", SOCK_DGRAM);
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN, &sa, NULL) || timer_create(CLOCK_MONOTONIC, &sev, &timer))
		die("timer");
	alarm((unsigned)seconds + 20); /* ends a deadlock */
	for (int i = 0; i < n_threads; i++)
		if (pthread_create(&threads[i], NULL, loop, (void *)(long)(i + 1)))
			die("pthread_create");
	clock_gettime(CLOCK_MONOTONIC, &start);
	deadline = start;
	deadline.tv_sec += seconds;
	timer_settime(timer, 0, &its, NULL);
	do {
		for (int i = 0; i < 16; i++)
			one_round(0);
		drain(listener, dgram);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec < deadline.tv_sec && !atomic_load(&stop));
	atomic_store(&stop, 1);
	timer_delete(timer);
	for (int i = 0; i < n_threads; i++)
		pthread_join(threads[i], NULL);
	drain(listener, dgram);
	for (int h = 0; h < 2; h++)
		for (int k = 0; k < KINDS; k++)
			printf("%s_%s_rounds=%ld\n%s_%s_failures=%ld\n", h ? "handler" : "loop",
			       kind_names[k], atomic_load(&rounds[h][k]), h ? "handler" : "loop",
			       kind_names[k], atomic_load(&failures[h][k]));
	printf("forks=%ld\nlisten_busy=%ld\n", atomic_load(&forks), atomic_load(&listen_busy));
	return 0;
}
