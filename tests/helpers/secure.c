/*
 * secure: reports whether this exec ran in secure-execution mode (AT_SECURE) and whether
 * the shim is loaded ("secure=0 preloaded=1"), for the reachability tests.
 */
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>

int main(void)
{
	char line[4096];
	int preloaded = 0;
	FILE *maps = fopen("/proc/self/maps", "r");

	while (maps && fgets(line, sizeof(line), maps))
		if (strstr(line, "libunixify"))
			preloaded = 1;
	if (maps)
		fclose(maps);
	printf("secure=%lu preloaded=%d\n", getauxval(AT_SECURE), preloaded);
	return 0;
}
