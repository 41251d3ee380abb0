#define _GNU_SOURCE
/*
 * dgram: a UDP-only program for the datagram tests.  Prints "key=value" lines.
 *
 *   dgram server ADDR PORT   bind, then take six datagrams, each with another receive
 *                            call (peek, no address, short address, truncation,
 *                            recvmmsg, recvmsg with IP_PKTINFO) and answer the last
 *                            sender with sendto and sendmmsg
 *   dgram client ADDR PORT   send the six datagrams (sendto, sendmmsg), read the three
 *                            answers, then connect and do one send/recv exchange
 *   dgram send ADDR PORT     one unconnected sendto; report its result
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

static void print_addr(const char *key, const struct sockaddr_storage *ss, socklen_t len)
{
	char text[INET6_ADDRSTRLEN] = "?";
	int port = addr_ip(ss, text, sizeof(text));

	if (port < 0) {
		port = 0;
		snprintf(text, sizeof(text), "family%d", ss->ss_family);
	}
	printf("%s=%s %d len=%u\n", key, text, port, (unsigned)len);
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	return !memcmp(a, b, a->ss_family == AF_INET ? sizeof(struct sockaddr_in)
						      : sizeof(struct sockaddr_in6));
}

static int server(const char *host, int port)
{
	struct sockaddr_storage ss, from, peek, ignored;
	socklen_t len = make_addr(host, port, &ss), flen, plen;
	int fd = socket(ss.ss_family, SOCK_DGRAM, 0), one = 1;
	char buf[256], cbuf[256];
	struct mmsghdr mm[2];
	struct iovec iov[2];
	struct msghdr msg;
	ssize_t n;

	if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len))
		die("bind");
	if (setsockopt(fd, ss.ss_family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6,
		       ss.ss_family == AF_INET ? IP_PKTINFO : IPV6_RECVPKTINFO, &one, sizeof(one)))
		die("pktinfo");
	printf("ready\n");
	fflush(stdout);
	/* 1: peek, then the real read: the same sender both times */
	plen = sizeof(peek);
	n = recvfrom(fd, buf, sizeof(buf), MSG_PEEK, (struct sockaddr *)&peek, &plen);
	flen = sizeof(from);
	if (n < 0 || recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen) != n)
		die("peek");
	print_addr("from", &from, flen);
	printf("peek_same=%d\n", plen == flen && same_addr(&peek, &from));
	/* 2: no address wanted */
	n = recvfrom(fd, buf, sizeof(buf), 0, NULL, NULL);
	printf("noaddr=%.*s\n", (int)(n < 0 ? 0 : n), buf);
	/* 3: an address buffer of 4 bytes: truncated, full length reported */
	memset(&ignored, 0xee, sizeof(ignored));
	plen = 4;
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&ignored, &plen);
	printf("short_len=%u short_prefix_ok=%d untouched=%d\n", (unsigned)plen,
	       !memcmp(&ignored, &from, 4), ((unsigned char *)&ignored)[4] == 0xee);
	/* 4: a 2-byte buffer with MSG_TRUNC: the real length comes back */
	n = recvfrom(fd, buf, 2, MSG_TRUNC, NULL, NULL);
	printf("trunc=%zd\n", n);
	/* 5 and 6: recvmmsg */
	memset(mm, 0, sizeof(mm));
	for (int i = 0; i < 2; i++) {
		iov[i].iov_base = buf + 128 * i;
		iov[i].iov_len = 127;
		mm[i].msg_hdr.msg_iov = &iov[i];
		mm[i].msg_hdr.msg_iovlen = 1;
		mm[i].msg_hdr.msg_name = i ? (void *)&peek : (void *)&ignored;
		mm[i].msg_hdr.msg_namelen = sizeof(ss);
	}
	n = recvmmsg(fd, mm, 2, 0, NULL); /* blocks until both are in */
	printf("mmsg=%zd\n", n);
	for (int i = 0; i < n; i++)
		printf("mmsg%d_same=%d\n", i, same_addr(i ? &peek : &ignored, &from));
	/* 7: recvmsg with a control buffer: where did it arrive? */
	memset(&msg, 0, sizeof(msg));
	iov[0].iov_base = buf;
	iov[0].iov_len = sizeof(buf);
	msg.msg_iov = iov;
	msg.msg_iovlen = 1;
	msg.msg_name = &peek;
	msg.msg_namelen = sizeof(peek);
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	if ((n = recvmsg(fd, &msg, 0)) < 0)
		die("recvmsg");
	printf("recvmsg_same=%d pktinfo=%d\n", same_addr(&peek, &from),
	       CMSG_FIRSTHDR(&msg) && (CMSG_FIRSTHDR(&msg)->cmsg_type == IP_PKTINFO ||
				       CMSG_FIRSTHDR(&msg)->cmsg_type == IPV6_PKTINFO));
	/* answers: one sendto, two by sendmmsg */
	if (sendto(fd, "answer1", 7, 0, (struct sockaddr *)&from, flen) != 7)
		die("sendto");
	memset(mm, 0, sizeof(mm));
	for (int i = 0; i < 2; i++) {
		iov[i].iov_base = i ? "answer3" : "answer2";
		iov[i].iov_len = 7;
		mm[i].msg_hdr.msg_iov = &iov[i];
		mm[i].msg_hdr.msg_iovlen = 1;
		mm[i].msg_hdr.msg_name = &from;
		mm[i].msg_hdr.msg_namelen = flen;
	}
	printf("sendmmsg=%d\n", sendmmsg(fd, mm, 2, 0));
	/* the connected exchange */
	flen = sizeof(from);
	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
	if (n < 0 || sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, flen) != n)
		die("echo");
	printf("done\n");
	return 0;
}

