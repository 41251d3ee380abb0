/*
 * An unconnected UDP client that reads with recvmmsg, as batching resolvers do.
 * Usage: mmsgclient ADDR PORT.  Sends "first", prints "sent 0", waits for a line on
 * stdin, then reads (3 s at most) until a datagram "real" and prints what came as a
 * Python literal: [(data, (address, port), [(cmsg_level, cmsg_type)...], []), ...].
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define VLEN 4

int main(int argc, char **argv)
{
	struct sockaddr_in to = { .sin_family = AF_INET }, from[VLEN];
	union {
		char buf[64];
		struct cmsghdr align;
	} control[VLEN];
	struct timeval tv = { .tv_sec = 3 };
	struct mmsghdr v[VLEN];
	struct iovec iov[VLEN];
	char data[VLEN][100], line[8];
	int s, done = 0, sep = 0;

	if (argc != 3 || inet_pton(AF_INET, argv[1], &to.sin_addr) != 1)
		return 2;
	to.sin_port = htons((unsigned short)atoi(argv[2]));
	s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0 || sendto(s, "first", 5, 0, (struct sockaddr *)&to, sizeof(to)) != 5 ||
	    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))) {
		perror("mmsgclient");
		return 2;
	}
	printf("sent 0\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	printf("[");
	for (int round = 0; round < 3 && !done; round++) {
		int n;

		memset(v, 0, sizeof(v));
		for (int i = 0; i < VLEN; i++) {
			iov[i] = (struct iovec){ .iov_base = data[i], .iov_len = sizeof(data[i]) };
			v[i].msg_hdr = (struct msghdr){ .msg_name = &from[i],
							.msg_namelen = sizeof(from[i]),
							.msg_iov = &iov[i], .msg_iovlen = 1,
							.msg_control = control[i].buf,
							.msg_controllen = sizeof(control[i].buf) };
		}
		n = recvmmsg(s, v, VLEN, MSG_WAITFORONE, NULL);
		for (int i = 0; i < n; i++) {
			char host[INET_ADDRSTRLEN] = "";

			inet_ntop(AF_INET, &from[i].sin_addr, host, sizeof(host));
			printf("%s(b'%.*s', ('%s', %u), [", sep++ ? ", " : "", (int)v[i].msg_len,
			       data[i], host, ntohs(from[i].sin_port));
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&v[i].msg_hdr); c;
			     c = CMSG_NXTHDR(&v[i].msg_hdr, c))
				printf("(%d, %d), ", c->cmsg_level, c->cmsg_type);
			printf("], [])");
			done |= v[i].msg_len == 4 && !memcmp(data[i], "real", 4);
		}
		if (n <= 0)
			break;
	}
	printf("]\n");
	return 0;
}
