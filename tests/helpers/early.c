/*
 * Built with -DLIB: a library whose constructor listens on TCP port $EARLY_PORT, as a
 * library may set up a server when it is loaded, before the preloaded shim's own
 * constructor has run.  Built without: a program linked with it that reports what that
 * socket is, asking the kernel directly (the shim answers for sockets it converted).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef LIB
int early_fd = -1, early_result = -1;

__attribute__((constructor)) static void early_listen(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	const char *port = getenv("EARLY_PORT");

	a.sin_port = htons((unsigned short)atoi(port ? port : "0"));
	early_fd = socket(AF_INET, SOCK_STREAM, 0);
	early_result = bind(early_fd, (struct sockaddr *)&a, sizeof(a)) ||
		       listen(early_fd, 5);
}
#else
extern int early_fd, early_result;

int main(void)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (syscall(SYS_getsockname, early_fd, &ss, &len))
		return 1;
	printf("result=%d\nfamily=%d\n", early_result, ss.ss_family);
	return 0;
}
#endif
