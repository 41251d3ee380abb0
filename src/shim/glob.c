/*
 * Matching Unix socket paths against from-unix / from-abstract patterns.
 *
 *   ?        one byte other than '/'
 *   *        any run of bytes other than '/'
 *   **       any run of bytes, '/' included (and before a '/', no directory)
 *   [...]    one byte (not '/') from the set; [!...] one not in it; a-z ranges
 *   \X       X itself
 *
 * A pattern without '/' is matched against the last component of the path.
 *
 * Backtracking is exponential in the number of stars ("*a*a*a*a*b"), so the pattern is
 * run as a nondeterministic automaton instead: the states are the byte offsets at which
 * a pattern element starts, all live states advance together on each path byte, and the
 * cost is at most pattern length x path length.  The state sets are bitsets on the
 * stack, which bounds a pattern to GLOB_MAX bytes (the rule parser enforces that).
 */
#include <limits.h>
#include <string.h>

#include "shim.h"

enum elem { LITERAL, ANY, CLASS, STAR, DSTAR, DSTAR_SLASH };

#define WORD_BITS (sizeof(unsigned long) * CHAR_BIT)
#define SET_WORDS ((GLOB_MAX + 1 + WORD_BITS - 1) / WORD_BITS)

struct states {
	unsigned long bits[SET_WORDS];
};

/* The end of the bracket expression starting at p ('['), just past its ']'; NULL when
 * it is not closed (then '[' is an ordinary byte). */
static const char *class_end(const char *p)
{
	p++;
	if (*p == '!')
		p++;
	for (int first = 1; *p && (first || *p != ']'); first = 0)
		p += p[0] == '\\' && p[1] ? 2 : 1;
	return *p == ']' ? p + 1 : NULL;
}

/* Whether ch is in the bracket expression [p, end). */
static int class_has(const char *p, const char *end, unsigned char ch)
{
	int negate = 0, found = 0;

	p++;
	if (*p == '!') {
		negate = 1;
		p++;
	}
	for (end--; p < end;) {
		unsigned char lo = (unsigned char)(*p == '\\' && p + 1 < end ? *++p : *p), hi = lo;

		p++;
		if (p[0] == '-' && p + 1 < end) {
			hi = (unsigned char)(p[1] == '\\' && p + 2 < end ? p[2] : p[1]);
			p += p[1] == '\\' && p + 2 < end ? 3 : 2;
		}
		if (ch >= lo && ch <= hi)
			found = 1;
	}
	return ch != '/' && found != negate;
}

/* The element at p: its kind, its byte (LITERAL) and where the next one starts. */
static enum elem element(const char *p, unsigned char *byte, const char **next)
{
	*next = p + 1;
	*byte = (unsigned char)*p;
	switch (*p) {
	case '*':
		if (p[1] != '*')
			return STAR;
		*next = p + (p[2] == '/' ? 3 : 2);
		return p[2] == '/' ? DSTAR_SLASH : DSTAR;
	case '?':
		return ANY;
	case '[':
		if ((*next = class_end(p)))
			return CLASS;
		*next = p + 1;
		return LITERAL;
	case '\\':
		if (p[1]) {
			*byte = (unsigned char)p[1];
			*next = p + 2;
		}
		return LITERAL;
	}
	return LITERAL;
}

static void add(struct states *s, size_t i)
{
	s->bits[i / WORD_BITS] |= 1UL << (i % WORD_BITS);
}

static int has(const struct states *s, size_t i)
{
	return (s->bits[i / WORD_BITS] >> (i % WORD_BITS)) & 1;
}

/* Enter the state at offset i and, through stars that may match nothing, the ones
 * after it. */
static void enter(struct states *s, const char *pattern, size_t i)
{
	unsigned char byte;
	const char *next;
	enum elem e;

	for (;;) {
		add(s, i);
		if (!pattern[i])
			return;
		e = element(pattern + i, &byte, &next);
		if (e != STAR && e != DSTAR && e != DSTAR_SLASH)
			return;
		i = (size_t)(next - pattern);
	}
}

/* Advance the state at offset i on ch into out. */
static void advance(struct states *out, const char *pattern, size_t i, unsigned char ch)
{
	unsigned char byte;
	const char *next;
	int match;

	switch (element(pattern + i, &byte, &next)) {
	case STAR:
		if (ch != '/')
			enter(out, pattern, i);
		return;
	case DSTAR:
		enter(out, pattern, i);
		return;
	case DSTAR_SLASH:
		add(out, i); /* inside the directories: no skipping ahead */
		match = ch == '/';
		break;
	case ANY:
		match = ch != '/';
		break;
	case CLASS:
		match = class_has(pattern + i, next, ch);
		break;
	default:
		match = ch == byte;
	}
	if (match)
		enter(out, pattern, (size_t)(next - pattern));
}

/* Advance every state of cur on ch into out. */
static void step(const struct states *cur, struct states *out, const char *pattern,
		 size_t len, unsigned char ch)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < len; i++) {
		if (!cur->bits[i / WORD_BITS])
			i |= WORD_BITS - 1; /* a whole word of dead states */
		else if (has(cur, i))
			advance(out, pattern, i, ch);
	}
}

int glob_match(const char *pattern, const char *path)
{
	struct states a, b, *cur = &a, *out = &b, *swap;
	size_t len = strlen(pattern);
	const char *base;
	int live = 1;

	if (len > GLOB_MAX)
		return 0;
	if (!strchr(pattern, '/')) {
		base = strrchr(path, '/');
		path = base ? base + 1 : path;
	}
	memset(cur, 0, sizeof(*cur));
	enter(cur, pattern, 0);
	for (; *path && live; path++) {
		step(cur, out, pattern, len, (unsigned char)*path);
		swap = cur, cur = out, out = swap;
		live = 0;
		for (size_t w = 0; w < SET_WORDS; w++)
			live |= cur->bits[w] != 0;
	}
	return live && has(cur, len);
}
