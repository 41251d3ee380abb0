/*
 * Pause and resume a listener as HAProxy does: connect(fd, AF_UNSPEC) stops it, listen()
 * starts it again.  Usage: pause HOST PORT PATH.  Between steps it prints a line and
 * waits for a line on stdin, so the test can look at the socket file and connect.
 *
 *   paused=RC:ERRNO acceptconn=N      after connect(AF_UNSPEC)
 *   resumed=RC:ERRNO acceptconn=N     after listen()
 *   accepted=N local=ADDR:PORT        a connection seen through the epoll set made at
 *                                     the start, and the listener's address after all
 *   paused2=...  resumed2=RC:ERRNO    a second round, while the test holds the path
 */
#include <sys/epoll.h>
#include <unistd.h>

#include "common.h"

static void step(const char *line)
{
	char buf[64];

	printf("%s\n", line);
	fflush(stdout);
	if (!fgets(buf, sizeof(buf), stdin))
		exit(0);
}

static int acceptconn(int fd)
{
	int v = -1;
	socklen_t len = sizeof(v);

	getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len);
	return v;
}

int main(int argc, char **argv)
{
	struct sockaddr_storage ss, local;
	struct sockaddr unspec = { .sa_family = AF_UNSPEC };
	struct epoll_event ev = { .events = EPOLLIN }, got;
	socklen_t len;
	char line[160], host[64];
	int fd, ep, r, one = 1;

	if (argc != 4)
		return 2;
	len = make_addr(argv[1], atoi(argv[2]), &ss);
	fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 16))
		die("listen");
	ep = epoll_create1(0);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll");
	step("listening");

	r = connect(fd, &unspec, sizeof(unspec));
	snprintf(line, sizeof(line), "paused=%d:%d acceptconn=%d", r, r ? errno : 0,
		 acceptconn(fd));
	step(line);
	r = listen(fd, 16);
	snprintf(line, sizeof(line), "resumed=%d:%d acceptconn=%d", r, r ? errno : 0,
		 acceptconn(fd));
	step(line); /* the test connects now */
	r = epoll_wait(ep, &got, 1, 5000);
	if (r == 1) {
		int c = accept(fd, NULL, NULL);

		if (c < 0)
			die("accept");
		close(c);
	}
	len = sizeof(local);
	if (getsockname(fd, (struct sockaddr *)&local, &len))
		die("getsockname");
	inet_ntop(local.ss_family, local.ss_family == AF_INET6
		  ? (void *)&((struct sockaddr_in6 *)&local)->sin6_addr
		  : (void *)&((struct sockaddr_in *)&local)->sin_addr, host, sizeof(host));
	snprintf(line, sizeof(line), "accepted=%d local=%s:%d", r, host,
		 ntohs(((struct sockaddr_in *)&local)->sin_port));
	step(line);

	r = connect(fd, &unspec, sizeof(unspec));
	snprintf(line, sizeof(line), "paused2=%d:%d", r, r ? errno : 0);
	step(line); /* the test takes the path now */
	r = listen(fd, 16);
	snprintf(line, sizeof(line), "resumed2=%d:%d", r, r ? errno : 0);
	step(line);
	return 0;
}
