/*
 * Datagram sockets after conversion.
 *
 * A stream socket is connected once and its data path needs nothing from us.  A
 * datagram socket names its peer in every sendto() and learns it in every recvfrom(), so
 * those calls translate addresses: IP destinations go to the Unix address a rule (or an
 * earlier datagram) names, and Unix senders are reported as the IP stand-ins of
 * peers.c.  recv(), send() and read()/write() on connected sockets still go straight to
 * the kernel.
 *
 * A converted client needs an address of its own, or the server could not reply: it is
 * bound to an autobound abstract name, which any local server can answer as it could
 * answer a UDP port.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "shim.h"

#define RECV_BATCH 32
#define CRED_SPACE CMSG_SPACE(sizeof(struct ucred))
#define CTL_SLOT 128 /* a program's control buffer up to CTL_SLOT - CRED_SPACE is copied */
#define NO_UID ((uid_t)-1)

/*
 * An autobound abstract address (man 7 unix): the kernel picks a free name in this
 * network namespace, as it picks an ephemeral UDP port, and drops it with the socket.
 * Any process here may send to it, whoever it runs as, and there is no file to clean up.
 */
int dgram_autobind(int sock)
{
	sa_family_t family = AF_UNIX;

	return REAL(bind)(sock, (struct sockaddr *)&family, sizeof(family));
}

/*
 * Where a datagram to a goes from a socket that is a Unix socket now: the Unix address
 * of a known peer, or of the rule that matches a.  0 with sun set, or -1 with errno.
 */
static int resolve(int fd, const struct ipaddr *a, struct sockaddr_un *sun, socklen_t *len)
{
	struct sock_query q = { .dir = DIR_OUT, .type = SOCK_DGRAM, .addr = a };
	char text[INET6_ADDRSTRLEN];
	int r = peers_to_unix(a, sun, len);

	if (r == 0)
		return 0;
	ipaddr_format(a, text, sizeof(text));
	if (r == 1) {
		ulog(LOG_WARN_, "fd %d: cannot send to %s port %u: that peer is a Unix datagram "
		     "socket without an address, which cannot be replied to", fd, text,
		     ipaddr_port(a));
		errno = EDESTADDRREQ;
		return -1;
	}
	r = rule_target(fd, &q, sun, len);
	if (r > 0) {
		ulog(LOG_WARN_, "fd %d: no rule converts datagrams to %s port %u, and this "
		     "socket is a Unix socket now", fd, text, ipaddr_port(a));
		errno = ENETUNREACH;
	}
	return r ? -1 : 0;
}

static size_t iov_total(const struct msghdr *msg)
{
	size_t n = 0;

	for (size_t i = 0; i < (size_t)msg->msg_iovlen; i++)
		n += msg->msg_iov[i].iov_len;
	return n;
}

ssize_t dgram_sendmsg(int fd, const struct fd_entry *e, const struct msghdr *msg, int flags)
{
	struct sockaddr_un sun;
	struct msghdr copy;
	struct ipaddr a;
	socklen_t len;
	ssize_t r;
	int saved = errno;

	if (ipaddr_for_socket(&a, msg->msg_name, msg->msg_namelen, e->family, SOCK_DGRAM,
			      CALL_SEND) || a.sa.sa_family != e->family)
		return REAL(sendmsg)(fd, msg, flags);
	if (e->kind == FD_IP) {
		struct sock_query q = { .dir = DIR_OUT, .type = SOCK_DGRAM, .addr = &a };

		r = rule_target(fd, &q, &sun, &len);
		if (r > 0)
			return REAL(sendmsg)(fd, msg, flags);
		if (r < 0 || convert_sender(fd, e))
			return -1;
		peers_remember(&sun, len, &a);
	} else if (resolve(fd, &a, &sun, &len)) {
		return -1;
	}
	copy = *msg;
	copy.msg_name = &sun;
	copy.msg_namelen = len;
	r = REAL(sendmsg)(fd, &copy, flags);
	if (r < 0 && (errno == ECONNREFUSED || errno == ENOENT) && e->role != ROLE_CLIENT) {
		/* UDP drops a datagram nobody listens for without telling the sender */
		ulog(LOG_DEBUG_, "fd %d: nobody listens at %s; datagram dropped", fd,
		     sun.sun_path[0] ? sun.sun_path : "(abstract)");
		errno = saved;
		return (ssize_t)iov_total(msg);
	}
	return r;
}

