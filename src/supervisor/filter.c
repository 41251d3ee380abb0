/*
 * The seccomp filter: which calls the supervisor decides.
 *
 * Notified: bind, connect and listen (they may open an IP port); getsockname,
 * getpeername (a converted socket answers in the family the program made it), accept
 * and accept4 when the program asks for the peer's address, setsockopt at the IP and
 * TCP levels (a converted socket takes them without an error), getsockopt of SO_DOMAIN
 * and SO_PROTOCOL (it answers as an IP socket); refused with a log line:
 * io_uring_setup (its CONNECT/BIND/LISTEN never pass seccomp), send calls with
 * MSG_FASTOPEN (an implicit TCP connect), every socket call of the i386 and x32 ABIs
 * (int 0x80 from a 64-bit program), and, when a rule would convert UDP, socket() of an
 * IP datagram socket.  Everything else, reads and writes included, never leaves the
 * kernel.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "supervisor.h"

struct features features;

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#else
#error "unixify-supervise: add this architecture's AUDIT_ARCH"
#endif

/* i386 numbers (arch/x86/entry/syscalls/syscall_32.tbl) a 64-bit x86 program can reach
 * with int 0x80: socketcall, the direct socket calls, sendmmsg, io_uring_setup. */
#define I386_SOCKETCALL 102
#define I386_SOCKET_FIRST 359
#define I386_SOCKET_LAST 373
#define I386_SENDMMSG 345
#define I386_IO_URING_SETUP 425

#define NOTIFY SECCOMP_RET_USER_NOTIF
#define ALLOW SECCOMP_RET_ALLOW
#define ARG_LO(i) (offsetof(struct seccomp_data, args[i]))
#define ARG_HI(i) (offsetof(struct seccomp_data, args[i]) + 4)

struct prog {
	struct sock_filter insn[160];
	unsigned n;
};

static void emit(struct prog *p, uint16_t code, uint32_t k, uint8_t jt, uint8_t jf)
{
	p->insn[p->n++] = (struct sock_filter)BPF_JUMP(code, k, jt, jf);
}

static void ret(struct prog *p, uint32_t what)
{
	emit(p, BPF_RET | BPF_K, what, 0, 0);
}

static void load(struct prog *p, uint32_t offset)
{
	emit(p, BPF_LD | BPF_W | BPF_ABS, offset, 0, 0);
}

/* nr always notifies. */
static void always(struct prog *p, uint32_t nr)
{
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1);
	ret(p, NOTIFY);
}

/* nr notifies when its pointer argument arg is not NULL. */
static void if_pointer(struct prog *p, uint32_t nr, int arg)
{
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 6);
	load(p, ARG_LO(arg));
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 3);
	load(p, ARG_HI(arg));
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1);
	ret(p, ALLOW);
	ret(p, NOTIFY);
}

/* nr notifies when its int argument arg has any of bits. */
static void if_flags(struct prog *p, uint32_t nr, int arg, uint32_t bits)
{
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4);
	load(p, ARG_LO(arg));
	emit(p, BPF_JMP | BPF_JSET | BPF_K, bits, 1, 0);
	ret(p, ALLOW);
	ret(p, NOTIFY);
}

/* setsockopt notifies at the IP, TCP and IPv6 levels. */
static void setsockopt_levels(struct prog *p)
{
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, __NR_setsockopt, 0, 6);
	load(p, ARG_LO(1));
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_IP, 3, 0);
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, 2, 0);
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_IPV6, 1, 0);
	ret(p, ALLOW);
	ret(p, NOTIFY);
}

/* getsockopt(SOL_SOCKET, SO_DOMAIN or SO_PROTOCOL) notifies: a converted socket answers
 * as the IP socket it stands for. */
static void getsockopt_family(struct prog *p)
{
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, __NR_getsockopt, 0, 7);
	load(p, ARG_LO(1));
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, SOL_SOCKET, 0, 4);
	load(p, ARG_LO(2));
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, SO_DOMAIN, 2, 0);
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, SO_PROTOCOL, 1, 0);
	ret(p, ALLOW);
	ret(p, NOTIFY);
}

/* socket(AF_INET or AF_INET6, SOCK_DGRAM...) notifies. */
static void ip_datagram_socket(struct prog *p)
{
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 8);
	load(p, ARG_LO(0));
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, AF_INET, 1, 0);
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 0, 4);
	load(p, ARG_LO(1));
	emit(p, BPF_ALU | BPF_AND | BPF_K, 0xf, 0, 0);
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, SOCK_DGRAM, 0, 1);
	ret(p, NOTIFY);
	ret(p, ALLOW);
}

