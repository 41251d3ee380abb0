/*
 * connclient HOST PORT CLIENTS COUNT: COUNT short connections (connect, read the answer
 * to its end, close) from CLIENTS threads at once.  Prints "RATE P99_US LOST": new
 * connections per second, the 99th percentile of connect-to-first-byte in
 * microseconds, and the connections that failed or got no answer.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static atomic_long next_index, lost;
static long count;
static double *latency;

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int one(double *first_byte)
{
	char buf[256];
	double start = now_us();
	int s = socket(AF_INET, SOCK_STREAM, 0), got = 0;
	ssize_t n;

	if (s < 0)
		return -1;
	if (connect(s, (struct sockaddr *)&target, sizeof(target)) < 0) {
		close(s);
		return -1;
	}
	while ((n = read(s, buf, sizeof(buf))) > 0) {
		if (!got)
			*first_byte = now_us() - start;
		got = 1;
	}
	close(s);
	return got && n == 0 ? 0 : -1;
}

static void *worker(void *arg)
{
	long i;

	(void)arg;
	while ((i = atomic_fetch_add(&next_index, 1)) < count) {
		if (one(&latency[i]) < 0) {
			atomic_fetch_add(&lost, 1);
			latency[i] = 0;
		}
	}
	return NULL;
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	pthread_t threads[1024];
	int clients;
	double start, elapsed;

	if (argc != 5) {
		fprintf(stderr, "usage: connclient HOST PORT CLIENTS COUNT\n");
		return 2;
	}
	target.sin_family = AF_INET;
	target.sin_port = htons((uint16_t)atoi(argv[2]));
	inet_pton(AF_INET, argv[1], &target.sin_addr);
	clients = atoi(argv[3]);
	count = atol(argv[4]);
	if (clients < 1 || clients > 1024 || count < 1)
		return 2;
	latency = calloc((size_t)count, sizeof(double));
	start = now_us();
	for (int i = 0; i < clients; i++)
		pthread_create(&threads[i], NULL, worker, NULL);
	for (int i = 0; i < clients; i++)
		pthread_join(threads[i], NULL);
	elapsed = (now_us() - start) / 1e6;
	qsort(latency, (size_t)count, sizeof(double), by_value);
	printf("%.1f %.1f %ld\n", count / elapsed, latency[(size_t)(count * 0.99)],
	       (long)lost);
	return 0;
}
