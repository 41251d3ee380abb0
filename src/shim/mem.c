/*
 * Memory that grows: the shim allocates only with mmap (it may run in the child of a
 * threaded program, or in a signal handler, where malloc is not safe).
 */
#include <errno.h>
#include <sys/mman.h>

#include "shim.h"

#define PAGE 4096u

/* old (old_size bytes, or NULL) resized to at least new_size bytes, contents kept; the
 * mapping's size in *size.  NULL with old untouched when the kernel refuses. */
void *map_resize(void *old, size_t old_size, size_t new_size, size_t *size)
{
	size_t rounded = (new_size + PAGE - 1) & ~(size_t)(PAGE - 1);
	int saved = errno;
	void *p;

	if (old)
		p = mremap(old, old_size, rounded, MREMAP_MAYMOVE);
	else
		p = mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	errno = saved;
	if (p == MAP_FAILED)
		return NULL;
	*size = rounded;
	return p;
}

int growbuf_add(struct growbuf *b, const void *item, size_t size)
{
	if (b->len + size > b->cap) {
		size_t want = b->cap ? 2 * b->cap : PAGE;
		char *p;

		while (want < b->len + size)
			want *= 2;
		p = map_resize(b->data, b->cap, want, &b->cap);
		if (!p) {
			b->failed = 1;
			return -1;
		}
		b->data = p;
	}
	for (size_t i = 0; i < size; i++)
		b->data[b->len + i] = ((const char *)item)[i];
	b->len += size;
	return 0;
}

void growbuf_free(struct growbuf *b)
{
	int saved = errno;

	if (b->data)
		munmap(b->data, b->cap);
	b->data = NULL;
	b->len = b->cap = 0;
	errno = saved;
}