int dgram_connect(int fd, const struct ipaddr *a)
{
	struct sockaddr_un sun;
	struct fd_entry *e;
	socklen_t len;

	if (resolve(fd, a, &sun, &len) || REAL(connect)(fd, (struct sockaddr *)&sun, len))
		return -1;
	state_lock(); /* this fd's entry only */
	if ((e = fd_get(fd, 0)) != NULL) {
		e->role = ROLE_CLIENT;
		e->peer = *a;
	}
	state_unlock();
	return 0;
}

/*
 * Is the sender of a datagram from the Unix path of a destination the program sent to
 * really the socket there?  A path names a file in our mount namespace only: another
 * user may bind the same path in a mount namespace of its own (unshare -Urm, a tmpfs
 * over the directory) and, sharing the network namespace, send to our autobound
 * address.  UDP would never let it pass for the server's address, so its credentials
 * (SO_PASSCRED, which it cannot forge) must be root's, ours, or those of the owner of
 * the socket file at that path here.  An abstract name is per network namespace, like
 * a port, and needs no check.
 */
static int sender_genuine(const struct fd_entry *e, const struct sockaddr_un *sun,
			  socklen_t len, uid_t uid)
{
	char path[sizeof(sun->sun_path) + 1];
	size_t n = len > offsetof(struct sockaddr_un, sun_path)
			   ? len - offsetof(struct sockaddr_un, sun_path) : 0;
	struct stat st;

	if (!n || !sun->sun_path[0])
		return 1;
	if (!(e->auth & AUTH_CHECK) || uid == NO_UID)
		return 0; /* nothing tells who sent it */
	if (uid == 0 || uid == geteuid())
		return 1;
	if (n > sizeof(sun->sun_path))
		n = sizeof(sun->sun_path);
	memcpy(path, sun->sun_path, n);
	path[n] = 0;
	return lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_uid == uid;
}

/* Tell the program who sent a datagram: the IP stand-in for the Unix sender; uid is the
 * sender's (NO_UID if unknown).  A sender that would pass for a destination without
 * being the socket there is reported as an unknown one: a reply is matched by its
 * source address (a resolver's, say), and so ignored. */
static void report_sender(int fd, const struct fd_entry *e, const struct sockaddr_un *sun,
			  socklen_t sunlen, uid_t uid, struct sockaddr *addr, socklen_t *alen)
{
	struct ipaddr ip;
	int saved = errno, r;

	if (e->role == ROLE_CLIENT) /* a connected socket hears only from its peer */
		ip = e->peer;
	else if ((r = peers_to_ip(sun, sunlen, e->family, &ip)) < 0)
		ipaddr_loopback(&ip, e->family);
	else if (r == 1 && !sender_genuine(e, sun, sunlen, uid)) {
		skip_log("fd %d: a datagram from %.108s, not sent by root, us or the owner of "
			 "that socket file, is reported as from an unknown sender", fd,
			 sun->sun_path);
		if (peers_unknown(e->family, &ip))
			ipaddr_loopback(&ip, e->family);
	}
	copy_out_addr(&ip, ipaddr_len(&ip), addr, alen);
	errno = saved;
}

int dgram_check_senders(int sock, struct fd_entry *e)
{
	int on = 1, was = 0;
	socklen_t len = sizeof(was);

	/* the program's own SO_PASSCRED came along with its options */
	if (REAL(getsockopt)(sock, SOL_SOCKET, SO_PASSCRED, &was, &len) ||
	    REAL(setsockopt)(sock, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)))
		return -1;
	e->auth = (uint8_t)(AUTH_CHECK | (was ? AUTH_WANTED : 0));
	return 0;
}

