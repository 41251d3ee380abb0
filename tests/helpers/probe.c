#define _GNU_SOURCE
/*
 * probe: a small IP-only program for the shim tests.  It prints what it observes as
 * "key=value" lines; the tests run it wrapped by unixify and check the lines.
 *
 *   probe server ADDR PORT      listen (set up like a careful event-driven server), serve
 *                               two connections, report what it saw
 *   probe client ADDR PORT      non-blocking connect, report, read one line
 *   probe refused ADDR PORT     report the errno of a blocking connect
 *   probe setup ADDR PORT       one of each setup call (TCP bind, listen, connect; UDP
 *                               bind, sendto; getsockname), reporting only their errnos
 *   probe forkserver ADDR PORT  listen, fork a child that closes its copy and exits,
 *                               then serve one connection
 *   probe exec-check ADDR PORT  listen with and without FD_CLOEXEC, exec a shell that
 *                               reports which of the two fds survived
 *   probe exec-all ADDR PORT CMD listen on fd 3 (inheritable), then run "sh -c CMD" through
 *                               each exec function and posix_spawn(p), one at a time,
 *                               each line prefixed with the function's name
 *   probe closeall ADDR PORT    close fds 3..1023 one by one, then closefrom(3), as daemons
 *                               do at start-up; then listen, report what a child shell
 *                               inherits, and greet one connection
 *   probe fdops ADDR PORT SOCK  O_ASYNC owner and signal, vfork and posix_spawn children,
 *                               dup2 then close, close_range; reports whether SOCK exists
 *   probe claimed ADDR PORT     ignore bind's error and go on: listen, connect to
 *                               ADDR PORT, UDP sendto ADDR PORT; and listen without bind;
 *                               reports errnos, then waits for a line on stdin
 *   probe outfail ADDR PORT     connect, then listen and connect again on the same socket;
 *                               reports errnos, then waits for a line on stdin
 *   probe acceptclose ADDR PORT SOCK HOW
 *                               listen; a thread blocks in accept; close the listener;
 *                               wake the thread (HOW: connect to SOCK, or signal); report
 *                               whether SOCK exists once it has returned
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

static void print_addr(const char *key, const struct sockaddr *sa, socklen_t len)
{
	char text[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in4 = (const void *)sa;

		inet_ntop(AF_INET, &in4->sin_addr, text, sizeof(text));
		port = ntohs(in4->sin_port);
	} else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
		port = ntohs(in6->sin6_port);
	}
	printf("%s=%d,%s,%d,len=%u\n", key, sa->sa_family, text, port, (unsigned)len);
}

/* Print fd's own address (or its peer's) as print_addr does. */
static void print_name(const char *key, int fd, int peer)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	if (peer)
		getpeername(fd, (struct sockaddr *)&ss, &len);
	else
		getsockname(fd, (struct sockaddr *)&ss, &len);
	print_addr(key, (struct sockaddr *)&ss, len);
}

static int listen_on(const char *host, int port, int flags)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	int one = 1, fd = socket(ss.ss_family, SOCK_STREAM | flags, 0);

	if (fd < 0)
		die("socket");
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		die("setsockopt");
	if (bind(fd, (struct sockaddr *)&ss, len))
		die("bind");
	if (listen(fd, 16))
		die("listen");
	return fd;
}