static void native_calls(struct prog *p, int udp)
{
	load(p, offsetof(struct seccomp_data, nr));
#ifdef X32_BIT
	emit(p, BPF_JMP | BPF_JSET | BPF_K, X32_BIT, 0, 1);
	ret(p, NOTIFY);
#endif
	always(p, __NR_bind);
	always(p, __NR_connect);
	always(p, __NR_listen);
	always(p, __NR_getsockname);
	always(p, __NR_getpeername);
	always(p, __NR_io_uring_setup);
	if_pointer(p, __NR_accept, 1);
	if_pointer(p, __NR_accept4, 1);
	if_flags(p, __NR_sendto, 3, MSG_FASTOPEN);
	if_flags(p, __NR_sendmsg, 2, MSG_FASTOPEN);
	if_flags(p, __NR_sendmmsg, 3, MSG_FASTOPEN);
	setsockopt_levels(p);
	getsockopt_family(p);
	if (udp)
		ip_datagram_socket(p);
	ret(p, ALLOW);
}

/* Another architecture's calls: i386 socket calls and io_uring are refused, the rest
 * (which cannot reach a socket) pass. */
static void foreign_calls(struct prog *p)
{
#ifdef X32_BIT
	emit(p, BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 1, 0);
	ret(p, NOTIFY);
	load(p, offsetof(struct seccomp_data, nr));
	always(p, I386_SOCKETCALL);
	always(p, I386_SENDMMSG);
	always(p, I386_IO_URING_SETUP);
	emit(p, BPF_JMP | BPF_JGE | BPF_K, I386_SOCKET_FIRST, 0, 2);
	emit(p, BPF_JMP | BPF_JGT | BPF_K, I386_SOCKET_LAST, 1, 0);
	ret(p, NOTIFY);
	ret(p, ALLOW);
#else
	ret(p, NOTIFY);
#endif
}

int filter_native(const struct seccomp_data *d)
{
#ifdef X32_BIT
	return d->arch == NATIVE_ARCH && !(d->nr & X32_BIT);
#else
	return d->arch == NATIVE_ARCH;
#endif
}

const char *filter_call_name(const struct seccomp_data *d)
{
	if (!filter_native(d))
		return d->arch == NATIVE_ARCH ? "an x32 system call" : "an i386 system call";
	switch (d->nr) {
	case __NR_bind: return "bind";
	case __NR_connect: return "connect";
	case __NR_listen: return "listen";
	case __NR_getsockname: return "getsockname";
	case __NR_getpeername: return "getpeername";
	case __NR_accept: return "accept";
	case __NR_accept4: return "accept4";
	case __NR_sendto: return "sendto";
	case __NR_sendmsg: return "sendmsg";
	case __NR_sendmmsg: return "sendmmsg";
	case __NR_setsockopt: return "setsockopt";
	case __NR_getsockopt: return "getsockopt";
	case __NR_socket: return "socket";
	case __NR_io_uring_setup: return "io_uring_setup";
	default: return "a system call";
	}
}

/* Linux >= 5.9: NOTIF_ADDFD with SETFD and POLLHUP on the listener. */
static int kernel_new_enough(void)
{
	struct utsname u;
	int major = 0, minor = 0;

	if (uname(&u) || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return 1; /* cannot tell: let the calls below say */
	if (major > 5 || (major == 5 && minor >= 9))
		return 1;
	ulog(LOG_ERR_, "the seccomp back end needs Linux 5.9 or later (seccomp ADDFD); this "
	     "kernel is %s; use --backend=preload for programs the shim can reach",
	     u.release);
	return 0;
}

int filter_install(int udp)
{
	struct prog p = { .n = 0 };
	struct sock_fprog fprog;
	unsigned native_start;
	int fd;

	if (!kernel_new_enough())
		return -1;
	load(&p, offsetof(struct seccomp_data, arch));
	emit(&p, BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 0, 0);
	native_start = p.n;
	native_calls(&p, udp);
	p.insn[native_start - 1].jf = (uint8_t)(p.n - native_start);
	foreign_calls(&p);
	fprog.len = (unsigned short)p.n;
	fprog.filter = p.insn;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
		ulog(LOG_ERR_, "cannot set no_new_privs: %s", strerror(errno));
		return -1;
	}
	/* SPEC_ALLOW: the filter is no sandbox, so the speculation mitigations the kernel
	 * may force on filtered tasks (SSBD, STIBP) would only cost the program time. */
	fd = (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER,
			  SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_SPEC_ALLOW,
			  &fprog);
	if (fd < 0)
		ulog(LOG_ERR_, "cannot install the seccomp filter (%s); the kernel needs "
		     "CONFIG_SECCOMP_FILTER and user notification (Linux 5.9 or later)",
		     strerror(errno));
	return fd;
}
