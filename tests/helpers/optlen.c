/*
 * getsockopt with odd buffers on a converted listener and on a real one beside it:
 * lengths 0 to 8 and huge, a negative length, a NULL buffer.  Prints each difference
 * (the converted one first) and exits with their count.  TCP_INFO is compared by
 * length only and up to glibc's struct (the kernel's is longer).
 *
 * usage: optlen CONVERTED_PORT REAL_PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int listener(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int s = socket(AF_INET, SOCK_STREAM, 0);

	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 1)) {
		perror("listener");
		exit(100);
	}
	return s;
}

static const struct {
	int level, name;
	const char *text;
} opts[] = {
	{ IPPROTO_IP, IP_TTL, "IP_TTL" },           { IPPROTO_IP, IP_TOS, "IP_TOS" },
	{ IPPROTO_IP, IP_OPTIONS, "IP_OPTIONS" },   { IPPROTO_IP, IP_MTU_DISCOVER, "IP_MTU_DISCOVER" },
	{ IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY" }, { IPPROTO_TCP, TCP_MAXSEG, "TCP_MAXSEG" },
	{ IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE" },
	{ IPPROTO_TCP, TCP_CONGESTION, "TCP_CONGESTION" }, { IPPROTO_TCP, TCP_INFO, "TCP_INFO" },
};

int main(int argc, char **argv)
{
	int lens[] = { 0, 1, 2, 3, 4, 5, 8, 104, -1 }, conv, real, diffs = 0;

	if (argc != 3)
		return 100;
	conv = listener(atoi(argv[1]));
	real = listener(atoi(argv[2]));
	for (unsigned i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		for (unsigned j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
			unsigned char b[2][200];
			socklen_t l[2] = { (socklen_t)lens[j], (socklen_t)lens[j] };
			int r[2], e[2], fd[2] = { conv, real }, info = opts[i].name == TCP_INFO &&
								       opts[i].level == IPPROTO_TCP;

			for (int k = 0; k < 2; k++) {
				memset(b[k], 0xaa, sizeof(b[k]));
				errno = 0;
				r[k] = getsockopt(fd[k], opts[i].level, opts[i].name, b[k], &l[k]);
				e[k] = errno;
			}
			if (r[0] == r[1] && (r[0] ? e[0] == e[1] : l[0] == l[1] &&
					     (info || !memcmp(b[0], b[1], l[0]))))
				continue;
			printf("%s len %d: r=%d errno=%d len=%u | r=%d errno=%d len=%u\n",
			       opts[i].text, lens[j], r[0], e[0], l[0], r[1], e[1], l[1]);
			diffs++;
		}
	}
	for (int k = 0; k < 2; k++) {
		socklen_t zero = 0;
		int fd = k ? real : conv, r = getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, NULL, &zero);

		printf("%s NULL buffer, length 0: %d\n", k ? "real" : "converted", r);
		diffs += k && r != getsockopt(conv, IPPROTO_TCP, TCP_NODELAY, NULL, &zero);
	}
	return diffs;
}