static int server(const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 12345 }, got;
	int one = 1, rcvbuf = 65536, value, fd, ep, conn, dupfd;
	struct sockaddr_storage peer;
	unsigned char tiny[4];
	socklen_t vlen = sizeof(value), plen;

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	printf("fd=%d\n", fd);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)))
		die("setsockopt v6only");
	ep = epoll_create1(EPOLL_CLOEXEC);
	/* registered before the socket is converted */
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll_ctl add");
	errno = 4242;
	if (bind(fd, (struct sockaddr *)&ss, len))
		die("bind");
	printf("errno_after_bind=%d\n", errno);
	if (listen(fd, 16))
		die("listen");
	printf("setsockopt_nodelay=%d\n", setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
						     sizeof(one)));
	print_name("sockname", fd, 0);
	plen = sizeof(tiny);
	memset(tiny, 0xee, sizeof(tiny));
	getsockname(fd, (struct sockaddr *)tiny, &plen);
	printf("short_sockname_len=%u,family_bytes=%d\n", (unsigned)plen,
	       tiny[0] | tiny[1] << 8);
	getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &vlen);
	printf("so_domain=%d\n", value);
	vlen = sizeof(value);
	value = -1;
	if (ss.ss_family == AF_INET6)
		getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &value, &vlen);
	printf("v6only=%d\n", value);
	vlen = sizeof(value);
	getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, &vlen);
	printf("so_rcvbuf=%d\n", value);
	vlen = sizeof(value);
	getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &value, &vlen);
	printf("so_reuseaddr=%d\n", value);
	printf("nonblock=%d\n", !!(fcntl(fd, F_GETFL) & O_NONBLOCK));
	printf("cloexec=%d\n", !!(fcntl(fd, F_GETFD) & FD_CLOEXEC));
	plen = sizeof(peer);
	value = getpeername(fd, (struct sockaddr *)&peer, &plen);
	printf("getpeername_listener=%d,%s\n", value, strerrorname_np(errno));
	/* closing a duplicate must not affect the original */
	dupfd = dup(fd);
	close(dupfd);
	dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 100);
	close(dupfd);
	ev.events = EPOLLIN;
	printf("epoll_mod=%d\n", epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev));
	printf("ready=1\n");
	fflush(stdout);

	/* first connection: accept(fd, NULL, NULL) */
	if (epoll_wait(ep, &got, 1, 10000) != 1)
		die("epoll_wait");
	printf("event_data=%llu\n", (unsigned long long)got.data.u64);
	conn = accept(fd, NULL, NULL);
	if (conn < 0)
		die("accept");
	print_name("peer1", conn, 1);
	print_name("conn_sockname", conn, 0);
	if (write(conn, "hello\n", 6) != 6)
		die("write");
	close(conn);

	/* second connection: accept4 with a buffer too short for the address */
	if (epoll_wait(ep, &got, 1, 10000) != 1)
		die("epoll_wait");
	plen = sizeof(tiny);
	conn = accept4(fd, (struct sockaddr *)tiny, &plen, SOCK_CLOEXEC);
	if (conn < 0)
		die("accept4");
	printf("accept4_short_len=%u,cloexec=%d\n", (unsigned)plen,
	       !!(fcntl(conn, F_GETFD) & FD_CLOEXEC));
	if (write(conn, "bye\n", 4) != 4)
		die("write");
	close(conn);
	printf("epoll_del=%d\n", epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL));
	close(fd);
	printf("done=1\n");
	return 0;
}

static int client(const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	struct pollfd p;
	int fd, r, err = -1;
	socklen_t elen = sizeof(err);
	char buf[64];
	ssize_t n;

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	errno = 4242;
	r = connect(fd, (struct sockaddr *)&ss, len);
	printf("connect=%d,%s\n", r, r ? strerrorname_np(errno) : "0");
	if (r == 0)
		printf("errno_after_connect=%d\n", errno);
	p.fd = fd;
	p.events = POLLOUT;
	poll(&p, 1, 5000);
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
	printf("so_error=%d\n", err);
	r = connect(fd, (struct sockaddr *)&ss, len);
	printf("reconnect=%d,%s\n", r, r ? strerrorname_np(errno) : "0");
	print_name("peername", fd, 1);
	print_name("sockname", fd, 0);
	p.events = POLLIN;
	poll(&p, 1, 5000);
	n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	printf("read=%s", buf);
	close(fd);
	return 0;
}

static int refused(const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	int fd = socket(ss.ss_family, SOCK_STREAM, 0);
	int r = connect(fd, (struct sockaddr *)&ss, len);

	printf("connect=%d,%s\n", r, r ? strerrorname_np(errno) : "0");
	return 0;
}

static void report(const char *what, int r)
{
	printf("%s=%s\n", what, r < 0 ? strerrorname_np(errno) : "0");
}

static int setup(const char *host, int port)
{
	struct sockaddr_storage ss, name;
	socklen_t len = make_addr(host, port, &ss), name_len = sizeof(name);
	int listener = socket(ss.ss_family, SOCK_STREAM, 0);
	int client = socket(ss.ss_family, SOCK_STREAM, 0);
	int dgram = socket(ss.ss_family, SOCK_DGRAM, 0);
	int sender = socket(ss.ss_family, SOCK_DGRAM, 0);

	report("bind", bind(listener, (struct sockaddr *)&ss, len));
	report("listen", listen(listener, 8));
	report("getsockname", getsockname(listener, (struct sockaddr *)&name, &name_len));
	report("connect", connect(client, (struct sockaddr *)&ss, len));
	report("dgram_bind", bind(dgram, (struct sockaddr *)&ss, len));
	report("sendto", (int)sendto(sender, "x", 1, 0, (struct sockaddr *)&ss, len));
	return 0;
}

static int forkserver(const char *host, int port)
{
	int fd = listen_on(host, port, 0), conn, status;
	pid_t child = fork();

	if (child == 0) {
		close(fd);
		exit(0); /* runs exit handlers, as a real child would */
	}
	waitpid(child, &status, 0);
	printf("child_exited=1\nready=1\n");
	fflush(stdout);
	conn = accept(fd, NULL, NULL);
	if (conn < 0)
		die("accept");
	if (write(conn, "from parent\n", 12) != 12)
		die("write");
	close(conn);
	close(fd);
	return 0;
}

