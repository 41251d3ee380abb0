/*
 * Matching Unix socket paths against from-unix / from-abstract patterns.
 *
 *   ?        one character other than '/'
 *   *        any run of characters other than '/'
 *   **       any run of characters, '/' included (and before a '/', no directory)
 *   [...]    one character (not '/') from the set; [!...] one not in it; a-z ranges
 *   \X       X itself
 *
 * A pattern without '/' is matched against the last component of the path.
 */
#include <string.h>

#include "shim.h"

/* Match the bracket expression at *pp against ch; advances *pp past it.  -1 when the
 * expression is not closed (then '[' is an ordinary character). */
static int match_class(const char **pp, char ch)
{
	const char *p = *pp + 1;
	int negate = 0, found = 0;

	if (*p == '!') {
		negate = 1;
		p++;
	}
	for (int first = 1; *p && (first || *p != ']'); first = 0) {
		char lo = *p == '\\' && p[1] ? *++p : *p, hi = lo;

		p++;
		if (p[0] == '-' && p[1] && p[1] != ']') {
			hi = p[1] == '\\' && p[2] ? p[2] : p[1];
			p += p[1] == '\\' && p[2] ? 3 : 2;
		}
		if (ch >= lo && ch <= hi)
			found = 1;
	}
	if (*p != ']')
		return -1;
	*pp = p + 1;
	return ch != '/' && found != negate;
}

static int match_here(const char *p, const char *s)
{
	for (; *p; s++) {
		int r;

		switch (*p) {
		case '*':
			if (p[1] == '*') {
				p += 2;
				if (*p == '/' && match_here(p + 1, s))
					return 1;
				for (;; s++) { /* '**': try every suffix, '/' included */
					if (match_here(p, s))
						return 1;
					if (!*s)
						return 0;
				}
			}
			for (p++; ; s++) {
				if (match_here(p, s))
					return 1;
				if (!*s || *s == '/')
					return 0;
			}
		case '?':
			if (!*s || *s == '/')
				return 0;
			p++;
			break;
		case '[':
			if (!*s)
				return 0;
			r = match_class(&p, *s);
			if (r == 0)
				return 0;
			if (r < 0) { /* an unclosed '[' stands for itself */
				if (*s != '[')
					return 0;
				p++;
			}
			break;
		case '\\':
			if (p[1])
				p++;
			/* fall through */
		default:
			if (*p != *s)
				return 0;
			p++;
		}
	}
	return !*s;
}

int glob_match(const char *pattern, const char *path)
{
	const char *base;

	if (!strchr(pattern, '/')) {
		base = strrchr(path, '/');
		path = base ? base + 1 : path;
	}
	return match_here(pattern, path);
}
