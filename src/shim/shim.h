/*
 * unixify shim: internal interfaces.
 *
 * The shim is LD_PRELOADed into arbitrary programs.  It interposes only socket setup
 * calls; once a socket is converted, data never passes through this code.  Everything
 * here is hidden except the interposed libc functions (see interpose.c).
 */
#ifndef UNIXIFY_SHIM_H
#define UNIXIFY_SHIM_H

#include <netinet/in.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>

#define API __attribute__((visibility("default")))
#define UNUSED __attribute__((unused))

/* ---- real libc functions (real.c) ---- */
struct real_funcs {
	int (*socket)(int, int, int);
	int (*bind)(int, const struct sockaddr *, socklen_t);
	int (*connect)(int, const struct sockaddr *, socklen_t);
	int (*listen)(int, int);
	int (*accept)(int, struct sockaddr *, socklen_t *);
	int (*accept4)(int, struct sockaddr *, socklen_t *, int);
	int (*getsockname)(int, struct sockaddr *, socklen_t *);
	int (*getpeername)(int, struct sockaddr *, socklen_t *);
	int (*setsockopt)(int, int, int, const void *, socklen_t);
	int (*getsockopt)(int, int, int, void *, socklen_t *);
	ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
	ssize_t (*sendmsg)(int, const struct msghdr *, int);
	int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
	ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
	ssize_t (*recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *,
				socklen_t *);
	ssize_t (*recvmsg)(int, struct msghdr *, int);
	int (*recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
	int (*close)(int);
	int (*close_range)(unsigned int, unsigned int, int);
	int (*dup)(int);
	int (*dup2)(int, int);
	int (*dup3)(int, int, int);
	int (*fcntl)(int, int, ...);
	int (*epoll_ctl)(int, int, int, struct epoll_event *);
	int (*execve)(const char *, char *const[], char *const[]);
	int (*execvpe)(const char *, char *const[], char *const[]);
	int (*fexecve)(int, char *const[], char *const[]);
	int (*execveat)(int, const char *, char *const[], char *const[], int); /* may be NULL */
	int (*posix_spawn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
			   const posix_spawnattr_t *, char *const[], char *const[]);
	int (*posix_spawnp)(pid_t *, const char *, const posix_spawn_file_actions_t *,
			    const posix_spawnattr_t *, char *const[], char *const[]);
	int (*prctl)(int, ...);
	long (*syscall)(long, ...);
	int (*shutdown)(int, int);
};
extern struct real_funcs real;
void real_init(void);
#define REAL(fn) (real.fn ? real.fn : (real_init(), real.fn))

/* ---- the program's own sandbox (sandbox.c) ---- */
/* Set once the program installed a seccomp filter (inherited by forked children): from
 * then on no bookkeeping system call beyond what the program's own call needs. */
extern int shim_sandboxed;
static inline int sandboxed(void)
{
	return __atomic_load_n(&shim_sandboxed, __ATOMIC_ACQUIRE);
}

/* ---- logging (log.c) ---- */
enum { LOG_ERR_ = 0, LOG_WARN_ = 1, LOG_INFO_ = 2, LOG_DEBUG_ = 3 };
extern int log_verbosity;
void log_init(void);
void ulog(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A warning (fmt takes fd, then why) at most once a second, whoever triggers it. */
void skip_log(const char *fmt, int fd, const char *why);

/* ---- memory from mmap that grows (mem.c) ---- */
/* old (old_size bytes, or NULL) resized to at least new_size bytes, contents kept; the
 * mapping's size in *size.  NULL with old untouched when the kernel refuses. */
void *map_resize(void *old, size_t old_size, size_t new_size, size_t *size);
/* A list of items that grows as they are added; zero-initialised is empty. */
struct growbuf {
	char *data;
	size_t len, cap;
	int failed; /* an item was lost for want of memory */
};
int growbuf_add(struct growbuf *b, const void *item, size_t size);
void growbuf_free(struct growbuf *b);

/* ---- IP addresses as the program sees them (addr.c) ---- */
struct ipaddr {
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
	};
};
socklen_t ipaddr_len(const struct ipaddr *a);
int ipaddr_from_sockaddr(struct ipaddr *out, const struct sockaddr *sa, socklen_t len);
enum ip_call { CALL_BIND, CALL_CONNECT, CALL_SEND };
/* The IP address sa names in call on a socket of family and type, as the kernel reads
 * it (AF_UNSPEC for AF_INET, AF_INET as IPv4-mapped): 0 with out set, or -1. */
int ipaddr_for_socket(struct ipaddr *out, const struct sockaddr *sa, socklen_t len,
		      int family, int type, enum ip_call call);
uint16_t ipaddr_port(const struct ipaddr *a);
void ipaddr_set_port(struct ipaddr *a, uint16_t port);
void ipaddr_any(struct ipaddr *a, int family);
void ipaddr_loopback(struct ipaddr *a, int family);
/* Loopback of family; the IPv4-mapped one (::ffff:127.0.0.1) when model is IPv4-mapped. */
void ipaddr_loopback_like(struct ipaddr *a, int family, const struct ipaddr *model);
int ipaddr_is_any(const struct ipaddr *a);
const uint8_t *ipaddr_bytes(const struct ipaddr *a, int *v4); /* v4-mapped -> 4 bytes */
void ipaddr_format(const struct ipaddr *a, char *buf, size_t size);
/* a as the IPv4-mapped IPv6 address of v4, with port (network byte order). */
void v4_mapped(struct ipaddr *a, struct in_addr v4, uint16_t port);
uint16_t fake_port(void);
/* Number ports in a page shared with the processes forked from now on (a server's
 * workers): called when a listener is converted. */
void fake_port_share(void);
int copy_out_addr(const void *src, socklen_t srclen, struct sockaddr *dst, socklen_t *dstlen);
struct rule;
/* The Unix address for a path= or abstract= rule's expanded target: its length, or -1
 * with errno ENAMETOOLONG when it does not fit. */
int unix_addr_fill(struct sockaddr_un *sun, const struct rule *r, const char *name);
int unix_path_fill(struct sockaddr_un *sun, const char *path);

/* Is a (IPv4-mapped counts as IPv4) inside the prefix of len bits at net (4 bytes when
 * v4, else 16)? */
int ipaddr_in_prefix(const struct ipaddr *a, const uint8_t *net, int v4, unsigned len);
/* Expand %p %a %t %% of tmpl for a (NULL: "unknown") and socket type into out; -1 with
 * errno ENAMETOOLONG if it does not fit, EINVAL on another placeholder. */
int ipaddr_expand(const char *tmpl, const struct ipaddr *a, int type, char *out, size_t size);

/* ---- the launcher's encodings, field by field (fields.c) ---- */
/* n_bytes from 2 * n_bytes lowercase hex digits; 0, or -1 on a bad digit. */
int hex_decode(const char *hex, size_t n_bytes, uint8_t *out);
struct field {
	char key;
	const char *value;
	size_t len;
};
/* The field at s[*pos] (KEY LENGTH ":" BYTES, LENGTH at most max_value), *pos moved past
 * it; -1 with *why set. */
int field_next(const char *s, size_t len, size_t *pos, size_t max_value, struct field *f,
	       const char **why);
/* A decimal in [0, max] spanning exactly s[0..n). */
int field_uint(const char *s, size_t n, unsigned long max, unsigned long *out);
/* "HEX/LEN" (8 or 32 hex digits) into addr (16 bytes), *v4 and *len; "LOW-HIGH"
 * ports.  0, or -1. */
int field_prefix(const char *v, size_t n, uint8_t *addr, uint8_t *v4, uint8_t *len);
int field_ports(const char *v, size_t n, uint16_t *lo, uint16_t *hi);

/* ---- rules (rules.c) ---- */
enum rule_action { ACT_PATH = 1, ACT_ABSTRACT, ACT_REJECT, ACT_BLACKHOLE, ACT_IGNORE,
		   ACT_SYSTEMD, ACT_VSOCK, ACT_TIPC, ACT_FC, ACT_RECEIVE };
enum rule_dir { DIR_ANY = 0, DIR_IN, DIR_OUT };

struct rule {
	uint8_t action;
	uint8_t dir;
	uint8_t type;      /* 0 (any), SOCK_STREAM or SOCK_DGRAM */
	uint8_t noremove;
	uint8_t has_addr;
	uint8_t addr_v4;   /* address below is 4 bytes (IPv4) rather than 16 */
	uint8_t prefix;
	uint8_t has_ports;
	uint8_t family;    /* 0 (any), AF_INET or AF_INET6 */
	uint8_t n_numbers;
	uint32_t numbers[5]; /* vsock cid, port; tipc's five values; fc port; receive slot */
	uint8_t addr[16];
	uint16_t port_lo, port_hi;
	int reject_errno;
	int mode;                  /* socket file mode, or -1 */
	uid_t uid;                 /* socket file owner, or (uid_t)-1 */
	gid_t gid;                 /* socket file group, or (gid_t)-1 */
	const char *owner_name;    /* their names as the launcher knew them, or NULL */
	const char *group_name;
	const char *target;        /* path=, abstract= or receive=, unexpanded */
	const char *systemd_name;
	const char *from_unix;
	const char *from_abstract;
};

/* What a socket call is about, for matching: an IP address, or a Unix socket's path
 * or abstract name (from-unix / from-abstract rules). */
struct sock_query {
	int dir;
	int type;
	const struct ipaddr *addr;  /* NULL for a Unix socket */
	const char *unix_name;      /* NULL for an IP socket */
	int abstract;
};

/* RULES_LAZY: rules in a file, read at their first use (rules_need()). */
enum rules_state { RULES_NONE, RULES_OK, RULES_BROKEN, RULES_LAZY };
extern enum rules_state rules_state;
void rules_load(void);
/* The library's start-up, run once (interpose.c); shim_started says how far it is. */
enum { SHIM_STARTING = 1, SHIM_STARTED = 2 };
extern int shim_started;
void shim_start(void);
/* Call before looking at rules_state or the rules from a socket call. */
static inline void rules_need(void)
{
	if (__builtin_expect(__atomic_load_n(&shim_started, __ATOMIC_ACQUIRE) != SHIM_STARTED, 0))
		shim_start();
	if (__atomic_load_n(&rules_state, __ATOMIC_ACQUIRE) == RULES_LAZY)
		rules_load();
}
/* The size bytes of the rules file at path, checked as ours (rulefile.c), in memory
 * from mmap of size + 1 bytes; NULL with *why set. */
char *rulefile_read(const char *path, size_t size, const char **why);
/* A file we may act on what it says: owned by root or our euid, writable by nobody
 * else (a rules file, an unsock control file, their directories). */
int file_trusted(const struct stat *st);
/* What socket() of a stream socket makes, by [AF_INET6?]: PREDICT_NEVER an IP socket;
 * PREDICT_ALWAYS a pending Unix one (every outgoing connection converts); PREDICT_LEARN
 * what this process's recent connects suggest (predict_pending(), convert.c). */
enum { PREDICT_NEVER, PREDICT_ALWAYS, PREDICT_LEARN };
extern int predict_stream_out[2];
/* Some rule has the 'systemd' action; some rule matches Unix sockets. */
extern int rules_use_systemd, rules_use_unix;
void rules_init(void);
/* For rules made here rather than decoded (unsock.c, from rules_init() only): a fresh
 * rule at the end of the table, or NULL when full; a copy of s that lives as long as
 * the rules. */
struct rule *rules_append(void);
const char *rules_keep_string(const char *s);
/* The errno socket() must fail with for this family (AF_INET/AF_INET6) and type, or 0. */
int rules_refuse_socket(int family, int type);
/* Index of the first rule matching q, or -1. */
int rules_match(const struct sock_query *q);
/* Why rule r does not match q, the first condition that fails in this order (explain.py
 * names them by these numbers); MISS_NONE when it matches. */
enum rule_miss { MISS_NONE, MISS_UNIX_ONLY, MISS_IP_ONLY, MISS_DIR, MISS_SYSTEMD, MISS_TYPE,
		 MISS_FAMILY, MISS_UNIX_KIND, MISS_GLOB, MISS_ADDR, MISS_PORT };
enum rule_miss rule_mismatch(const struct rule *r, const struct sock_query *q);
/* A rule set apart from the process's own (match.c): NULL when text is malformed. */
struct ruleset;
struct ruleset *ruleset_decode(const char *text, size_t len);
int ruleset_match(const struct ruleset *s, const struct sock_query *q);
int ruleset_count(const struct ruleset *s);
const struct rule *ruleset_rule(const struct ruleset *s, int index);
void ruleset_free(struct ruleset *s);
const struct rule *rule_at(int index);
int rules_count(void);
/* Does r's path= or abstract= name the port (%p)? */
int rule_names_port(const struct rule *r);
/* Expand %p %a %t %% into out; -1 with errno ENAMETOOLONG if it does not fit. */
int rule_expand(const struct rule *r, const struct sock_query *q, char *out, size_t size);
/* The other way: the first path= (abstract= when abstract) rule for dir and type that
 * gives name, and the IP address it was given for (placeholders read back from name,
 * the rest from the rule's conditions; checked by expanding forward).  Its index with
 * out set, or -1. */
int rules_invert(int dir, int type, const char *name, int abstract, struct ipaddr *out);

/* Does path match a from-unix / from-abstract pattern?  (glob.c)  Patterns are at most
 * GLOB_MAX bytes (rules.py: GLOB_MAX); a longer one matches nothing. */
#define GLOB_MAX 1024
int glob_match(const char *pattern, const char *path);

/* ---- per-fd state (fdtable.c) ---- */
enum fd_kind {
	FD_NONE = 0,
	FD_IP,        /* an IP socket we may still convert */
	FD_CONVERTED, /* a Unix socket standing in for an IP socket */
	FD_PENDING,   /* a Unix socket made at socket() because the rules predict
			 conversion; becomes FD_CONVERTED, or an IP socket if wrong */
	FD_PASSED,    /* a socket passed by the service manager, kept for a rule */
	FD_REDIRECTED, /* the program's own Unix socket, bound where a rule said */
};
/* A converted datagram socket is a LISTENER when a rule bound it, a CLIENT while it is
 * connected, and NONE when it only sends to addresses it names.  A RECEIVER stands in
 * for a TCP listener (receive=): RECEIVING once the program listened, RECEIVER_SHUT
 * once it shut it down. */
enum fd_role { ROLE_NONE = 0, ROLE_LISTENER, ROLE_CLIENT, ROLE_ACCEPTED, ROLE_RECEIVER,
	       ROLE_RECEIVING, ROLE_RECEIVER_SHUT };

/* Where a socket we may convert is registered with epoll, and the IP- and TCP-level
 * options set on it: records keyed by epfd, and by level and name.  A few are kept in
 * the entry itself; more spill into a table beside it that grows (fdtable.c). */
#define INLINE_EPOLL_REGS 4
struct epoll_reg {
	int epfd;
	struct epoll_event ev;
};

#define INLINE_OPTS 8
struct pending_opt {
	int level, name;
	uint8_t len;
	uint8_t value[16];
};

enum fd_records { REC_EPOLL, REC_OPT };

struct fd_entry {
	uint8_t kind;
	uint8_t family;   /* AF_INET or AF_INET6, as the program created it */
	uint8_t type;     /* SOCK_STREAM or SOCK_DGRAM */
	uint8_t role;
	uint8_t n_epoll;  /* of epoll[] */
	uint8_t n_opts;   /* of opts[] */
	uint8_t claim_errno; /* a rule claimed this IP or pending socket and converting it
				failed with this errno: it must not bind implicitly */
	uint8_t claim_dir;   /* DIR_IN or DIR_OUT: which call the rule claimed */
	uint8_t paused;      /* a listener paused by connect(AF_UNSPEC), its file released */
	uint8_t auth;        /* AUTH_*: datagram senders' credentials (dgram.c) */
	int32_t sockfile; /* index into the socket file table, or -1 */
	uint32_t opts_set; /* SOL_SOCKET options the program set before conversion */
	uint32_t spill;   /* which spilled records at this fd number are ours, or 0 */
	struct ipaddr local;
	struct ipaddr peer;
	struct epoll_reg epoll[INLINE_EPOLL_REGS];
	struct pending_opt opts[INLINE_OPTS];
};

/* The one lock.  state_lock: for changes to one fd's entry; a signal handler on the
 * holder's thread goes on inside it.  state_lock_masked: for changes to what entries
 * share, with this thread's signals blocked until the unlock; state_mask_signals turns
 * a held lock into such a one.  Nesting is allowed. */
void state_lock(void);
void state_lock_masked(void);
void state_mask_signals(void);
void state_unlock(void);
int state_locked_here(void);
/* Cheap lock-free test: is anything recorded for fd? */
int fd_tracked(int fd);
/* With the lock held: the entry for fd, allocating it if create; NULL if impossible. */
struct fd_entry *fd_get(int fd, int create);
/* Copy of the entry (kind FD_NONE if none).  Takes the lock. */
void fd_snapshot(int fd, struct fd_entry *out);
/* Store a copy.  Takes the lock. */
void fd_store(int fd, const struct fd_entry *e);
/* Remove and return the entry.  Takes the lock. */
void fd_take(int fd, struct fd_entry *out);
/* Remove entries in [first, last]; add their socket files (ints) to sockfiles. */
void fd_take_range(unsigned first, unsigned last, struct growbuf *sockfiles);
void fd_entry_init(struct fd_entry *e);
/* With the lock held, e being fd's entry: the record of list whose key (epfd; level
 * and name) starts rec; put adds or replaces it, -1 with ENOMEM when it cannot be kept. */
void *fd_record_find(int fd, struct fd_entry *e, int list, const void *key);
int fd_record_put(int fd, struct fd_entry *e, int list, const void *rec);
void fd_record_del(int fd, struct fd_entry *e, int list, const void *key);
/* Store e for fd, its epoll registrations forgotten: they were the old socket's. */
void fd_store_no_epoll(int fd, struct fd_entry *e);
/* Copy from's options to to's entry (dup: registrations stay with the fd number). */
int fd_record_copy_opts(int from, const struct fd_entry *src, int to, struct fd_entry *dst);
/* Takes the lock: copy of record i of list for fd, whose entry e is a snapshot of; -1
 * past the last. */
int fd_record_at(int fd, const struct fd_entry *e, int list, unsigned i, void *out);
/* An IP-level option the program set, as it set it, into *out; -1 if none. */
int fd_option(int fd, const struct fd_entry *e, int level, int name, struct pending_opt *out);
/* An IP-level option the program never set on the converted socket e: what a real
 * socket of its family and type answers (sockopt.c); as getsockopt.  sockopt_learn asks
 * the real sockets now, before a sandbox forbids it. */
int sockopt_answer(const struct fd_entry *e, int level, int name, void *val, socklen_t *len);
/* Hand the option value (size bytes) to a buffer of *len bytes as the kernel does. */
void sockopt_copy_out(int level, const void *value, socklen_t size, void *val, socklen_t *len);
void sockopt_learn(void);
/* Call fn for every entry referencing sockfile; with the lock held. */
void fd_for_sockfile(int sockfile, void (*fn)(int fd, void *), void *arg);
/* Call fn for every fd with an entry; with the lock held. */
void fd_for_each(void (*fn)(int fd, const struct fd_entry *e, void *), void *arg);

/* ---- socket files (sockfile.c) ---- */
struct sockfile {
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t dev;
	ino_t ino;       /* the file we created at path */
	ino_t sock_ino;  /* the socket bound there (sockfs inode) */
	uint8_t used;
	uint8_t noremove;
};
/* Bind sock to path; replaces a stale socket file, never a live one.  r, the rule,
 * gives noremove and the file's mode, owner and group, which it has from the moment it
 * appears at path. */
int sockfile_bind(int sock, const char *path, const struct rule *r);
/* Bind sock to a fresh path and unlink it: a socket nobody can reach. */
int sockfile_blackhole(int sock);
/* Take over the record of a file made before exec, if the file at path is still (dev,
 * ino): removed once the socket sock_ino is gone.  Index, or -1. */
int sockfile_adopt(const char *path, dev_t dev, ino_t ino, ino_t sock_ino, int noremove);
/* Add copies of the records in use to out (struct sockfile items). */
void sockfile_list(struct growbuf *out);
/* Remove record idx's file now, if the path still names it, and forget the record. */
void sockfile_unlink(int idx);
/* Index of the record for the socket with inode sock_ino, or -1. */
int sockfile_by_socket(ino_t sock_ino);
/* Index of the record for path if this process holds its socket open, or -1. */
int sockfile_find(const char *path);
/* The path of record idx into out (size bytes): 0, or -1 when not in use. */
int sockfile_path(int idx, char *out, size_t size);
/* The socket behind record idx may have been closed: remove the file if it is dead. */
void sockfile_release(int idx);
void sockfile_exit_cleanup(void);
/* 1: a socket with this inode exists; 0: it does not; -1: cannot tell. */
int unix_socket_alive(ino_t sock_ino);
/* The file the socket with inode sock_ino is bound to, or was accepted from: 1 with its
 * dev and ino as stat reports them; 0 when it has none or we cannot tell. */
int unix_socket_file(ino_t sock_ino, dev_t *dev, ino_t *ino);
/* Is the socket sock_ino bound to, or accepted from, the file st (its lstat)? */
int socket_of_file(unsigned long sock_ino, const struct stat *st);
/* Is a socket, in this network namespace or another, bound to the file at path (st its
 * lstat)?  1 yes, 0 no: a stale file. */
int socket_file_live(const char *path, const struct stat *st);

/* ---- conversion (convert.c) ---- */
/* old: what we know of fd (its kind, family and type at least). */
int convert_bind(int fd, const struct ipaddr *addr, const struct fd_entry *old);
int convert_connect(int fd, const struct ipaddr *addr, const struct fd_entry *old,
		    int *handled);
/* Find the rule for q; 1: leave the call to libc, 0: r and the expanded target set,
 * -1 with errno: the call fails. */
int rule_decide(int fd, const struct sock_query *q, const struct rule **r, char *target,
		size_t size);
/* A 'systemd' rule's bind: put the passed socket in fd's place.  addr is what an IP
 * socket asked for, NULL for a Unix one. */
int convert_passed(int fd, const struct ipaddr *addr, const struct fd_entry *old,
		   const struct rule *r);
/* connect() of a converted stream listener that never listened (a client that bound a
 * source address first); as convert_connect, old the listener's entry. */
int convert_bound_connect(int fd, const struct ipaddr *addr, const struct fd_entry *old,
			  int *handled);
/* The local address of a converted client of peer: loopback like it, a port of its own. */
void client_local(struct ipaddr *local, int family, const struct ipaddr *peer);
/* Turn an IP datagram socket into a Unix one with a private address, unconnected. */
int convert_sender(int fd, const struct fd_entry *old);
void copyable_option_mark(struct fd_entry *e, int level, int optname);
/* Is a SOL_SOCKET option carried over to a socket that takes fd's place? */
int copyable_option(int optname);
/* Which Unix address the rules send q to: 0 with sun and len set; 1 when no rule
 * converts it (the call goes to libc unchanged); -1 with errno when it must fail. */
int rule_target(int fd, const struct sock_query *q, struct sockaddr_un *sun, socklen_t *len);
/* Put sock in fd's place; fd keeps its entry, flags and epoll registrations.  On
 * failure sock is closed and fd left as it was. */
int replace_socket(int fd, int sock);
/* Put a fresh Unix socket listening at path (r, may be NULL: its file's mode and owner)
 * in the place of old's fd, keeping its flags, options and epoll registrations. */
int convert_relisten(int fd, const struct fd_entry *old, const char *path,
		     const struct rule *r, int backlog);
/* Turn a pending socket into the IP socket the program asked for. */
int materialize(int fd);
/* Should socket() make a stream socket of family a pending one? */
int predict_pending(int family);
/* Remember that a rule claimed fd (old is what we knew of it) for dir and converting it
 * failed with err: a later listen, connect or send fails with err rather than let the
 * kernel bind an IP port.  err 0 forgets it. */
void claim_mark(int fd, const struct fd_entry *old, int dir, int err);
/* Would the call make e bind implicitly when a rule claimed it and its conversion failed
 * (dir is the direction that failed, DIR_ANY for either)?  -1 with errno, else 0. */
int claim_refuses(const struct fd_entry *e, int dir);

/* ---- connections to the process's own listeners (own.c) ---- */
/* A converted listener now stands for local (its address and port). */
void listener_note(const struct ipaddr *local);
/* Where a stream connect from fd to dest goes when one of this process's converted
 * listeners stands for dest: 0 with its Unix address in sun and len; 1 when none does;
 * -1 with errno when one does but cannot be reached (never real TCP then). */
int own_listener(int fd, const struct ipaddr *dest, int type, struct sockaddr_un *sun,
		 socklen_t *len);
/* ---- receivers: TCP connections passed by a dispatcher (receive.c) ---- */
static inline int is_receiver(const struct fd_entry *e)
{
	return e->kind == FD_CONVERTED && e->role >= ROLE_RECEIVER && e->role <= ROLE_RECEIVER_SHUT;
}
/* Make sock, the socket a receive= rule puts in a listener's place, ready: a datagram
 * socket bound at path as sockfile_bind does (its index, or -1), or with a slot a
 * seqpacket socket registered at the control socket path (-1).  -2 on failure. */
int receive_setup(int sock, const char *path, const struct rule *r);
/* listen() and shutdown() of a receiver: its role becomes role. */
int receive_role(int fd, int role);
/* accept()/accept4() on a receiver: the next TCP connection passed to it. */
int receive_accept(int fd, const struct fd_entry *l, struct sockaddr *addr, socklen_t *len,
		   int flags);
/* getsockopt(SOL_SOCKET, name) of a receiver as of a TCP listener: 1 with *answer set. */
int receive_sockopt(const struct fd_entry *e, int name, int *answer);

/* ---- converted sockets across exec (inherit.c) ---- */
void inherit_init(void);
/* A SOL_SOCKET option's int value, or -1. */
int sockopt_value(int fd, int name);

/* ---- pausing a converted listener (pause.c) ---- */
/* connect(AF_UNSPEC) on the converted listener e: stop taking connections. */
int listener_pause(int fd, const struct fd_entry *e);
/* listen() on a paused one: take connections again, at the same path. */
int listener_resume(int fd, const struct fd_entry *e, int backlog);

/* ---- converted sockets received over SCM_RIGHTS (passfd.c) ---- */
/* The sockets msg, just received, carries: take back those we can prove converted. */
void passfd_received(struct msghdr *msg);
/* Before a send: the pending sockets msg passes become their IP sockets.  0, or -1. */
int passfd_sending(const struct msghdr *msg);

/* ---- unsock's environment variables as rules (unsock.c) ---- */
/* Some UNSOCK_* variable asks for conversion or blocking. */
int unsock_configured(void);
/* Append the rules they stand for; -1 (logged) when they are unusable. */
int unsock_rules(void);
/* Where unsock reports accepted peers from (UNSOCK_ADDR's address), or family 0. */
extern struct ipaddr unsock_peer;

/* ---- other socket families (families.c) ---- */
#define CONTROL_FILE_SIZE 452
#define MAX_TARGET_OPTS 4
/* Where a vsock=/tipc=/fc= rule or an unsock control file sends a socket. */
struct other_target {
	int family;                /* AF_VSOCK, AF_TIPC, ...; AF_UNIX for a multiplexer */
	struct sockaddr_storage addr;
	socklen_t len;
	uint32_t fc_port;          /* multiplexer: the port to ask for; addr is the proxy */
	int fc;
	int n_opts;
	struct { uint32_t level, name; uint8_t value[32]; } opts[MAX_TARGET_OPTS];
};
void other_from_rule(const struct rule *r, struct other_target *t);
/* 1 when path is an unsock control file (t filled), 0 when it is not one, -1 when it
 * is one but malformed (logged, errno set). */
int control_file_read(const char *path, struct other_target *t);
/* Set the target's socket options on sock. */
void other_apply_options(int sock, const struct other_target *t);
/* Ask the multiplexer on connected sock for t's port and wait for its OK. */
int fc_handshake(int sock, const struct other_target *t);
/* A log line's description of t. */
void other_describe(const struct other_target *t, char *buf, size_t size);

/* ---- programs that use Unix sockets already (redirect.c) ---- */
/* bind/connect/sendto destination of a Unix socket, as the from-unix rules say. */
int redirect_bind(int fd, const struct sockaddr *sa, socklen_t len);
int redirect_connect(int fd, const struct sockaddr *sa, socklen_t len);
/* sendmsg() to a Unix address named in msg. */
ssize_t redirect_sendmsg(int fd, const struct msghdr *msg, int flags);

/* ---- sockets passed by the service manager (systemd.c) ---- */
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
void systemd_init(void);
/* fd is a passed socket no rule has used yet: the program's close() must not close it. */
int systemd_hidden(int fd);
/* Move a waiting passed socket off fd, which the program is about to reuse. */
void systemd_evict(int fd);
/* close_range() by closer() over [first, last] except waiting passed sockets. */
int systemd_close_range(unsigned first, unsigned last, int flags,
			int (*closer)(unsigned, unsigned, int));
/* The passed socket for a bind matching rule r (index rule) on a socket of type:
 * its fd (no longer hidden), with *family set; -2 when this rule already took one
 * (blackhole the bind); -1 with errno and a log line when there is none. */
int systemd_claim(int rule, const struct rule *r, int type, int *family);

/* ---- interposed calls (interpose.c) ---- */
/* fd is tracked, or it is an IP socket we did not see made that sends to sa, and is
 * tracked now (sending would bind it to a port).  1 when tracked. */
int tracked_for_send(int fd, const struct sockaddr *sa, socklen_t len);
/* The entry of a connection accepted from listener: its addresses, a peer of its own. */
void accepted_entry(struct fd_entry *e, const struct fd_entry *listener);

/* ---- datagram peers (peers.c) ---- */
/* Pair a Unix address with the IP address the program knows it by. */
void peers_remember(const struct sockaddr_un *sun, socklen_t len, const struct ipaddr *ip);
/* The IP stand-in for a Unix sender, made up at first sight (never an address the table
 * or a rule gives a destination).  1 when it is a destination's (the sender's Unix
 * address is where the program sent to), 0 another, -1 if out of memory or stand-ins. */
int peers_to_ip(const struct sockaddr_un *sun, socklen_t len, int family, struct ipaddr *out);
/* A stand-in for a sender we will not name (recorded nowhere): 0, or -1. */
int peers_unknown(int family, struct ipaddr *out);
/* The Unix address behind ip: 0 found, 1 an unnamed sender (no reply possible), -1 none. */
int peers_to_unix(const struct ipaddr *ip, struct sockaddr_un *sun, socklen_t *len);

/* ---- datagram sockets (dgram.c) ---- */
/* fd_entry.auth: we set SO_PASSCRED to check senders; the program asked for it too */
enum { AUTH_CHECK = 1, AUTH_WANTED = 2 };
/* Turn on the credentials check for sock, a converted client: 0, or -1 with errno. */
int dgram_check_senders(int sock, struct fd_entry *e);
/* setsockopt(SO_PASSCRED) on fd: 0 or -1 as setsockopt, or 1 if not ours to answer. */
int dgram_passcred_set(int fd, const void *val, socklen_t len);
/* Bind sock to a fresh abstract name for replies to reach it: 0, or -1 with errno. */
int dgram_autobind(int sock);
/* sendmsg() on an IP or converted datagram socket with a destination in msg. */
ssize_t dgram_sendmsg(int fd, const struct fd_entry *e, const struct msghdr *msg, int flags);
/* connect() of a converted datagram socket to another IP address. */
int dgram_connect(int fd, const struct ipaddr *a);

#endif
