/*
 * The pieces of the launcher's length-delimited encodings (unixify/encoding.py for the
 * shim's rules, unixify/dispatchconf.py for the dispatcher's routes): fields, numbers,
 * hex addresses and port ranges, each validated to the last byte.  Shared by the shim
 * and the dispatcher.
 */
#include <string.h>

#include "shim.h"

int field_uint(const char *s, size_t n, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;

	if (n == 0 || n > 10)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > max)
		return -1;
	*out = v;
	return 0;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

int hex_decode(const char *hex, size_t n_bytes, uint8_t *out)
{
	for (size_t i = 0; i < n_bytes; i++) {
		int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int field_prefix(const char *v, size_t n, uint8_t *addr, uint8_t *v4, uint8_t *len)
{
	const char *slash = memchr(v, '/', n);
	size_t hexlen, bytes;
	unsigned long plen;

	if (!slash)
		return -1;
	hexlen = (size_t)(slash - v);
	if (hexlen != 8 && hexlen != 32)
		return -1;
	bytes = hexlen / 2;
	if (hex_decode(v, bytes, addr))
		return -1;
	if (field_uint(slash + 1, n - hexlen - 1, bytes * 8, &plen))
		return -1;
	*v4 = bytes == 4;
	*len = (uint8_t)plen;
	return 0;
}

int field_ports(const char *v, size_t n, uint16_t *lo, uint16_t *hi)
{
	const char *dash = memchr(v, '-', n);
	unsigned long l, h;

	if (!dash || field_uint(v, (size_t)(dash - v), 65535, &l) ||
	    field_uint(dash + 1, n - (size_t)(dash - v) - 1, 65535, &h) || h < l)
		return -1;
	*lo = (uint16_t)l;
	*hi = (uint16_t)h;
	return 0;
}

int field_next(const char *s, size_t len, size_t *pos, size_t max_value, struct field *f,
	       const char **why)
{
	size_t start;
	unsigned long n;

	f->key = s[(*pos)++];
	start = *pos;
	while (*pos < len && s[*pos] != ':')
		(*pos)++;
	if (*pos >= len || field_uint(s + start, *pos - start, max_value, &n)) {
		*why = "bad field length";
		return -1;
	}
	(*pos)++; /* ':' */
	if (n > len - *pos) {
		*why = "field runs past the end";
		return -1;
	}
	f->value = s + *pos;
	f->len = n;
	*pos += n;
	return 0;
}
