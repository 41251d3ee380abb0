/*
 * What the C test helpers share: failing with a "key=value" line the tests can read,
 * and an IPv4 or IPv6 socket address from text.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void die(const char *what)
{
	printf("error=%s:%s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

static socklen_t make_addr(const char *host, int port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		return sizeof(*in4);
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		return sizeof(*in6);
	}
	fprintf(stderr, "bad address %s\n", host);
	exit(2);
}

/* The address of an IPv4 or IPv6 socket address as text, and its port; -1 for another
 * family (text untouched). */
static inline int addr_ip(const struct sockaddr_storage *ss, char *text, size_t size)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in4 = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &in4->sin_addr, text, (socklen_t)size);
		return ntohs(in4->sin_port);
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, text, (socklen_t)size);
		return ntohs(in6->sin6_port);
	}
	return -1;
}
