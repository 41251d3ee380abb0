/*
 * Races around socket files, for tests/test_races.py.  Run under the shim with a rule
 * that converts binds to 127.0.0.1:PORT.
 *
 *   bindrace loop SECONDS PORT WATCH
 *       bind and close a socket again and again (at most 10^7 times), stopping early
 *       when the file WATCH changes
 *   bindrace race TRIALS PORT PATH stale|fresh
 *       per trial, two forked servers bind at the same moment (a stale socket file at
 *       PATH first, or none); exactly one must bind, the other get EADDRINUSE, and a
 *       client connecting to PATH must reach the one that bound
 *   bindrace rename DIR TARGET SECONDS
 *       (another user, no shim) whenever a directory named *unixify-* appears in DIR,
 *       move it aside and put a symlink to TARGET in its place; until stdin closes
 *   bindrace flip DIR TARGET SECONDS
 *       (another user, no shim) swap DIR/sub with a symlink to TARGET and back, again
 *       and again, until stdin closes
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Has the file changed since *was (or gone)? */
static int changed(const char *path, const struct stat *was)
{
	struct stat st;

	return lstat(path, &st) || st.st_ino != was->st_ino || st.st_mode != was->st_mode ||
	       st.st_uid != was->st_uid || st.st_gid != was->st_gid;
}

static int loop(double seconds, int port, const char *watch)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr("127.0.0.1", port, &ss);
	double end = now() + seconds;
	long binds = 0, failed = 0;
	struct stat was;

	if (lstat(watch, &was))
		die("watch");
	while (now() < end && binds + failed < 10000000 && !changed(watch, &was)) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd < 0)
			die("socket");
		if (bind(fd, (struct sockaddr *)&ss, len) == 0)
			binds++;
		else
			failed++;
		close(fd);
	}
	printf("binds=%ld failed=%ld\n", binds, failed);
	return 0;
}

/* One server of a race: wait for the start (and delay_us more), bind, listen 200 us
 * later, report, serve one client. */
static void server(int id, atomic_int *start, double delay_us, int port, int report)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr("127.0.0.1", port, &ss);
	int fd = socket(AF_INET, SOCK_STREAM, 0), r, err;
	double go;
	char msg[2];

	while (!atomic_load(start))
		;
	for (go = now() + delay_us / 1e6; now() < go;)
		;
	r = bind(fd, (struct sockaddr *)&ss, len);
	err = r ? errno : 0;
	if (r == 0) {
		for (go = now() + 200e-6; now() < go;)
			; /* work between bind and listen, as real servers do */
		listen(fd, 8);
	}
	msg[0] = (char)id;
	msg[1] = (char)err;
	if (write(report, msg, 2) != 2)
		exit(3);
	if (r == 0) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int c = poll(&p, 1, 5000) == 1 ? accept(fd, NULL, NULL) : -1;

		if (c >= 0 && write(c, msg, 1) != 1)
			exit(3);
	}
	exit(0);
}

static void make_stale(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	strncpy(sun.sun_path, path, sizeof(sun.sun_path) - 1);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)))
		die("stale bind");
	close(fd);
}

/* The server that answers a client at path: its id, or -1. */
static int who_answers(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char id;

	strncpy(sun.sun_path, path, sizeof(sun.sun_path) - 1);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) || poll(&p, 1, 5000) != 1 ||
	    read(fd, &id, 1) != 1)
		id = -1;
	close(fd);
	return id;
}

