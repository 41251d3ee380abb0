/*
 * Socket calls from a signal handler, under the shim.
 *
 *   sigsock PORT UNIX_PATH SECONDS THREADS
 *
 * A timer signal every 50 us runs a handler that makes an IPv4 stream socket,
 * connects it to 127.0.0.1:PORT (converted by the rules to UNIX_PATH), asks
 * getpeername and closes it -- all async-signal-safe calls.  Meanwhile the main thread
 * and THREADS more do the same in a loop, so the handler often interrupts its thread
 * inside the shim.  We listen at UNIX_PATH ourselves (a plain Unix socket) and drain the
 * connections.  Prints counts; a failure is connect() failing other than with EAGAIN
 * (the backlog is full) or getpeername() reporting anything but AF_INET.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static struct sockaddr_storage target;
static socklen_t target_len;
static atomic_long handler_rounds, handler_failures, loop_rounds, loop_failures;
static atomic_int stop;

/* One socket/connect/getpeername/close round; 1 when it failed. */
static int round_trip(void)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), bad = 0;

	if (fd < 0)
		return 1;
	if (connect(fd, (struct sockaddr *)&target, target_len) == 0)
		bad = getpeername(fd, (struct sockaddr *)&peer, &len) || peer.ss_family != AF_INET;
	else
		bad = errno != EAGAIN;
	close(fd);
	return bad;
}

static void on_timer(int sig)
{
	int saved = errno;

	(void)sig;
	if (atomic_load(&stop))
		return;
	atomic_fetch_add(&handler_failures, round_trip());
	atomic_fetch_add(&handler_rounds, 1);
	errno = saved;
}

static void *loop(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		atomic_fetch_add(&loop_failures, round_trip());
		atomic_fetch_add(&loop_rounds, 1);
	}
	return NULL;
}

static void drain(int listener)
{
	int c;

	for (int i = 0; i < 4096 && (c = accept4(listener, NULL, NULL, 0)) >= 0; i++)
		close(c);
}

int main(int argc, char **argv)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct sigaction sa = { .sa_handler = on_timer, .sa_flags = SA_RESTART };
	struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN };
	struct itimerspec its = { .it_interval = { 0, 50000 }, .it_value = { 0, 50000 } };
	struct timespec start, now;
	pthread_t threads[16];
	int listener, n_threads;
	timer_t timer;

	if (argc != 5) {
		fprintf(stderr, "usage: sigsock PORT UNIX_PATH SECONDS THREADS\n");
		return 2;
	}
	target_len = make_addr("127.0.0.1", atoi(argv[1]), &target);
	n_threads = atoi(argv[4]);
	if (n_threads < 0 || n_threads > 16)
		n_threads = 16;
	strncpy(sun.sun_path, argv[2], sizeof(sun.sun_path) - 1);
	listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&sun, sizeof(sun)) ||
	    listen(listener, 4096))
		die("listen");
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN, &sa, NULL) || timer_create(CLOCK_MONOTONIC, &sev, &timer))
		die("timer");
	alarm((unsigned)atoi(argv[3]) + 10); /* a bound even if handlers starve us */
	for (int i = 0; i < n_threads; i++)
		if (pthread_create(&threads[i], NULL, loop, NULL))
			die("pthread_create");
	timer_settime(timer, 0, &its, NULL);
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		for (int i = 0; i < 64; i++) {
			atomic_fetch_add(&loop_failures, round_trip());
			atomic_fetch_add(&loop_rounds, 1);
		}
		drain(listener);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - start.tv_sec < atoi(argv[3]));
	atomic_store(&stop, 1);
	timer_delete(timer);
	for (int i = 0; i < n_threads; i++)
		pthread_join(threads[i], NULL);
	printf("handler_rounds=%ld\nhandler_failures=%ld\nloop_rounds=%ld\nloop_failures=%ld\n",
	       atomic_load(&handler_rounds), atomic_load(&handler_failures),
	       atomic_load(&loop_rounds), atomic_load(&loop_failures));
	return 0;
}
