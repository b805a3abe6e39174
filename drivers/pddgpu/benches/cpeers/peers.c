/* SPDX-License-Identifier: MIT */
/*
 * peers.c: the benchmark's entry points into Linux's drm_buddy (gpu_buddy)
 * and drm_mm, compiled as user-space C against kshim.h. Only the functions
 * marked PEER_API are visible to the Rust benchmarks (which load the
 * library with dlopen); everything else, the kernel code included, is
 * hidden and called directly inside the library.
 *
 * drm_buddy side: the caller owns a table of block lists, one per slot, as
 * a driver's resource object owns a `struct list_head blocks` (16 bytes);
 * an allocation fills a slot's list, a free hands the list back with
 * gpu_buddy_free_list(), exactly as amdgpu's VRAM manager does.
 *
 * drm_mm side: nodes are what a driver embeds in its buffer objects; here
 * they come from a kmem_cache (reused after a remove), and a node pointer
 * is the caller's handle.
 */
#include "kshim.h"

#include <drm/drm_mm.h>
#include <linux/gpu_buddy.h>

#define PEER_API __attribute__((visibility("default")))

u64 kshim_kmalloc_bytes;
u64 kshim_slab_bytes;

/* Heap bytes the peers hold right now: slab objects in use plus kmalloc. */
PEER_API u64 peer_heap_bytes(void)
{
	return kshim_slab_bytes + kshim_kmalloc_bytes;
}

/* ---- drm_buddy ------------------------------------------------------- */

struct peer_buddy {
	struct gpu_buddy mm;
	struct list_head *slots;
	size_t nslots;
};

PEER_API struct peer_buddy *pb_new(u64 size, u64 chunk, size_t nslots)
{
	struct peer_buddy *pb = calloc(1, sizeof(*pb));
	if (!pb)
		return NULL;
	pb->slots = calloc(nslots ? nslots : 1, sizeof(*pb->slots));
	if (!pb->slots || gpu_buddy_init(&pb->mm, size, chunk)) {
		free(pb->slots);
		free(pb);
		return NULL;
	}
	pb->nslots = nslots;
	for (size_t i = 0; i < nslots; i++)
		INIT_LIST_HEAD(&pb->slots[i]);
	return pb;
}

PEER_API void pb_drop(struct peer_buddy *pb)
{
	for (size_t i = 0; i < pb->nslots; i++)
		if (!list_empty(&pb->slots[i]))
			gpu_buddy_free_list(&pb->mm, &pb->slots[i], 0);
	gpu_buddy_fini(&pb->mm);
	free(pb->slots);
	free(pb);
}

/* Allocates into the empty list of @slot; 0 or a negative errno. */
PEER_API int pb_alloc(struct peer_buddy *pb, size_t slot, u64 start, u64 end, u64 size,
		      u64 min_block_size, unsigned long flags)
{
	return gpu_buddy_alloc_blocks(&pb->mm, start, end, size, min_block_size,
				      &pb->slots[slot], flags);
}

/* Frees the blocks of @slot; 1 if there were any, else 0. */
PEER_API int pb_free(struct peer_buddy *pb, size_t slot)
{
	if (list_empty(&pb->slots[slot]))
		return 0;
	gpu_buddy_free_list(&pb->mm, &pb->slots[slot], 0);
	return 1;
}

/* Blocks held in all slots (a walk: for figures, not for timed loops). */
PEER_API u64 pb_live_blocks(const struct peer_buddy *pb)
{
	u64 n = 0;
	for (size_t i = 0; i < pb->nslots; i++) {
		const struct list_head *at = pb->slots[i].next;
		while (at != &pb->slots[i]) {
			n++;
			at = at->next;
		}
	}
	return n;
}

/* Bytes in allocated blocks. */
PEER_API u64 pb_used(const struct peer_buddy *pb)
{
	return pb->mm.size - pb->mm.avail;
}

/* sizeof(struct gpu_buddy_block): the peer's metadata per tree node. */
PEER_API u64 pb_block_size(void)
{
	return sizeof(struct gpu_buddy_block);
}

/* ---- drm_mm ---------------------------------------------------------- */

struct peer_mm {
	struct drm_mm mm;
	struct kmem_cache *nodes;
};

PEER_API struct peer_mm *pm_new(u64 start, u64 size)
{
	struct peer_mm *pm = calloc(1, sizeof(*pm));
	if (!pm)
		return NULL;
	pm->nodes = KMEM_CACHE(drm_mm_node, 0);
	if (!pm->nodes) {
		free(pm);
		return NULL;
	}
	drm_mm_init(&pm->mm, start, size);
	return pm;
}

PEER_API void pm_drop(struct peer_mm *pm)
{
	struct drm_mm_node *node, *next;
	drm_mm_for_each_node_safe(node, next, &pm->mm) {
		drm_mm_remove_node(node);
		kmem_cache_free(pm->nodes, node);
	}
	drm_mm_takedown(&pm->mm);
	kmem_cache_destroy(pm->nodes);
	free(pm);
}

/* Inserts @size bytes aligned to @alignment in @start..@end with @mode
 * (0 best, 1 low, 2 high); the node, or NULL when nothing fits. */
PEER_API struct drm_mm_node *pm_insert(struct peer_mm *pm, u64 size, u64 alignment,
				       u64 start, u64 end, int mode, u64 *out_start)
{
	/* A driver's node lives in its zeroed BO; drm_mm sets every field it
	 * reads except these, so a recycled node needs only them cleared. */
	struct drm_mm_node *node = kmem_cache_alloc(pm->nodes, GFP_KERNEL);
	if (!node)
		return NULL;
	node->flags = 0;
	node->hole_size = 0;
	node->subtree_max_hole = 0;
	if (drm_mm_insert_node_in_range(&pm->mm, node, size, alignment, 0, start, end,
					(enum drm_mm_insert_mode)mode)) {
		kmem_cache_free(pm->nodes, node);
		return NULL;
	}
	*out_start = node->start;
	return node;
}

PEER_API void pm_remove(struct peer_mm *pm, struct drm_mm_node *node)
{
	drm_mm_remove_node(node);
	kmem_cache_free(pm->nodes, node);
}

/* sizeof(struct drm_mm_node): the peer's metadata per live node. */
PEER_API u64 pm_node_size(void)
{
	return sizeof(struct drm_mm_node);
}
