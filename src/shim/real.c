/* The libc functions we interpose, as found further down the link chain. */
#include <dlfcn.h>
#include <stddef.h>

#include "shim.h"

struct real_funcs real;

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

void real_init(void)
{
	struct real_funcs r;

	r.socket = next("socket");
	r.bind = next("bind");
	r.connect = next("connect");
	r.listen = next("listen");
	r.accept = next("accept");
	r.accept4 = next("accept4");
	r.getsockname = next("getsockname");
	r.getpeername = next("getpeername");
	r.setsockopt = next("setsockopt");
	r.getsockopt = next("getsockopt");
	r.sendto = next("sendto");
	r.sendmsg = next("sendmsg");
	r.sendmmsg = next("sendmmsg");
	r.recvfrom = next("recvfrom");
	r.recvfrom_chk = next("__recvfrom_chk");
	r.recvmsg = next("recvmsg");
	r.recvmmsg = next("recvmmsg");
	r.close = next("close");
	r.close_range = next("close_range");  /* glibc >= 2.34; may be NULL */
	r.dup = next("dup");
	r.dup2 = next("dup2");
	r.dup3 = next("dup3");
	r.fcntl = next("fcntl");
	r.epoll_ctl = next("epoll_ctl");
	r.execve = next("execve");
	r.execvpe = next("execvpe");
	r.fexecve = next("fexecve");
	r.execveat = next("execveat"); /* glibc >= 2.34; may be NULL */
	r.posix_spawn = next("posix_spawn");
	r.posix_spawnp = next("posix_spawnp");
	r.prctl = next("prctl");
	r.syscall = next("syscall");
	r.shutdown = next("shutdown");
	/* Concurrent first calls compute the same values; publishing a whole struct
	 * field by field is harmless because every field read is checked by REAL(). */
	real = r;
}
