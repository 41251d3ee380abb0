/*
 * Log lines go to stderr as "unixify[pid]: message".  When stderr is a socket (as under
 * journald) they carry a syslog priority prefix instead, so the journal files them at
 * the right level.  One write(2) per line; no allocation.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"

int log_verbosity;
static int stderr_is_socket;

void log_init(void)
{
	const char *v = getenv("UNIXIFY_VERBOSE");
	struct stat st;
	int saved = errno;

	log_verbosity = v && *v >= '0' && *v <= '9' ? atoi(v) : LOG_WARN_;
	stderr_is_socket = fstat(2, &st) == 0 && S_ISSOCK(st.st_mode);
	errno = saved;
}

void ulog(int level, const char *fmt, ...)
{
	static const int syslog_prio[] = { 3, 4, 6, 7 };
	char buf[768];
	int n, m;
	va_list ap;
	int saved = errno;

	if (level > log_verbosity)
		return;
	if (stderr_is_socket)
		n = snprintf(buf, sizeof(buf), "<%d>unixify[%d]: ", syslog_prio[level],
			     (int)getpid());
	else
		n = snprintf(buf, sizeof(buf), "unixify[%d]: ", (int)getpid());
	va_start(ap, fmt);
	m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(2, buf, n) < 0) {
		/* nowhere left to report it */
	}
	errno = saved;
}
