/*
 * The shim's glob matcher (src/shim/glob.c, linked in) on stdin: records of
 * "PATTERN\0PATH\0", one answer byte each ('1' match, '0' not), flushed per record.
 */
#include <stdio.h>
#include <stdlib.h>

int glob_match(const char *pattern, const char *path);

int main(void)
{
	char *pattern = NULL, *path = NULL;
	size_t pattern_size = 0, path_size = 0;

	while (getdelim(&pattern, &pattern_size, '\0', stdin) > 0 &&
	       getdelim(&path, &path_size, '\0', stdin) > 0) {
		putchar(glob_match(pattern, path) ? '1' : '0');
		fflush(stdout);
	}
	free(pattern);
	free(path);
	return 0;
}
