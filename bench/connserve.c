/*
 * connserve: a server that answers each connection with one short line and closes it.
 *   connserve tcp PORT              accept on 127.0.0.1:PORT itself
 *   connserve a PATH                take connections from a dispatcher (protocol A:
 *                                   a Unix datagram socket at PATH, SCM_RIGHTS)
 *   connserve b CONTROL SLOT        protocol B: register SLOT at CONTROL, then take them
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char answer[] = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

static void serve(int fd)
{
	if (write(fd, answer, sizeof(answer) - 1) < 0) {
		/* the client left */
	}
	close(fd);
}

static int unix_socket(int type, const char *path, int do_bind)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, type, 0);

	strncpy(sun.sun_path, path, sizeof(sun.sun_path) - 1);
	if (do_bind)
		unlink(path);
	if (s < 0 || (do_bind ? bind(s, (struct sockaddr *)&sun, sizeof(sun))
			      : connect(s, (struct sockaddr *)&sun, sizeof(sun))) < 0) {
		perror(path);
		exit(1);
	}
	return s;
}

/* One message's fd, or -1 at the end. */
static int receive_fd(int s, char *data, size_t size)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { data, size };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm;
	int fd = -1;

	if (recvmsg(s, &msg, 0) <= 0)
		return -1;
	cm = CMSG_FIRSTHDR(&msg);
	if (cm && cm->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(cm), sizeof(fd));
	return fd;
}

int main(int argc, char **argv)
{
	char data[16];
	int s, fd;

	if (argc >= 3 && !strcmp(argv[1], "tcp")) {
		struct sockaddr_in sin = { .sin_family = AF_INET,
					   .sin_port = htons((uint16_t)atoi(argv[2])),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		int one = 1;

		s = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(s, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(s, 4096) < 0) {
			perror("tcp");
			return 1;
		}
		for (;;)
			if ((fd = accept(s, NULL, NULL)) >= 0)
				serve(fd);
	}
	if (argc >= 3 && !strcmp(argv[1], "a")) {
		s = unix_socket(SOCK_DGRAM, argv[2], 1);
		for (;;)
			if ((fd = receive_fd(s, data, sizeof(data))) >= 0)
				serve(fd);
	}
	if (argc >= 4 && !strcmp(argv[1], "b")) {
		uint32_t slot = htonl((uint32_t)atoi(argv[3]));
		char reg[8] = { 1, 0, 0, 0 };

		s = unix_socket(SOCK_SEQPACKET, argv[2], 0);
		memcpy(reg + 4, &slot, 4);
		if (write(s, reg, sizeof(reg)) != sizeof(reg) || read(s, data, 4) != 4 ||
		    (uint8_t)data[0] != 0x80) {
			fprintf(stderr, "registration refused\n");
			return 1;
		}
		while ((fd = receive_fd(s, data, sizeof(data))) >= 0)
			serve(fd);
		return 0;
	}
	fprintf(stderr, "usage: connserve tcp PORT | a PATH | b CONTROL SLOT\n");
	return 2;
}