int dgram_passcred_set(int fd, const void *val, socklen_t len)
{
	struct fd_entry *e;
	int on, r = 1;

	if (!fd_tracked(fd))
		return 1;
	state_lock(); /* this fd's entry only */
	e = fd_get(fd, 0);
	if (e && e->auth & AUTH_CHECK) {
		r = -1;
		if (!val || len < sizeof(int)) {
			errno = val ? EINVAL : EFAULT;
		} else {
			memcpy(&on, val, sizeof(on));
			e->auth = (uint8_t)(on ? e->auth | AUTH_WANTED : e->auth & ~AUTH_WANTED);
			r = 0;
		}
	}
	state_unlock();
	return r;
}

/*
 * A socket checking its senders gets their credentials in every datagram, which the
 * program must see only if it asked for them.  The kernel gets a control buffer of our
 * own, the program's size plus room for them, and the rest is copied to the program's
 * (a program's buffer larger than CTL_SLOT is used in place, one credentials message
 * less of it for the rest).
 */
struct ctl_slot {
	union {
		struct cmsghdr align;
		char buf[CTL_SLOT];
	} u;
	void *control; /* the program's */
	size_t cap;
};

static void ctl_prepare(const struct fd_entry *e, struct msghdr *h, struct ctl_slot *s)
{
	s->control = h->msg_control;
	s->cap = h->msg_control ? h->msg_controllen : 0;
	if (!(e->auth & AUTH_CHECK) || s->cap + CRED_SPACE > sizeof(s->u.buf))
		return;
	h->msg_control = s->u.buf;
	h->msg_controllen = s->cap + CRED_SPACE;
}

/* Descriptors passed in a message the program has no room for, as the kernel would. */
static void close_passed(const struct cmsghdr *c)
{
	size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
	int fd;

	if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
		return;
	for (size_t i = 0; i < n; i++) {
		memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		REAL(close)(fd);
	}
}

/* After the kernel filled h (prepared by ctl_prepare): the sender's uid, NO_UID if none
 * came; the program's control buffer holds the rest of what came, as it asked. */
static uid_t ctl_finish(const struct fd_entry *e, struct msghdr *h, struct ctl_slot *s)
{
	char *from = h->msg_control, *to = s->control;
	size_t used = h->msg_control ? h->msg_controllen : 0, out = 0, off = 0;
	uid_t uid = NO_UID;

	if (!(e->auth & AUTH_CHECK))
		return NO_UID;
	while (off + sizeof(struct cmsghdr) <= used) {
		struct cmsghdr *c = (struct cmsghdr *)(from + off);
		size_t len = c->cmsg_len, next = off + CMSG_ALIGN(len);
		int creds = c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS;

		if (len < sizeof(struct cmsghdr) || len > used - off)
			break;
		if (creds && len >= CMSG_LEN(sizeof(struct ucred))) {
			struct ucred u;

			memcpy(&u, CMSG_DATA(c), sizeof(u));
			uid = u.uid;
		}
		if (!creds || e->auth & AUTH_WANTED) {
			if (out + len > s->cap) {
				h->msg_flags |= MSG_CTRUNC;
				close_passed(c);
			} else {
				memmove(to + out, c, len);
				out += CMSG_ALIGN(len) < s->cap - out ? CMSG_ALIGN(len) : s->cap - out;
			}
		}
		off = next;
	}
	h->msg_control = s->control;
	h->msg_controllen = out;
	return uid;
}

static int option_on(int fd, const struct fd_entry *e, int level, int name)
{
	struct pending_opt o;
	int value = 0;

	if (fd_option(fd, e, level, name, &o) == 0 && o.len >= sizeof(int))
		memcpy(&value, o.value, sizeof(int)); /* value[] is not int-aligned */
	return value != 0;
}

/*
 * Servers bound to a wildcard address learn which local address a datagram came in on
 * from IP_PKTINFO / IPV6_PKTINFO, and drop datagrams without it.  A Unix socket has no
 * such thing, so we say what a local datagram on loopback would say.  cap is the
 * control buffer's size; msg_controllen is what the kernel used of it.
 */