static int race(int trials, int port, const char *path, int stale)
{
	atomic_int *start = mmap(NULL, sizeof(*start), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int both = 0, none = 0, wrong = 0, left = 0;

	for (int t = 0; t < trials; t++) {
		int pipefd[2], winner = -1, bound = 0, errs = 0;
		pid_t pids[2];
		char msg[2];

		if (stale)
			make_stale(path);
		atomic_store(start, 0);
		if (pipe(pipefd))
			die("pipe");
		for (int i = 0; i < 2; i++) {
			pids[i] = fork();
			if (pids[i] == 0) {
				close(pipefd[0]);
				/* the second server starts 0-200 us later: every interleaving */
				server(i, start, i * (t % 41) * 5.0, port, pipefd[1]);
			}
		}
		close(pipefd[1]);
		atomic_store(start, 1);
		for (int i = 0; i < 2; i++) {
			if (read(pipefd[0], msg, 2) != 2)
				die("report");
			if (msg[1] == 0) {
				bound++;
				winner = msg[0];
			} else if (msg[1] != EADDRINUSE) {
				errs++;
			}
		}
		close(pipefd[0]);
		both += bound == 2;
		none += bound == 0 || errs;
		if (bound == 1 && who_answers(path) != winner)
			wrong++;
		for (int i = 0; i < 2; i++) {
			if (bound == 2)
				kill(pids[i], SIGTERM); /* one of them waits for a client */
			waitpid(pids[i], NULL, 0);
		}
		/* the winner removed its file at exit; anything left is somebody's orphan */
		if (access(path, F_OK) == 0) {
			left++;
			unlink(path);
		}
	}
	printf("trials=%d both=%d none=%d wrong=%d left=%d\n", trials, both, none, wrong, left);
	return 0;
}

static int renamer(const char *dir, const char *target, double seconds)
{
	int in = inotify_init1(IN_NONBLOCK), swaps = 0;
	double end = now() + seconds;
	char buf[4096] __attribute__((aligned(8)));

	if (in < 0 || inotify_add_watch(in, dir, IN_CREATE) < 0)
		die("inotify");
	printf("ready\n");
	fflush(stdout);
	while (now() < end) {
		struct pollfd p[2] = { { .fd = in, .events = POLLIN }, { .fd = 0, .events = POLLIN } };
		ssize_t n;

		if (poll(p, 2, 100) < 1)
			continue;
		if (p[1].revents && read(0, buf, sizeof(buf)) <= 0)
			break;
		if (!p[0].revents || (n = read(in, buf, sizeof(buf))) <= 0)
			continue;
		for (char *e = buf; e < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)e;
			char from[4096], to[4096];

			e += sizeof(*ev) + ev->len;
			/* directories only: the symlinks put in their place are created too */
			if (!ev->len || !(ev->mask & IN_ISDIR) || !strstr(ev->name, "unixify-"))
				continue;
			snprintf(from, sizeof(from), "%s/%s", dir, ev->name);
			snprintf(to, sizeof(to), "%s/moved-%d", dir, swaps);
			if (rename(from, to) == 0 && symlink(target, from) == 0)
				swaps++;
		}
	}
	printf("swaps=%d\n", swaps);
	return 0;
}

static int flipper(const char *dir, const char *target, double seconds)
{
	char sub[4096], link[4096];
	double end = now() + seconds;
	struct pollfd p = { .fd = 0, .events = POLLIN };
	long flips = 0;

	snprintf(sub, sizeof(sub), "%s/sub", dir);
	snprintf(link, sizeof(link), "%s/link", dir);
	if (symlink(target, link))
		die("symlink");
	printf("ready\n");
	fflush(stdout);
	/* sub is always there: the directory, or (half of the time) the symlink */
	while (now() < end && poll(&p, 1, 0) == 0)
		for (int i = 0; i < 1000; i++)
			if (renameat2(AT_FDCWD, sub, AT_FDCWD, link, RENAME_EXCHANGE) == 0)
				flips++;
	printf("swaps=%ld\n", flips);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && !strcmp(argv[1], "loop"))
		return loop(atof(argv[2]), atoi(argv[3]), argv[4]);
	if (argc == 6 && !strcmp(argv[1], "race"))
		return race(atoi(argv[2]), atoi(argv[3]), argv[4], !strcmp(argv[5], "stale"));
	if (argc == 5 && !strcmp(argv[1], "rename"))
		return renamer(argv[2], argv[3], atof(argv[4]));
	if (argc == 5 && !strcmp(argv[1], "flip"))
		return flipper(argv[2], argv[3], atof(argv[4]));
	fprintf(stderr, "usage: see the comment at the top of bindrace.c\n");
	return 2;
}
