/*
 * Rule sets too large for one environment string (the kernel caps one at 128 KiB) come
 * in a file that the launcher writes into a private directory of its user:
 *
 *   UNIXIFY_RULES=@SIZE:FLAGS:PATH     FLAGS: "S" when some rule has the systemd action
 *
 * The file is read at the first socket call that needs the rules, not in the
 * constructor, and trusted only from its rightful owner: its directory and the file
 * itself must belong to root or to us and be writable by nobody else, the file must be
 * a regular file of exactly SIZE bytes, and no symlink is followed at either step.
 * Everything here is async-signal-safe (open, fstat, read, mmap): a signal handler's
 * socket call may be the first.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"

int file_trusted(const struct stat *st)
{
	return (st->st_uid == 0 || st->st_uid == geteuid()) && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

static const char *untrusted(const struct stat *st)
{
	if (file_trusted(st))
		return NULL;
	return st->st_uid != 0 && st->st_uid != geteuid() ? "owned by another user"
							   : "writable by group or others";
}

/* The directory of path, opened without following a symlink at its last step. */
static int open_dir(const char *path, const char **why)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];
	size_t n = slash == path ? 1 : (size_t)(slash - path);
	struct stat st;
	int fd;

	memcpy(dir, path, n);
	dir[n] = 0;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		*why = strerror(errno);
		return -1;
	}
	if (fstat(fd, &st) || (*why = untrusted(&st)) != NULL) {
		if (!*why)
			*why = strerror(errno);
		REAL(close)(fd);
		return -1;
	}
	return fd;
}

static int read_all(int fd, char *buf, size_t size)
{
	size_t done = 0;

	while (done < size) {
		ssize_t n = read(fd, buf + done, size - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

static int open_file(const char *path, size_t size, const char **why)
{
	struct stat st;
	int dir = open_dir(path, why), fd;

	if (dir < 0)
		return -1;
	/* O_NONBLOCK: a FIFO planted there must not block the open */
	fd = openat(dir, strrchr(path, '/') + 1,
		    O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	REAL(close)(dir);
	if (fd < 0) {
		*why = errno == ELOOP ? "a symbolic link" : strerror(errno);
		return -1;
	}
	if (fstat(fd, &st))
		*why = strerror(errno);
	else if (!S_ISREG(st.st_mode))
		*why = "not a regular file";
	else if ((*why = untrusted(&st)) == NULL && (size_t)st.st_size != size)
		*why = "not the size announced";
	if (*why) {
		REAL(close)(fd);
		return -1;
	}
	return fd;
}

char *rulefile_read(const char *path, size_t size, const char **why)
{
	int fd = open_file(path, size, why), saved = errno;
	char *buf;

	if (fd < 0) {
		errno = saved;
		return NULL;
	}
	buf = mmap(NULL, size + 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		*why = "out of memory";
		buf = NULL;
	} else if (read_all(fd, buf, size)) {
		*why = "cannot read it";
		munmap(buf, size + 1);
		buf = NULL;
	}
	REAL(close)(fd);
	errno = saved;
	return buf;
}