static void add_pktinfo(int fd, const struct fd_entry *e, struct msghdr *msg, size_t cap)
{
	int v6 = e->family == AF_INET6;
	size_t room = v6 ? CMSG_SPACE(sizeof(struct in6_pktinfo))
			 : CMSG_SPACE(sizeof(struct in_pktinfo));
	size_t used = CMSG_ALIGN(msg->msg_controllen);
	struct ipaddr local = e->local;
	struct cmsghdr *c;

	if (!(v6 ? option_on(fd, e, IPPROTO_IPV6, IPV6_RECVPKTINFO)
		 : option_on(fd, e, IPPROTO_IP, IP_PKTINFO)))
		return;
	if (!msg->msg_control || used + room > cap) {
		msg->msg_flags |= MSG_CTRUNC;
		return;
	}
	if (ipaddr_is_any(&local))
		ipaddr_loopback(&local, e->family);
	c = (struct cmsghdr *)((char *)msg->msg_control + used);
	memset(c, 0, room);
	if (v6) {
		struct in6_pktinfo pi = { .ipi6_addr = local.in6.sin6_addr, .ipi6_ifindex = 1 };

		c->cmsg_level = IPPROTO_IPV6;
		c->cmsg_type = IPV6_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
	} else {
		struct in_pktinfo pi = { .ipi_ifindex = 1, .ipi_spec_dst = local.in4.sin_addr,
					 .ipi_addr = local.in4.sin_addr };

		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = IP_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
	}
	msg->msg_controllen = used + room;
}

/* A converted socket, about which recvfrom/recvmsg must translate the sender. */
static int translating(int fd, struct fd_entry *e)
{
	if (!fd_tracked(fd))
		return 0;
	fd_snapshot(fd, e);
	return e->kind == FD_CONVERTED;
}

API ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr,
		     socklen_t *alen)
{
	struct sockaddr_un sun;
	struct iovec iov = { .iov_base = buf, .iov_len = n };
	struct msghdr m = { .msg_name = &sun, .msg_namelen = sizeof(sun), .msg_iov = &iov,
			    .msg_iovlen = 1 };
	struct ctl_slot slot;
	struct fd_entry e;
	ssize_t r;

	if (!addr || !alen || !translating(fd, &e))
		return REAL(recvfrom)(fd, buf, n, flags, addr, alen);
	if (e.type != SOCK_DGRAM) {
		/* TCP reports no sender; a Unix stream socket would report its path */
		r = REAL(recvfrom)(fd, buf, n, flags, NULL, NULL);
		if (r >= 0)
			*alen = 0;
		return r;
	}
	ctl_prepare(&e, &m, &slot);
	r = REAL(recvmsg)(fd, &m, flags);
	if (r >= 0)
		report_sender(fd, &e, &sun, m.msg_namelen, ctl_finish(&e, &m, &slot), addr, alen);
	return r;
}

/* Fortified builds call this instead of recvfrom; glibc's own goes around us. */
API ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
			   struct sockaddr *addr, socklen_t *alen);
API ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
			   struct sockaddr *addr, socklen_t *alen)
{
	if (n > buflen) /* let libc report the overflow */
		return REAL(recvfrom_chk)(fd, buf, n, buflen, flags, addr, alen);
	return recvfrom(fd, buf, n, flags, addr, alen);
}

/* r from receiving msg: the sockets it carries are looked at. */
static ssize_t received(ssize_t r, struct msghdr *msg)
{
	if (r >= 0 && msg && msg->msg_control)
		passfd_received(msg);
	return r;
}

API ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	struct sockaddr_un sun;
	struct ctl_slot slot;
	struct msghdr copy;
	struct fd_entry e;
	ssize_t r;
	uid_t uid;

	if (!msg || (!msg->msg_name && !msg->msg_control) || !translating(fd, &e))
		return received(REAL(recvmsg)(fd, msg, flags), msg);
	copy = *msg;
	copy.msg_name = msg->msg_name && e.type == SOCK_DGRAM ? &sun : NULL;
	copy.msg_namelen = copy.msg_name ? sizeof(sun) : 0;
	if (e.type == SOCK_DGRAM)
		ctl_prepare(&e, &copy, &slot);
	r = REAL(recvmsg)(fd, &copy, flags);
	if (r < 0)
		return r;
	if (e.type == SOCK_DGRAM) {
		uid = ctl_finish(&e, &copy, &slot);
		if (msg->msg_name)
			report_sender(fd, &e, &sun, copy.msg_namelen, uid, msg->msg_name,
				      &msg->msg_namelen);
		add_pktinfo(fd, &e, &copy, msg->msg_controllen);
	} else {
		msg->msg_namelen = 0;
	}
	msg->msg_flags = copy.msg_flags;
	msg->msg_controllen = copy.msg_controllen;
	return received(r, msg);
}

