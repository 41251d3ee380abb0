/*
 * The program's own sandbox.  A program that installs a seccomp filter (sshd's
 * pre-authentication child, browsers' renderers, ...) allows itself only the system
 * calls it needs, and its filter may kill the process on any other.  Our bookkeeping
 * must never be that other call: once the program installs a filter, this process and
 * its forked children (which inherit the filter) make no bookkeeping call beyond what
 * the program's own call needs -- no sock_diag, no probe sockets, no exit cleanup.
 * Work that needs such calls is done just before the filter goes in (sockopt_learn), or
 * left to a process outside the sandbox (sockfile.c).
 *
 * A filter is installed through prctl(PR_SET_SECCOMP) or the seccomp system call, which
 * glibc has no wrapper for (libseccomp uses syscall(SYS_seccomp)).  The process counts
 * as sandboxed from the attempt on, whatever its outcome.  A filter inherited across
 * exec is not seen: the new image starts without knowing it.
 */
#include <linux/seccomp.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shim.h"

int shim_sandboxed;

/* The filter is about to go in: do now what needs system calls, then stop making any. */
static void entering(void)
{
	if (__atomic_load_n(&shim_started, __ATOMIC_ACQUIRE) == SHIM_STARTED &&
	    rules_state != RULES_NONE)
		sockopt_learn();
	__atomic_store_n(&shim_sandboxed, 1, __ATOMIC_RELEASE);
}

API int prctl(int option, ...)
{
	unsigned long a[4];
	va_list ap;

	va_start(ap, option);
	for (int i = 0; i < 4; i++)
		a[i] = va_arg(ap, unsigned long);
	va_end(ap);
	if (option == PR_SET_SECCOMP)
		entering();
	return REAL(prctl)(option, a[0], a[1], a[2], a[3]);
}

API long syscall(long number, ...)
{
	long a[6];
	va_list ap;

	va_start(ap, number);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	if (number == SYS_seccomp &&
	    (a[0] == SECCOMP_SET_MODE_STRICT || a[0] == SECCOMP_SET_MODE_FILTER))
		entering();
	return REAL(syscall)(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
