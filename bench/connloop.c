/*
 * connloop: connection setup cost.
 *   connloop server PATH            accept and close connections forever
 *   connloop tcpserver PORT         the same on TCP, 127.0.0.1 PORT
 *   connloop unix PATH N            N x (socket, connect, close) on a Unix socket
 *   connloop tcp HOST PORT N        N x (socket, connect, close) on TCP (IPv4)
 * Clients print the elapsed nanoseconds per connection, then the CPU time (user and
 * system) per connection.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void unix_addr(struct sockaddr_un *sun, const char *path)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	strncpy(sun->sun_path, path, sizeof(sun->sun_path) - 1);
}

static int serve(int family, const struct sockaddr *sa, socklen_t len)
{
	int fd = socket(family, SOCK_STREAM, 0), one = 1;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, sa, len) || listen(fd, 4096)) {
		perror("server");
		return 1;
	}
	for (;;) {
		int c = accept(fd, NULL, NULL);

		if (c >= 0)
			close(c);
	}
}

static int loop(int family, const struct sockaddr *sa, socklen_t len, long n)
{
	long long start = clock_ns(CLOCK_MONOTONIC), cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID);

	for (long i = 0; i < n; i++) {
		int fd = socket(family, SOCK_STREAM, 0);

		if (fd < 0 || connect(fd, sa, len)) {
			perror("connect");
			return 1;
		}
		close(fd);
	}
	printf("%.1f %.1f\n", (double)(clock_ns(CLOCK_MONOTONIC) - start) / n,
	       (double)(clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu) / n);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server")) {
		struct sockaddr_un sun;

		unix_addr(&sun, argv[2]);
		unlink(argv[2]);
		return serve(AF_UNIX, (struct sockaddr *)&sun, sizeof(sun));
	}
	if (argc == 3 && !strcmp(argv[1], "tcpserver")) {
		struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

		return serve(AF_INET, (struct sockaddr *)&in, sizeof(in));
	}
	if (argc == 4 && !strcmp(argv[1], "unix")) {
		struct sockaddr_un sun;

		unix_addr(&sun, argv[2]);
		return loop(AF_UNIX, (struct sockaddr *)&sun, sizeof(sun), atol(argv[3]));
	}
	if (argc == 5 && !strcmp(argv[1], "tcp")) {
		struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };

		inet_pton(AF_INET, argv[2], &in.sin_addr);
		return loop(AF_INET, (struct sockaddr *)&in, sizeof(in), atol(argv[4]));
	}
	fprintf(stderr, "usage: see the comment at the top of connloop.c\n");
	return 2;
}