/* At most RECV_BATCH at a time: recvmmsg may always return fewer than asked for. */
API int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags,
		 struct timespec *timeout)
{
	struct sockaddr_un names[RECV_BATCH];
	struct ctl_slot slots[RECV_BATCH];
	void *orig[RECV_BATCH];
	socklen_t origlen[RECV_BATCH];
	size_t cap[RECV_BATCH];
	struct fd_entry e;
	int r;

	if (!vec || !translating(fd, &e)) {
		r = REAL(recvmmsg)(fd, vec, vlen, flags, timeout);
		for (int i = 0; i < r; i++)
			received(0, &vec[i].msg_hdr);
		return r;
	}
	if (vlen > RECV_BATCH)
		vlen = RECV_BATCH;
	for (unsigned i = 0; i < vlen; i++) {
		struct msghdr *h = &vec[i].msg_hdr;

		orig[i] = h->msg_name;
		origlen[i] = h->msg_namelen;
		cap[i] = h->msg_controllen;
		h->msg_name = orig[i] && e.type == SOCK_DGRAM ? &names[i] : NULL;
		h->msg_namelen = h->msg_name ? sizeof(names[i]) : 0;
		if (e.type == SOCK_DGRAM)
			ctl_prepare(&e, h, &slots[i]);
	}
	r = REAL(recvmmsg)(fd, vec, vlen, flags, timeout);
	for (unsigned i = 0; i < vlen; i++) {
		struct msghdr *h = &vec[i].msg_hdr;
		socklen_t got = h->msg_namelen;
		uid_t uid = NO_UID;

		h->msg_name = orig[i];
		h->msg_namelen = origlen[i];
		if (e.type == SOCK_DGRAM && (int)i >= r) {
			h->msg_control = slots[i].control;
			h->msg_controllen = cap[i];
		} else if (e.type == SOCK_DGRAM) {
			uid = ctl_finish(&e, h, &slots[i]);
		}
		if ((int)i >= r)
			continue;
		received(0, h);
		if (e.type != SOCK_DGRAM) {
			h->msg_namelen = 0;
			continue;
		}
		if (orig[i])
			report_sender(fd, &e, &names[i], got, uid, orig[i], &h->msg_namelen);
		add_pktinfo(fd, &e, h, cap[i]);
	}
	return r;
}

/* Does some message name an IP destination, making fd (unknown to us) one we track? */
static int sends_to_ip(int fd, const struct mmsghdr *vec, unsigned vlen)
{
	for (unsigned i = 0; i < vlen; i++) {
		if (tracked_for_send(fd, vec[i].msg_hdr.msg_name, vec[i].msg_hdr.msg_namelen))
			return 1;
	}
	return 0;
}

/* One message at a time through sendmsg(), which knows where each one goes. */
API int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
	struct fd_entry e;
	unsigned i;

	rules_need();
	for (i = 0; vec && i < vlen; i++)
		if (vec[i].msg_hdr.msg_controllen && passfd_sending(&vec[i].msg_hdr))
			return -1; /* nothing sent yet */
	if (!vec || (!fd_tracked(fd) && !sends_to_ip(fd, vec, vlen)))
		return REAL(sendmmsg)(fd, vec, vlen, flags);
	fd_snapshot(fd, &e);
	if (claim_refuses(&e, DIR_IN)) /* sending would bind it to an IP port */
		return -1;
	/* a datagram's destination, or a TCP Fast Open connect, is for the rules to judge */
	if (e.kind != FD_CONVERTED && !((e.kind == FD_IP || e.kind == FD_PENDING) &&
					(e.type == SOCK_DGRAM || flags & MSG_FASTOPEN)))
		return REAL(sendmmsg)(fd, vec, vlen, flags);
	for (i = 0; i < vlen; i++) {
		ssize_t r = sendmsg(fd, &vec[i].msg_hdr, flags);

		if (r < 0)
			return i ? (int)i : -1;
		vec[i].msg_len = (unsigned)r;
	}
	return (int)i;
}
