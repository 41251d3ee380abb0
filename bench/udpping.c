/*
 * udpping: datagram round trips, each with an address on both sides (as UDP servers
 * and unconnected clients do), so address translation is on the measured path.
 *   udpping server ADDR        answer every datagram to its sender, forever
 *   udpping client ADDR N      N x (sendto, recvfrom); prints nanoseconds per round trip
 * ADDR is HOST:PORT (IPv4) or unix:PATH (a client then binds PATH.client).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static socklen_t parse(const char *text, struct sockaddr_storage *ss, const char *suffix)
{
	memset(ss, 0, sizeof(*ss));
	if (!strncmp(text, "unix:", 5)) {
		struct sockaddr_un *sun = (struct sockaddr_un *)ss;

		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path, sizeof(sun->sun_path), "%s%s", text + 5, suffix);
		return sizeof(*sun);
	}
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	char host[64];
	const char *colon = strrchr(text, ':');

	if (!colon || (size_t)(colon - text) >= sizeof(host))
		exit(64);
	memcpy(host, text, (size_t)(colon - text));
	host[colon - text] = 0;
	in4->sin_family = AF_INET;
	in4->sin_port = htons((unsigned short)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &in4->sin_addr) != 1)
		exit(64);
	return sizeof(*in4);
}

int main(int argc, char **argv)
{
	struct sockaddr_storage addr, from;
	socklen_t len, flen;
	char buf[64] = "ping";
	int fd;

	if (argc < 3)
		return 64;
	len = parse(argv[2], &addr, "");
	fd = socket(addr.ss_family, SOCK_DGRAM, 0);
	if (!strcmp(argv[1], "server")) {
		if (addr.ss_family == AF_UNIX)
			unlink(((struct sockaddr_un *)&addr)->sun_path);
		if (bind(fd, (struct sockaddr *)&addr, len))
			return perror("bind"), 1;
		for (;;) {
			ssize_t n;

			flen = sizeof(from);
			n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
			if (n >= 0)
				sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, flen);
		}
	}
	if (argc != 4)
		return 64;
	if (addr.ss_family == AF_UNIX) {
		struct sockaddr_storage me;
		socklen_t mlen = parse(argv[2], &me, ".client");

		unlink(((struct sockaddr_un *)&me)->sun_path);
		if (bind(fd, (struct sockaddr *)&me, mlen))
			return perror("bind"), 1;
	}
	long n = atol(argv[3]);
	long long start = now_ns();

	for (long i = 0; i < n; i++) {
		flen = sizeof(from);
		if (sendto(fd, buf, 16, 0, (struct sockaddr *)&addr, len) < 0 ||
		    recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen) < 0)
			return perror("round trip"), 1;
	}
	printf("%lld\n", (now_ns() - start) / n);
	return 0;
}
