/*
 * Receive sockets with recvmmsg (as batching servers do) and say what each one is.
 * Usage: recvmmsg CHANNEL.  Prints "family=N address=ADDR port=P" per socket.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} control;
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct mmsghdr m = { .msg_hdr = { .msg_iov = &iov, .msg_iovlen = 1,
					  .msg_control = control.buf,
					  .msg_controllen = sizeof(control.buf) } };
	int c;

	if (argc != 2)
		return 2;
	strncpy(sun.sun_path, argv[1], sizeof(sun.sun_path) - 1);
	c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&sun, sizeof(sun)) ||
	    recvmmsg(c, &m, 1, 0, NULL) != 1) {
		perror("receive");
		return 2;
	}
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&m.msg_hdr); h; h = CMSG_NXTHDR(&m.msg_hdr, h)) {
		size_t n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);

		for (size_t i = 0; h->cmsg_type == SCM_RIGHTS && i < n; i++) {
			struct sockaddr_storage ss;
			socklen_t len = sizeof(ss);
			char host[64] = "";
			int fd, family = -1;
			socklen_t flen = sizeof(family);

			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(fd));
			getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &flen);
			if (getsockname(fd, (struct sockaddr *)&ss, &len))
				ss.ss_family = AF_UNSPEC;
			if (ss.ss_family == AF_INET)
				inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host,
					  sizeof(host));
			printf("family=%d address=%s port=%d\n", family, host,
			       ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
						   : -1);
		}
	}
	return write(c, "y", 1) == 1 ? 0 : 2;
}
