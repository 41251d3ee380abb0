/*
 * Other socket families: AF_VSOCK and AF_TIPC addresses from vsock= / tipc= rules or from
 * unsock control files, and Firecracker-style multiplexers (fc=): a Unix socket on which
 * "CONNECT <port>\n" is answered by "OK ...\n", after which the stream is the guest's.
 *
 * Control file (unsock's format), a regular file of 452 bytes, little-endian, packed;
 * trusted only when root's or ours and writable by nobody else, and only for vsock, tipc
 * or a multiplexer, never an IP address:
 *     0  u64 magic 0x4b534e55 ("UNSK")      8  u64 options (bit 0: multiplexer)
 *    16  u32 proxy length  20  u32 destination length  24  u32 option count  28  u32 0
 *    32  128 bytes proxy sockaddr_un       160  128 bytes destination sockaddr
 *   288  4 x { u32 level, u32 name, 32 bytes value } socket options       448  u32 0
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tipc.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

#define CONTROL_MAGIC 0x4b534e55ULL
#define FC_TIMEOUT_MS 10000

void other_from_rule(const struct rule *r, struct other_target *t)
{
	memset(t, 0, sizeof(*t));
	if (r->action == ACT_VSOCK) {
		struct sockaddr_vm *vm = (struct sockaddr_vm *)&t->addr;

		vm->svm_family = AF_VSOCK;
		vm->svm_cid = r->numbers[0];
		vm->svm_port = r->numbers[1];
		t->len = sizeof(*vm);
	} else if (r->action == ACT_TIPC) {
		struct sockaddr_tipc *tp = (struct sockaddr_tipc *)&t->addr;

		/* unsock's five values, as it uses them: the three words of the address
		 * union are filled in order whatever the address type */
		tp->family = AF_TIPC;
		tp->addrtype = (unsigned char)r->numbers[0];
		tp->scope = (signed char)r->numbers[1];
		tp->addr.nameseq.type = r->numbers[2];
		tp->addr.nameseq.lower = r->numbers[3];
		tp->addr.nameseq.upper = r->numbers[4];
		t->len = sizeof(*tp);
	} else { /* ACT_FC */
		struct sockaddr_un *sun = (struct sockaddr_un *)&t->addr;

		sun->sun_family = AF_UNIX;
		strncpy(sun->sun_path, r->target, sizeof(sun->sun_path) - 1);
		t->len = sizeof(*sun);
		t->fc = 1;
		t->fc_port = r->numbers[0];
	}
	t->family = t->addr.ss_family;
}

static uint16_t le16(const unsigned char *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return le16toh(v);
}

static uint32_t le32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static int malformed(const char *path, const char *why)
{
	ulog(LOG_ERR_, "%s: not a valid unsock control file (%s)", path, why);
	errno = EINVAL;
	return -1;
}

static int decode_control(const char *path, const unsigned char *b, struct other_target *t)
{
	uint64_t options;
	uint32_t proxy_len = le32(b + 16), dest_len = le32(b + 20), n_opts = le32(b + 24);

	memcpy(&options, b + 8, sizeof(options));
	options = le64toh(options);
	if (dest_len < sizeof(sa_family_t) || dest_len > 128 || n_opts > MAX_TARGET_OPTS)
		return malformed(path, "bad lengths");
	memset(t, 0, sizeof(*t));
	if (options & 1) { /* multiplexer: proxy is a Unix path, destination a vsock port */
		if (proxy_len <= sizeof(sa_family_t) || proxy_len > sizeof(struct sockaddr_un) ||
		    le16(b + 32) != AF_UNIX || le16(b + 160) != AF_VSOCK)
			return malformed(path, "a multiplexer needs a Unix proxy and a vsock port");
		memcpy(&t->addr, b + 32, proxy_len);
		t->len = proxy_len;
		t->fc = 1;
		t->fc_port = le32(b + 160 + offsetof(struct sockaddr_vm, svm_port));
	} else {
		memcpy(&t->addr, b + 160, dest_len);
		t->len = dest_len;
	}
	t->family = t->addr.ss_family;
	t->n_opts = (int)n_opts;
	for (uint32_t i = 0; i < n_opts; i++) {
		const unsigned char *o = b + 288 + 40 * i;

		t->opts[i].level = le32(o);
		t->opts[i].name = le32(o + 4);
		memcpy(t->opts[i].value, o + 8, sizeof(t->opts[i].value));
	}
	return 1;
}

/* A control file steers the program's socket: it is trusted only from root or our own
 * uid, and only if nobody else can write it (checked on the file actually read). */
static int untrusted(const char *path, const struct stat *st)
{
	if (file_trusted(st))
		return 0;
	ulog(LOG_ERR_, "%s: control file owned by uid %d with mode %04o is not trusted (it "
	     "must be root's or ours and writable by nobody else); refusing", path,
	     (int)st->st_uid, (unsigned)(st->st_mode & 07777));
	errno = EACCES;
	return -1;
}