static int client(const char *host, int port)
{
	struct sockaddr_storage ss, from, name;
	socklen_t len = make_addr(host, port, &ss), flen;
	int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	const char *msgs[] = { "one", "two", "three", "a-long-fourth", "five", "six", "seven" };
	struct mmsghdr mm[2];
	struct iovec iov[2];
	char buf[64];
	ssize_t n;

	if (fd < 0)
		die("socket");
	for (int i = 0; i < 4; i++) {
		if (sendto(fd, msgs[i], strlen(msgs[i]), 0, (struct sockaddr *)&ss, len) < 0)
			die("sendto");
	}
	memset(mm, 0, sizeof(mm));
	for (int i = 0; i < 2; i++) {
		iov[i].iov_base = (void *)msgs[4 + i];
		iov[i].iov_len = strlen(msgs[4 + i]);
		mm[i].msg_hdr.msg_iov = &iov[i];
		mm[i].msg_hdr.msg_iovlen = 1;
		mm[i].msg_hdr.msg_name = &ss;
		mm[i].msg_hdr.msg_namelen = len;
	}
	printf("sendmmsg=%d\n", sendmmsg(fd, mm, 2, 0));
	if (sendto(fd, msgs[6], strlen(msgs[6]), 0, (struct sockaddr *)&ss, len) < 0)
		die("sendto7");
	for (int i = 0; i < 3; i++) {
		flen = sizeof(from);
		n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
		if (n < 0)
			die("recvfrom");
		printf("answer=%.*s\n", (int)n, buf);
		print_addr("answer_from", &from, flen);
	}
	flen = sizeof(name);
	if (getpeername(fd, (struct sockaddr *)&name, &flen) == 0 || errno != ENOTCONN)
		die("getpeername-unconnected");
	if (connect(fd, (struct sockaddr *)&ss, len) || send(fd, "ping", 4, 0) != 4)
		die("connect");
	n = recv(fd, buf, sizeof(buf), 0);
	printf("connected_reply=%.*s\n", (int)(n < 0 ? 0 : n), buf);
	flen = sizeof(name);
	if (getpeername(fd, (struct sockaddr *)&name, &flen))
		die("getpeername");
	print_addr("peer", &name, flen);
	flen = sizeof(name);
	if (getsockname(fd, (struct sockaddr *)&name, &flen))
		die("getsockname");
	print_addr("local", &name, flen);
	return 0;
}

static int send_one(const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	int fd = socket(ss.ss_family, SOCK_DGRAM, 0);

	if (fd < 0)
		die("socket");
	if (sendto(fd, "x", 1, 0, (struct sockaddr *)&ss, len) < 0)
		printf("sendto=%s\n", strerrorname_np(errno));
	else
		printf("sendto=ok\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 64;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(argv[1], "server"))
		return server(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "client"))
		return client(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "send"))
		return send_one(argv[2], atoi(argv[3]));
	return 64;
}
