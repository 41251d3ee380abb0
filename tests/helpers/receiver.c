/*
 * A TCP server as the kernel sees it, for receive= rules: binds FAMILY port PORT, answers
 * what a listener is (getsockname, SO_TYPE, SO_DOMAIN, SO_ACCEPTCONN), then takes
 * connections: non-blocking accept4 under epoll, then a blocking accept under select.
 * Each connection gets "hello N\n" and its peer printed; everything printed is
 * "key=value" lines, "ready" when the test may send.
 *
 * usage: receiver 4|6 PORT COUNT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

static int opt(int fd, int name)
{
	socklen_t len = sizeof(int);
	int v = -1;

	if (getsockopt(fd, SOL_SOCKET, name, &v, &len))
		return -errno;
	return v;
}

static void print_addr(const char *key, const struct sockaddr_storage *ss)
{
	char text[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)ss;
		inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
		port = ntohs(in->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
		port = ntohs(in6->sin6_port);
	}
	printf("%s=%d,%s,%u\n", key, ss->ss_family, text, port);
}

static void serve(int conn, int n, const struct sockaddr_storage *peer)
{
	struct sockaddr_storage real;
	socklen_t len = sizeof(real);
	char line[64];

	print_addr("peer", peer);
	if (getpeername(conn, (struct sockaddr *)&real, &len) == 0)
		print_addr("getpeername", &real);
	printf("flags=%s,%s\n", fcntl(conn, F_GETFL) & O_NONBLOCK ? "nonblock" : "block",
	       fcntl(conn, F_GETFD) & FD_CLOEXEC ? "cloexec" : "inherit");
	printf("conn_type=%d,%d\n", opt(conn, SO_TYPE), opt(conn, SO_DOMAIN));
	snprintf(line, sizeof(line), "hello %d\n", n);
	if (write(conn, line, strlen(line)) < 0)
		perror("write");
	close(conn);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int family = argc > 1 && argv[1][0] == '4' ? AF_INET : AF_INET6;
	int port = argc > 2 ? atoi(argv[2]) : 0, count = argc > 3 ? atoi(argv[3]) : 1;
	struct sockaddr_storage ss = { 0 };
	struct epoll_event ev = { .events = EPOLLIN }, got;
	socklen_t len;
	int fd, ep, conn;

	setvbuf(stdout, NULL, _IOLBF, 0);
	fd = socket(family, SOCK_STREAM, 0);
	if (family == AF_INET) {
		struct sockaddr_in *in = (void *)&ss;
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (void *)&ss;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		len = sizeof(*in6);
	}
	if (bind(fd, (struct sockaddr *)&ss, len)) {
		printf("bind=%d\n", errno);
		return 1;
	}
	printf("bound_acceptconn=%d\n", opt(fd, SO_ACCEPTCONN));
	if (listen(fd, 5)) {
		printf("listen=%d\n", errno);
		return 1;
	}
	len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	print_addr("sockname", &ss);
	printf("type=%d domain=%d acceptconn=%d\n", opt(fd, SO_TYPE), opt(fd, SO_DOMAIN),
	       opt(fd, SO_ACCEPTCONN));
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	conn = accept4(fd, NULL, NULL, SOCK_NONBLOCK);
	printf("empty=%d,%d\n", conn, conn < 0 ? errno : 0);
	printf("badflags=%d\n", accept4(fd, NULL, NULL, 0x4000) < 0 ? errno : 0);
	ep = epoll_create1(0);
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	printf("ready\n");
	fflush(stdout);
	for (int n = 1; n <= count; n++) {
		len = sizeof(ss);
		if (n % 2) { /* non-blocking accept4 under epoll */
			if (epoll_wait(ep, &got, 1, 20000) != 1) {
				printf("epoll=timeout\n");
				return 1;
			}
			conn = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		} else { /* blocking accept under select */
			fd_set set;
			struct timeval tv = { .tv_sec = 20 };

			FD_ZERO(&set);
			FD_SET(fd, &set);
			if (select(fd + 1, &set, NULL, NULL, &tv) != 1) {
				printf("select=timeout\n");
				return 1;
			}
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
			conn = accept(fd, (struct sockaddr *)&ss, &len);
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		}
		if (conn < 0) {
			printf("accept=%d\n", errno);
			n--;
			if (errno != EAGAIN)
				return 1;
			continue;
		}
		printf("addrlen=%u\n", (unsigned)len);
		serve(conn, n, &ss);
	}
	printf("done\n");
	return 0;
}