/* Control files exist for vsock, TIPC and multiplexers; an IP address in one would open
 * the very port a rule is there to prevent. */
static int wrong_family(const char *path, const struct other_target *t)
{
	if (t->fc || t->family == AF_VSOCK || t->family == AF_TIPC)
		return 0;
	ulog(LOG_ERR_, "%s: control file names address family %d; only vsock, tipc and "
	     "multiplexers are allowed; refusing", path, t->family);
	errno = EACCES;
	return -1;
}

int control_file_read(const char *path, struct other_target *t)
{
	unsigned char b[CONTROL_FILE_SIZE];
	struct stat st;
	uint64_t magic;
	int fd, saved = errno;
	ssize_t n;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		errno = saved;
		return 0;
	}
	n = fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size != CONTROL_FILE_SIZE
		    ? -1 : read(fd, b, sizeof(b));
	close(fd);
	errno = saved;
	if (n != CONTROL_FILE_SIZE)
		return 0;
	memcpy(&magic, b, sizeof(magic));
	if (le64toh(magic) != CONTROL_MAGIC)
		return 0;
	if (untrusted(path, &st) || decode_control(path, b, t) < 0 || wrong_family(path, t))
		return -1;
	return 1;
}

void other_apply_options(int sock, const struct other_target *t)
{
	for (int i = 0; i < t->n_opts; i++) {
		if (REAL(setsockopt)(sock, (int)t->opts[i].level, (int)t->opts[i].name,
				     t->opts[i].value, sizeof(t->opts[i].value)))
			ulog(LOG_WARN_, "control file option %u/%u not set: %s", t->opts[i].level,
			     t->opts[i].name, strerror(errno));
	}
}

static long ms_left(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return FC_TIMEOUT_MS - ((now.tv_sec - start->tv_sec) * 1000 +
				(now.tv_nsec - start->tv_nsec) / 1000000);
}

/* Wait until sock is ready for events, within the handshake's time. */
static int wait_for(int sock, short events, const struct timespec *start)
{
	struct pollfd p = { .fd = sock, .events = events };
	long left = ms_left(start);
	int r;

	if (left <= 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	r = poll(&p, 1, (int)left);
	if (r == 0)
		errno = ETIMEDOUT;
	return r > 0 ? 0 : -1;
}

/*
 * The request, then the reply one byte at a time: what follows the OK line is the
 * guest's data and must stay in the socket for the program.  Works on blocking and
 * non-blocking sockets alike; the program's connect() returns when it is done.
 */
int fc_handshake(int sock, const struct other_target *t)
{
	char request[32], reply[128];
	size_t sent = 0, got = 0;
	int len = snprintf(request, sizeof(request), "CONNECT %u\n", t->fc_port);
	struct timespec start;

	clock_gettime(CLOCK_MONOTONIC, &start);
	while (sent < (size_t)len) {
		ssize_t n = write(sock, request + sent, (size_t)len - sent);

		if (n > 0)
			sent += (size_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		else if (n < 0 && wait_for(sock, POLLOUT, &start))
			return -1;
	}
	while (got < sizeof(reply) - 1) {
		ssize_t n = read(sock, reply + got, 1);

		if (n == 0) {
			errno = ECONNREFUSED; /* the multiplexer hung up: no such port */
			break;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		if (n < 0) {
			if (wait_for(sock, POLLIN, &start))
				return -1;
			continue;
		}
		if (reply[got++] == '\n')
			break;
	}
	reply[got] = 0;
	if (got >= 4 && !memcmp(reply, "OK ", 3) && reply[got - 1] == '\n')
		return 0;
	if (got)
		ulog(LOG_WARN_, "multiplexer refused port %u: %.*s", t->fc_port,
		     (int)strcspn(reply, "\n"), reply);
	errno = ECONNREFUSED;
	return -1;
}

void other_describe(const struct other_target *t, char *buf, size_t size)
{
	const struct sockaddr_vm *vm = (const struct sockaddr_vm *)&t->addr;
	const struct sockaddr_tipc *tp = (const struct sockaddr_tipc *)&t->addr;

	if (t->fc)
		snprintf(buf, size, "port %u through multiplexer %s", t->fc_port,
			 ((const struct sockaddr_un *)&t->addr)->sun_path);
	else if (t->family == AF_VSOCK)
		snprintf(buf, size, "vsock cid %u port %u", vm->svm_cid, vm->svm_port);
	else if (t->family == AF_TIPC)
		snprintf(buf, size, "tipc addrtype %u scope %d %u:%u:%u", tp->addrtype,
			 tp->scope, tp->addr.nameseq.type, tp->addr.nameseq.lower,
			 tp->addr.nameseq.upper);
	else
		snprintf(buf, size, "family %d", t->family);
}
