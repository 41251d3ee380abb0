/*
 * A program that sandboxes itself, as sshd's pre-authentication child does: a seccomp
 * filter that kills the process on any socket() call (AF_NETLINK included).
 *
 *   sandboxed HOST PORT self|syscall|child
 *
 * Binds and listens on HOST:PORT (a rule converts it), then either installs the filter
 * itself, reads IP-level options, closes the listener and exit()s ("self" by prctl,
 * "syscall" by syscall(SYS_seccomp) as libseccomp does); or forks a
 * child that does so while the parent waits and closes its own copy afterwards
 * ("child").  Prints the options as "ip_options_len=N ttl=N" and the outcome as
 * "child=exited:N" / "child=signal:N" and "done".
 */
#define _GNU_SOURCE
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no seccomp arch for this machine"
#endif

static int by_syscall;

static void sandbox(void)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    (by_syscall ? syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)
			: prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)))
		die("seccomp");
}

/* Sandboxed from here: what the program asks of its socket, then closing and exit(). */
static void inside(int fd)
{
	unsigned char opts[64];
	socklen_t len = sizeof(opts);
	int ttl = -1;
	socklen_t ttl_len = sizeof(ttl);

	sandbox();
	if (getsockopt(fd, IPPROTO_IP, IP_OPTIONS, opts, &len) ||
	    getsockopt(fd, IPPROTO_IP, IP_TTL, &ttl, &ttl_len))
		die("getsockopt");
	printf("ip_options_len=%u ttl=%d\n", (unsigned)len, ttl);
	fflush(stdout);
	close(fd);
	exit(0);
}

int main(int argc, char **argv)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, status;
	pid_t pid;

	if (argc != 4) {
		fprintf(stderr, "usage: sandboxed HOST PORT self|syscall|child\n");
		return 2;
	}
	len = make_addr(argv[1], atoi(argv[2]), &ss);
	fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 8))
		die("listen");
	by_syscall = !strcmp(argv[3], "syscall");
	if (by_syscall || !strcmp(argv[3], "self"))
		inside(fd);
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		inside(fd);
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid");
	if (WIFSIGNALED(status))
		printf("child=signal:%d\n", WTERMSIG(status));
	else
		printf("child=exited:%d\n", WEXITSTATUS(status));
	close(fd);
	printf("done\n");
	return 0;
}