static int exec_check(const char *host, int port)
{
	int keep = listen_on(host, port, 0);
	int drop = listen_on(host, port + 1, SOCK_CLOEXEC);
	char cmd[256];

	snprintf(cmd, sizeof(cmd),
		 "test -e /proc/self/fd/%d && echo keep_open=1 || echo keep_open=0; "
		 "test -e /proc/self/fd/%d && echo drop_open=1 || echo drop_open=0", keep, drop);
	fflush(stdout);
	execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
	die("exec");
	return 2;
}

/* Run "sh -c cmd" in a child through exec function number i; 0 when there are no more. */
static int exec_nth(int i, const char *cmd)
{
	static const char *const names[] = { "execl", "execlp", "execle", "execv", "execvp",
		"execvpe", "execve", "fexecve", "posix_spawn", "posix_spawnp" };
	char *argv[] = { "sh", "-c", (char *)cmd, NULL };
	int sh, status;
	pid_t pid;

	if (i >= (int)(sizeof(names) / sizeof(names[0])))
		return 0;
	printf("%s ", names[i]);
	fflush(stdout);
	if (i >= 8) {
		if ((i == 8 ? posix_spawn : posix_spawnp)(&pid, i == 8 ? "/bin/sh" : "sh", NULL,
							    NULL, argv, environ))
			die("posix_spawn");
		waitpid(pid, &status, 0);
		return 1;
	}
	pid = fork();
	if (pid) {
		waitpid(pid, &status, 0);
		return 1;
	}
	switch (i) {
	case 0: execl("/bin/sh", "sh", "-c", cmd, (char *)NULL); break;
	case 1: execlp("sh", "sh", "-c", cmd, (char *)NULL); break;
	case 2: execle("/bin/sh", "sh", "-c", cmd, (char *)NULL, environ); break;
	case 3: execv("/bin/sh", argv); break;
	case 4: execvp("sh", argv); break;
	case 5: execvpe("sh", argv, environ); break;
	case 6: execve("/bin/sh", argv, environ); break;
	case 7:
		sh = open("/bin/sh", O_RDONLY | O_CLOEXEC);
		fexecve(sh, argv, environ);
		break;
	}
	die(names[i]);
	return 0;
}

static int exec_all(const char *host, int port, const char *cmd)
{
	int fd = listen_on(host, port, 0);

	if (fd != 3 && (dup2(fd, 3) != 3 || close(fd)))
		die("dup2");
	for (int i = 0; exec_nth(i, cmd); i++)
		;
	return 0;
}

static int family_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	return getsockname(fd, (struct sockaddr *)&ss, &len) ? -1 : ss.ss_family;
}

static int exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static int fdops(const char *host, int port, const char *sock)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	char *argv[] = { "true", NULL };
	int fd = socket(ss.ss_family, SOCK_STREAM, 0), status;
	pid_t child;

	fcntl(fd, F_SETOWN, getpid());
	fcntl(fd, F_SETSIG, SIGUSR1);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 4))
		die("bind");
	printf("owner_is_self=%d\n", fcntl(fd, F_GETOWN) == getpid());
	printf("sig=%d\n", fcntl(fd, F_GETSIG));
	printf("async=%d\n", !!(fcntl(fd, F_GETFL) & O_ASYNC));

	child = vfork();
	if (child == 0) {
		close(fd); /* the child's copy only */
		_exit(0);
	}
	waitpid(child, &status, 0);
	printf("after_vfork_family=%d,exists=%d\n", family_of(fd), exists(sock));
	if (posix_spawnp(&child, "true", NULL, NULL, argv, NULL))
		die("posix_spawn");
	waitpid(child, &status, 0);
	printf("after_spawn_family=%d,exists=%d\n", family_of(fd), exists(sock));

	if (dup2(fd, 50) != 50)
		die("dup2");
	close(fd);
	printf("after_close_original_family=%d,exists=%d\n", family_of(50), exists(sock));
	if (close_range(40, 60, 0))
		die("close_range");
	printf("after_close_range_exists=%d\n", exists(sock));
	return 0;
}

