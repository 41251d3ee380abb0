/*
 * Connections next to a socket whose options spilled out of its entry.
 *
 *   spillclose UNIX_PATH PORT N
 *
 * Keeps one IPv4 socket with more TCP options than an entry holds inline, then makes N
 * IPv4 connections to 127.0.0.1:PORT (converted by the rules to UNIX_PATH, where we
 * listen ourselves) and closes them: fds in the same chunk of the shim's table as the
 * kept one.  Prints how many connects failed other than with EAGAIN (backlog full).
 */
#define _GNU_SOURCE
#include <netinet/tcp.h>
#include <sys/un.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv)
{
	static const int opts[][2] = { { TCP_NODELAY, 1 },	  { TCP_KEEPIDLE, 31 },
				       { TCP_KEEPINTVL, 7 },	  { TCP_KEEPCNT, 5 },
				       { TCP_SYNCNT, 3 },	  { TCP_LINGER2, 11 },
				       { TCP_USER_TIMEOUT, 9000 }, { TCP_NOTSENT_LOWAT, 16384 },
				       { TCP_MAXSEG, 1200 } };
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct sockaddr_storage target;
	socklen_t len;
	int listener, keep, n, failed = 0;

	if (argc != 4) {
		fprintf(stderr, "usage: spillclose UNIX_PATH PORT N\n");
		return 2;
	}
	strncpy(sun.sun_path, argv[1], sizeof(sun.sun_path) - 1);
	listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&sun, sizeof(sun)) ||
	    listen(listener, 4096))
		die("listen");
	keep = socket(AF_INET, SOCK_STREAM, 0);
	for (unsigned i = 0; keep >= 0 && i < sizeof(opts) / sizeof(opts[0]); i++)
		if (setsockopt(keep, IPPROTO_TCP, opts[i][0], &opts[i][1], sizeof(int)))
			die("setsockopt");
	len = make_addr("127.0.0.1", atoi(argv[2]), &target);
	n = atoi(argv[3]);
	for (int i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), c;

		if (fd < 0)
			die("socket");
		if (connect(fd, (struct sockaddr *)&target, len) && errno != EAGAIN)
			failed++;
		close(fd);
		while ((c = accept4(listener, NULL, NULL, 0)) >= 0)
			close(c);
	}
	printf("failed=%d\n", failed);
	return 0;
}
