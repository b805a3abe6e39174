/* SPDX-License-Identifier: MIT */
/*
 * kshim.h: the kernel interfaces that Linux's drm_buddy (gpu_buddy) and
 * drm_mm need, written for user space, so that those files compile
 * unchanged as benchmark peers. Every kernel header the peers include that
 * is not taken from the kernel source itself (rbtree, interval tree and the
 * allocators' own headers are) is a one-line file including this header.
 *
 * What holds here:
 * - types, compiler attributes, READ_ONCE/WRITE_ONCE and the bit helpers
 *   behave as in the kernel for the values the peers use;
 * - BUG_ON aborts, WARN_ON/WARN print and return the condition;
 * - kmem_cache is a free list over malloc with the slab fast path's cost
 *   (a pointer pop / push), and it counts the objects in use, so that the
 *   benchmark can report the peer's metadata;
 * - kmalloc/kfree keep a size header and count their bytes likewise;
 * - the doubly linked list is the kernel's list_head API (same layout and
 *   semantics, written anew).
 */
#ifndef KSHIM_H
#define KSHIM_H

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- types ------------------------------------------------------------ */
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef unsigned long long u64; /* as in the kernel: printf %llu */
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef long long s64;
typedef unsigned int gfp_t;
typedef unsigned long depot_stack_handle_t;

#define U64_MAX UINT64_MAX
#define U32_MAX UINT32_MAX

/* ---- compiler --------------------------------------------------------- */
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))
#define noinline __attribute__((noinline))
#define __maybe_unused __attribute__((unused))
#define __init
#define __exit
#define __must_check
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, val)                                  \
	do {                                                \
		*(volatile __typeof__(x) *)&(x) = (val);    \
	} while (0)
#define barrier() __asm__ __volatile__("" ::: "memory")
#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* RCU publication is a plain ordered store in a single-threaded peer. */
#define rcu_assign_pointer(p, v) WRITE_ONCE(p, v)
#define RCU_INIT_POINTER(p, v) WRITE_ONCE(p, v)
#define rcu_dereference_raw(p) READ_ONCE(p)

/* ---- module and export boilerplate ------------------------------------ */
#define EXPORT_SYMBOL(sym)
#define EXPORT_SYMBOL_GPL(sym)
#define MODULE_DESCRIPTION(s)
#define MODULE_LICENSE(s)
#define MODULE_AUTHOR(s)
/* Module init runs when the peer library is loaded; exit is not needed. */
#define module_init(fn)                                                   \
	static void __attribute__((constructor)) kshim_init_##fn(void)    \
	{                                                                 \
		if (fn())                                                 \
			abort();                                          \
	}
