/*
 * unixify-dispatcher: the per-connection loop of `unixify dispatch`.  The Python front
 * parses the configuration, opens the listeners and the control socket and hands this
 * program the listener fds, the route table (its encoding, in a memfd) and protocol B
 * registrations over a SOCK_SEQPACKET channel; this program accepts, routes and passes
 * each connection on.
 */
#ifndef UNIXIFY_DISPATCHER_H
#define UNIXIFY_DISPATCHER_H

#include <stdint.h>
#include <sys/types.h>

#include "shim.h"

enum route_action { ROUTE_SEND = 1, ROUTE_SLOT, ROUTE_REJECT };

struct route {
	uint8_t action;
	uint8_t has_addr, addr_v4, prefix;
	uint8_t has_from, from_v4, from_prefix;
	uint8_t has_ports, has_from_ports;
	uint8_t templated;        /* target has placeholders */
	uint8_t addr[16], from[16];
	uint16_t port_lo, port_hi, from_lo, from_hi;
	uint32_t slot;
	uint32_t queue;           /* bound of the receiver's queue */
	uid_t owner;              /* the receiver's socket file must be this uid's; -1 any */
	const char *target;       /* send=, unexpanded */
};

struct table;
/* The table encoded in size bytes at text; NULL with *why set. */
struct table *table_decode(const char *text, size_t size, const char **why);
void table_free(struct table *t);
int table_size(const struct table *t);
/* The first route matching a connection, or NULL. */
const struct route *table_lookup(const struct table *t, const struct ipaddr *local,
				 const struct ipaddr *peer);

#endif
