/*
 * unixify-supervise PROGRAM ARGV0 [ARGS...]: run PROGRAM under the seccomp filter, with
 * UNIXIFY_RULES (and UNIXIFY_VERBOSE) in the environment as for the shim.
 *
 * This process becomes the program, so it keeps our pid (LISTEN_PID, a service
 * manager's main pid) and its exit status is the program's.  A grandchild, in a
 * session of its own (a terminal's ^C goes to the program, whose exit ends it), is
 * the supervisor: it receives the listener over a socket pair, answers until no task
 * uses the filter any more, then removes the socket files it made.  The program never
 * holds the listener.  If the supervisor cannot start, the program is not run.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "supervisor.h"

/* The shim's start-up, which rule_decide() asks for: here rules_init() in main().  The
 * supervisor is never inside a sandbox of the program's (sandbox.c). */
int shim_started = SHIM_STARTED;
int shim_sandboxed;
void shim_start(void)
{
}

/* One byte and room for one fd: the message that carries the listener. */
struct fd_message {
	char data;
	struct iovec iov;
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg;
};

static void fd_message_init(struct fd_message *m)
{
	memset(m, 0, sizeof(*m));
	m->data = 'L';
	m->iov = (struct iovec){ &m->data, 1 };
	m->msg = (struct msghdr){ .msg_iov = &m->iov, .msg_iovlen = 1,
				  .msg_control = m->u.buf, .msg_controllen = sizeof(m->u.buf) };
}

static int send_fd(int sock, int fd)
{
	struct fd_message m;
	struct cmsghdr *cm;

	fd_message_init(&m);
	cm = CMSG_FIRSTHDR(&m.msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &m.msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
	struct fd_message m;
	struct cmsghdr *cm;
	int fd;

	fd_message_init(&m);
	if (recvmsg(sock, &m.msg, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	cm = CMSG_FIRSTHDR(&m.msg);
	if (!cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int)))
		return -1;
	memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

/* The program's descriptors are not ours to hold: keep stderr for log lines. */
static void drop_descriptors(int keep)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
	}
	/* Linux 5.9, as the rest of this back end */
	if (keep > 3)
		syscall(SYS_close_range, 3, keep - 1, 0);
	syscall(SYS_close_range, keep + 1, ~0U, 0);
}

static void supervise(int sock)
{
	uint64_t sync = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
	int listener;

	setsid();
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGTERM, SIG_IGN); /* ends when the program's tree does, cleaning up */
	signal(SIGPIPE, SIG_IGN);
	drop_descriptors(sock);
	listener = recv_fd(sock);
	if (listener < 0)
		_exit(1);
	/* the program waits on the CPU we answer from rather than being woken elsewhere */
	features.sync_wakeup = ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, sync, 0) == 0;
	features.addfd_send = 1; /* until the kernel says otherwise */
	ulog(LOG_DEBUG_, "supervising (sync wake-up %s)", features.sync_wakeup ? "on" : "off");
	if (write(sock, "R", 1) != 1)
		_exit(1);
	close(sock);
	serve(listener);
	_exit(0);
}

/* Start the supervisor as a grandchild; the socket to hand it the listener. */
static int start_supervisor(void)
{
	int sv[2], status;
	pid_t child;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -1;
	child = fork();
	if (child < 0)
		return -1;
	if (child == 0) {
		close(sv[0]);
		if (fork() == 0)
			supervise(sv[1]);
		_exit(0);
	}
	close(sv[1]);
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status)) {
		close(sv[0]);
		return -1;
	}
	return sv[0];
}

static void clean_environment(void)
{
	/* The rules were read: the program and its children run under the filter; a
	 * child that also loaded the shim would convert twice. */
	unsetenv("UNIXIFY_RULES");
}

int main(int argc, char **argv)
{
	char ready;
	int sock, listener;

	if (argc < 3) {
		fprintf(stderr, "usage: unixify-supervise PROGRAM ARGV0 [ARGS...] (run by "
			"unixify --backend=seccomp)\n");
		return 2;
	}
	log_init();
	rules_init();
	if (rules_state == RULES_LAZY)
		rules_load();
	if (rules_state != RULES_OK) {
		ulog(LOG_ERR_, "no usable rules; not running %s", argv[1]);
		return 1;
	}
	sock = start_supervisor();
	if (sock < 0) {
		ulog(LOG_ERR_, "cannot start the supervisor: %s", strerror(errno));
		return 1;
	}
	listener = filter_install(rules_convert_udp());
	if (listener < 0)
		return 1;
	if (send_fd(sock, listener) || read(sock, &ready, 1) != 1 || ready != 'R') {
		ulog(LOG_ERR_, "the supervisor did not start; not running %s", argv[1]);
		return 1;
	}
	close(listener);
	close(sock);
	clean_environment();
	execv(argv[1], argv + 2);
	ulog(LOG_ERR_, "cannot run %s: %s", argv[1], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