#define module_exit(fn) \
	static __attribute__((unused)) void (*kshim_exit_##fn)(void) = fn;

/* ---- bugs and warnings ------------------------------------------------ */
#define BUG() abort()
#define BUG_ON(cond)                                                      \
	do {                                                              \
		if (unlikely(cond)) {                                     \
			fprintf(stderr, "BUG_ON(%s) at %s:%d\n", #cond,   \
				__FILE__, __LINE__);                      \
			abort();                                          \
		}                                                         \
	} while (0)
#define WARN_ON(cond)                                                     \
	({                                                                \
		int kshim_w = !!(cond);                                   \
		if (unlikely(kshim_w))                                    \
			fprintf(stderr, "WARN_ON(%s) at %s:%d\n", #cond,  \
				__FILE__, __LINE__);                      \
		unlikely(kshim_w);                                        \
	})
#define WARN(cond, ...)                                                   \
	({                                                                \
		int kshim_w = !!(cond);                                   \
		if (unlikely(kshim_w))                                    \
			fprintf(stderr, __VA_ARGS__);                     \
		unlikely(kshim_w);                                        \
	})
#define BUILD_BUG_ON_INVALID(e) ((void)(sizeof((long)(e))))
#define kunit_fail_current_test(...) ((void)0)
#define pr_info(...) printf(__VA_ARGS__)
#define DRM_ERROR(...) fprintf(stderr, __VA_ARGS__)
#define cond_resched() ((void)0)
#define kmemleak_update_trace(p) ((void)(p))

/* ---- sizes, bits, arithmetic ------------------------------------------ */
#define SZ_4K 0x00001000
#define SZ_1M 0x00100000
#define BIT(n) (1UL << (n))
#define BIT_ULL(n) (1ULL << (n))
#define GENMASK_ULL(h, l) ((~0ULL << (l)) & (~0ULL >> (63 - (h))))
#define hweight64(x) ((unsigned int)__builtin_popcountll(x))
#define ilog2(n) ((int)(63 - __builtin_clzll((unsigned long long)(n))))
#define is_power_of_2(n) ((n) != 0 && (((n) & ((n) - 1)) == 0))
#define roundup_pow_of_two(n) \
	((n) <= 1 ? 1ULL : 1ULL << (64 - __builtin_clzll((unsigned long long)(n) - 1)))
#define rounddown_pow_of_two(n) (1ULL << ilog2(n))
#define round_up(x, y) ((((x) - 1) | ((__typeof__(x))((y) - 1))) + 1)
#define round_down(x, y) ((x) & ~((__typeof__(x))((y) - 1)))
#define IS_ALIGNED(x, a) (((x) & ((__typeof__(x))(a) - 1)) == 0)
#define min(a, b)                        \
	({                               \
		__typeof__(a) kshim_a = (a); \
		__typeof__(b) kshim_b = (b); \
		kshim_a < kshim_b ? kshim_a : kshim_b; \
	})
#define max(a, b)                        \
	({                               \
		__typeof__(a) kshim_a = (a); \
		__typeof__(b) kshim_b = (b); \
		kshim_a > kshim_b ? kshim_a : kshim_b; \
	})
#define range_overflows(start, size, max)          \
	({                                         \
		__typeof__(start) kshim_s = (start); \
		__typeof__(size) kshim_z = (size);   \
		__typeof__(max) kshim_m = (max);     \
		kshim_s >= kshim_m || kshim_z > kshim_m - kshim_s; \
	})

/* fls: 1-based index of the most significant set bit of a 32-bit value. */
static inline int fls(unsigned int x)
{
	return x ? 32 - __builtin_clz(x) : 0;
}

static inline void div64_u64_rem(u64 dividend, u64 divisor, u64 *rem)
{
	*rem = dividend % divisor;
}

static inline bool test_bit(long nr, const unsigned long *addr)
{
	return (*addr >> nr) & 1;
}

static inline void __set_bit(long nr, unsigned long *addr)
{
	*addr |= 1UL << nr;
}

static inline void __clear_bit(long nr, unsigned long *addr)
{
	*addr &= ~(1UL << nr);
}

static inline void clear_bit_unlock(long nr, unsigned long *addr)
{
	*addr &= ~(1UL << nr);
}

/* ---- error pointers ----------------------------------------------------- */
#define MAX_ERRNO 4095
static inline void *ERR_PTR(long error)
{
	return (void *)error;
}
static inline long PTR_ERR(const void *ptr)
{
	return (long)ptr;
}
static inline bool IS_ERR(const void *ptr)
{
	return (unsigned long)ptr >= (unsigned long)-MAX_ERRNO;
}

/* ---- allocation --------------------------------------------------------- */
#define GFP_KERNEL 0u
#define GFP_NOWAIT 0u

/* Bytes currently handed out by kmalloc and objects by all kmem_caches,
 * for the benchmark's metadata figures (defined in peers.c). */
extern u64 kshim_kmalloc_bytes;
extern u64 kshim_slab_bytes;

static inline void *kmalloc(size_t size, gfp_t gfp)
{
	(void)gfp;
	size_t *p = malloc(size + sizeof(size_t) * 2);
	if (!p)
		return NULL;
	p[0] = size;
	kshim_kmalloc_bytes += size;
	return p + 2;
}

static inline void *kzalloc(size_t size, gfp_t gfp)
{
	void *p = kmalloc(size, gfp);
	if (p)
		memset(p, 0, size);
	return p;
}

static inline void *kmalloc_array(size_t n, size_t size, gfp_t gfp)
{
	if (size && n > SIZE_MAX / size)
		return NULL;
	return kmalloc(n * size, gfp);
}

static inline void kfree(const void *ptr)
{
	if (!ptr)
		return;
	size_t *p = (size_t *)ptr - 2;
	kshim_kmalloc_bytes -= p[0];
	free(p);
}

/* A slab cache: objects of one size, recycled through a free list. */
struct kmem_cache {
	size_t size;
	void *free;
};

static inline struct kmem_cache *kmem_cache_create(const char *name, size_t size,
						   size_t align, unsigned long flags,
						   void (*ctor)(void *))
{
	(void)name;
	(void)flags;
	(void)ctor;
	struct kmem_cache *c = malloc(sizeof(*c));
	if (!c)
		return NULL;
	size = (size + align - 1) & ~(align - 1);
	c->size = size < sizeof(void *) ? sizeof(void *) : size;
	c->free = NULL;
	return c;
}

#define KMEM_CACHE(s, flags) \
	kmem_cache_create(#s, sizeof(struct s), __alignof__(struct s), (flags), NULL)

static inline void *kmem_cache_alloc(struct kmem_cache *c, gfp_t gfp)
{
	(void)gfp;
	void *p = c->free;
	if (likely(p))
		c->free = *(void **)p;
	else
		p = malloc(c->size);
	if (p)
		kshim_slab_bytes += c->size;
	return p;
}

static inline void *kmem_cache_zalloc(struct kmem_cache *c, gfp_t gfp)
{
	void *p = kmem_cache_alloc(c, gfp);
	if (p)
		memset(p, 0, c->size);
	return p;
}

static inline void kmem_cache_free(struct kmem_cache *c, void *p)
{
	*(void **)p = c->free;
	c->free = p;
	kshim_slab_bytes -= c->size;
}

static inline void kmem_cache_destroy(struct kmem_cache *c)
{
	while (c && c->free) {
		void *p = c->free;
		c->free = *(void **)p;
		free(p);
	}
	free(c);
}

/* ---- doubly linked lists (the kernel's list_head API) ------------------ */
struct list_head {
	struct list_head *next, *prev;
};

#define LIST_HEAD_INIT(name) { &(name), &(name) }
#define LIST_HEAD(name) struct list_head name = LIST_HEAD_INIT(name)

static inline void INIT_LIST_HEAD(struct list_head *list)
{
	WRITE_ONCE(list->next, list);
	list->prev = list;
}

static inline void kshim_list_insert(struct list_head *entry, struct list_head *prev,
				     struct list_head *next)
{
	next->prev = entry;
	entry->next = next;
	entry->prev = prev;
	WRITE_ONCE(prev->next, entry);
}

/* Inserts @entry right after @head. */
static inline void list_add(struct list_head *entry, struct list_head *head)
{
	kshim_list_insert(entry, head, head->next);
}

/* Inserts @entry right before @head (at the tail of the list). */
static inline void list_add_tail(struct list_head *entry, struct list_head *head)
{
	kshim_list_insert(entry, head->prev, head);
}

static inline void __list_del_entry(struct list_head *entry)
{
	entry->next->prev = entry->prev;
	WRITE_ONCE(entry->prev->next, entry->next);
}

static inline void list_del(struct list_head *entry)
{
	__list_del_entry(entry);
	entry->next = NULL;
	entry->prev = NULL;
}

static inline void list_del_init(struct list_head *entry)
{
	__list_del_entry(entry);
	INIT_LIST_HEAD(entry);
}

static inline void list_move(struct list_head *entry, struct list_head *head)
{
	__list_del_entry(entry);
	list_add(entry, head);
}

static inline void list_move_tail(struct list_head *entry, struct list_head *head)
{
	__list_del_entry(entry);
	list_add_tail(entry, head);
}

static inline int list_empty(const struct list_head *head)
{
	return READ_ONCE(head->next) == head;
}

static inline int list_is_singular(const struct list_head *head)
{
	return !list_empty(head) && head->next == head->prev;
}

/* Moves every entry of @list (left unusable) before @head. */
static inline void list_splice_tail(struct list_head *list, struct list_head *head)
{
	if (list_empty(list))
		return;
	struct list_head *first = list->next, *last = list->prev, *at = head->prev;
	first->prev = at;
	at->next = first;
	last->next = head;
	head->prev = last;
}

static inline void list_splice_tail_init(struct list_head *list, struct list_head *head)
{
	list_splice_tail(list, head);
	INIT_LIST_HEAD(list);
}

#define list_entry(ptr, type, member) container_of(ptr, type, member)
#define list_first_entry(ptr, type, member) list_entry((ptr)->next, type, member)
#define list_last_entry(ptr, type, member) list_entry((ptr)->prev, type, member)
#define list_first_entry_or_null(ptr, type, member)                       \
	({                                                                \
		struct list_head *kshim_h = (ptr);                        \
		struct list_head *kshim_n = READ_ONCE(kshim_h->next);     \
		kshim_n != kshim_h ? list_entry(kshim_n, type, member) : NULL; \
	})
#define list_next_entry(pos, member) \
	list_entry((pos)->member.next, __typeof__(*(pos)), member)
#define list_prev_entry(pos, member) \
	list_entry((pos)->member.prev, __typeof__(*(pos)), member)
#define list_entry_is_head(pos, head, member) (&(pos)->member == (head))
#define list_for_each_entry(pos, head, member)                            \
	for (pos = list_first_entry(head, __typeof__(*pos), member);      \
	     !list_entry_is_head(pos, head, member);                      \
	     pos = list_next_entry(pos, member))
#define list_for_each_entry_safe(pos, n, head, member)                    \
	for (pos = list_first_entry(head, __typeof__(*pos), member),      \
	    n = list_next_entry(pos, member);                             \
	     !list_entry_is_head(pos, head, member);                      \
	     pos = n, n = list_next_entry(n, member))

/* ---- printing ------------------------------------------------------------ */
struct drm_printer {
	FILE *out;
};

static inline void drm_printf(struct drm_printer *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(p && p->out ? p->out : stdout, fmt, ap);
	va_end(ap);
}

struct seq_file;

#endif /* KSHIM_H */
