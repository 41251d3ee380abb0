/*
 * A handler that leaves by siglongjmp, as connect timeouts did before poll:
 *
 *   sigjump SECONDS
 *
 * The main thread makes and closes IPv4 sockets in a loop that a timer signal's
 * handler (every 50 us) leaves by siglongjmp -- allowed, since socket() and close() are
 * async-signal-safe -- while another thread does the same without jumps.  Prints the
 * jumps taken and whether the other thread went on afterwards.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static sigjmp_buf env;
static atomic_long other_rounds, jumps;
static atomic_int stop;

static void on_timer(int sig)
{
	(void)sig;
	siglongjmp(env, 1);
}

static void *other(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd >= 0)
			close(fd);
		atomic_fetch_add(&other_rounds, 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_timer };
	struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN };
	sigset_t timer_signal;
	struct itimerspec its = { .it_interval = { 0, 50000 }, .it_value = { 0, 50000 } },
			  off = { { 0, 0 }, { 0, 0 } };
	struct timespec start, now, pause = { 0, 500000000 };
	pthread_t t;
	timer_t timer;
	long before;
	int seconds = argc > 1 ? atoi(argv[1]) : 2;

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN, &sa, NULL) || timer_create(CLOCK_MONOTONIC, &sev, &timer))
		return 2;
	alarm((unsigned)seconds + 10);
	/* only the main thread takes the signal */
	sigemptyset(&timer_signal);
	sigaddset(&timer_signal, SIGRTMIN);
	pthread_sigmask(SIG_BLOCK, &timer_signal, NULL);
	if (pthread_create(&t, NULL, other, NULL))
		return 2;
	pthread_sigmask(SIG_UNBLOCK, &timer_signal, NULL);
	clock_gettime(CLOCK_MONOTONIC, &start);
	timer_settime(timer, 0, &its, NULL);
	if (sigsetjmp(env, 1))
		atomic_fetch_add(&jumps, 1);
	for (;;) {
		int fd;

		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec >= seconds)
			break;
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd >= 0)
			close(fd);
	}
	timer_settime(timer, 0, &off, NULL);
	before = atomic_load(&other_rounds);
	nanosleep(&pause, NULL);
	printf("jumps=%ld\nother_rounds=%ld\nother_went_on=%d\n", atomic_load(&jumps), before,
	       atomic_load(&other_rounds) > before);
	fflush(stdout);
	_exit(0); /* the other thread may be stuck */
}