/* Hold the process (and its sockets) until the test has looked: a line on stdin. */
static void hold(void)
{
	char line[16];

	printf("ready=1\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return;
}

static int claimed(const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	int listener = socket(ss.ss_family, SOCK_STREAM, 0);
	int client = socket(ss.ss_family, SOCK_STREAM, 0);
	int unbound = socket(ss.ss_family, SOCK_STREAM, 0);
	int dgram = socket(ss.ss_family, SOCK_DGRAM, 0);

	report("bind", bind(listener, (struct sockaddr *)&ss, len));
	report("listen", listen(listener, 8));
	report("bind_client", bind(client, (struct sockaddr *)&ss, len));
	report("connect_after_bind", connect(client, (struct sockaddr *)&ss, len));
	report("listen_nobind", listen(unbound, 8));
	report("dgram_bind", bind(dgram, (struct sockaddr *)&ss, len));
	report("sendto_after_bind", (int)sendto(dgram, "x", 1, 0, (struct sockaddr *)&ss, len));
	hold();
	return 0;
}

static int outfail(const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(host, port, &ss);
	int fd = socket(ss.ss_family, SOCK_STREAM, 0);

	report("connect", connect(fd, (struct sockaddr *)&ss, len));
	report("listen_after_connect", listen(fd, 8));
	report("reconnect", connect(fd, (struct sockaddr *)&ss, len));
	hold();
	return 0;
}

static int accept_fd = -1;
static volatile pid_t acceptor_tid;

/* Block in accept() on accept_fd; its errno (0 for a connection) in *arg. */
static void *acceptor(void *arg)
{
	int conn;

	acceptor_tid = (pid_t)syscall(SYS_gettid);
	conn = accept(accept_fd, NULL, NULL);
	*(int *)arg = conn < 0 ? errno : 0;
	if (conn >= 0)
		close(conn);
	return NULL;
}

static void on_signal(int sig)
{
	(void)sig;
}

/* Is thread tid blocked in accept()?  Its /proc syscall file starts with the number. */
static int in_accept(pid_t tid)
{
	char path[64], buf[64] = "";
	FILE *f;
	long nr;

	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	nr = strtol(buf, NULL, 10);
	return nr == SYS_accept || nr == SYS_accept4;
}

static int acceptclose(const char *host, int port, const char *sock, const char *how)
{
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: EINTR */
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int result = -1, c, i;
	pthread_t thread;

	sigaction(SIGUSR1, &sa, NULL);
	accept_fd = listen_on(host, port, 0);
	if (pthread_create(&thread, NULL, acceptor, &result))
		die("pthread_create");
	for (i = 0; i < 500 && !(acceptor_tid && in_accept(acceptor_tid)); i++)
		usleep(10000);
	printf("blocked=%d\n", i < 500);
	close(accept_fd);
	printf("after_close_exists=%d\n", exists(sock));
	if (!strcmp(how, "signal")) {
		pthread_kill(thread, SIGUSR1);
	} else {
		c = socket(AF_UNIX, SOCK_STREAM, 0);
		strncpy(sun.sun_path, sock, sizeof(sun.sun_path) - 1);
		report("wake_connect", connect(c, (struct sockaddr *)&sun, sizeof(sun)));
		close(c);
	}
	pthread_join(thread, NULL);
	printf("accept_result=%s\n", result ? strerrorname_np(result) : "0");
	printf("after_accept_exists=%d\n", exists(sock));
	return 0;
}

static int closeall(const char *host, int port)
{
	int fd, conn;

	for (fd = 3; fd < 1024; fd++)
		close(fd);
	closefrom(3);
	fd = listen_on(host, port, 0);
	printf("listening_fd=%d\n", fd);
	fflush(stdout);
	/* what a child inherits: no LISTEN_* and no socket but the listener */
	if (system("echo child_listen_fds=${LISTEN_FDS:-none}; "
		   "echo child_sockets=$(ls -l /proc/$$/fd | grep -c socket:)") != 0)
		die("system");
	printf("ready\n");
	conn = accept(fd, NULL, NULL);
	if (conn < 0)
		die("accept");
	if (write(conn, "hello\n", 6) != 6)
		die("write");
	close(conn);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && !strcmp(argv[1], "exec-all"))
		return exec_all(argv[2], atoi(argv[3]), argv[4]);
	if (argc == 5 && !strcmp(argv[1], "fdops"))
		return fdops(argv[2], atoi(argv[3]), argv[4]);
	if (argc == 6 && !strcmp(argv[1], "acceptclose"))
		return acceptclose(argv[2], atoi(argv[3]), argv[4], argv[5]);
	if (argc != 4) {
		fprintf(stderr, "usage: probe MODE ADDR PORT\n");
		return 2;
	}
	if (!strcmp(argv[1], "server"))
		return server(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "client"))
		return client(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "refused"))
		return refused(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "setup"))
		return setup(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "forkserver"))
		return forkserver(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "claimed"))
		return claimed(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "outfail"))
		return outfail(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "closeall"))
		return closeall(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "exec-check"))
		return exec_check(argv[2], atoi(argv[3]));
	fprintf(stderr, "unknown mode %s\n", argv[1]);
	return 2;
}
