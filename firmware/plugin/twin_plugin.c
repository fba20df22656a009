/*
 * twin_plugin.c - QEMU TCG plugin that counts exactly what the firmware executes.
 *
 * Design (cheap by construction):
 *   - every translated block (TB) gets a record {id, start vaddr, insn vaddrs} and a 64-bit
 *     counter at a stable address; an inline "add 1" runs on every TB execution;
 *   - a call to the firmware's twin_mark() (arg mark=) snapshots all counters: the nonzero
 *     deltas since the previous snapshot form one *segment*;
 *   - everything else (per-instruction, per-class, per-function counts) is derived on the host
 *     from the dumped TB records and the ELF (twin/profile/counts.py).
 *
 * Arguments (-plugin twin_plugin.so,key=value,...):
 *   out=PATH                  where to write the dump at exit (required)
 *   mark=0xADDR               address of the first instruction of twin_mark (optional)
 *   mem=on|off                count data loads/stores per region (default off; ~4x slower)
 *   region=NAME:0xSTART:0xEND an address range [START, END) for mem mode (repeatable, up to 8)
 *   edges=on|off              count TB-to-TB transitions (default off; one C callback per TB
 *                             execution, so several times slower than the inline counters)
 *   icache=LINE:SETS:WAYS:PF:0xSTART:0xEND
 *                             simulate an instruction cache (repeatable, up to 4 geometries): LINE
 *                             bytes per line (a power of two), SETS sets (a power of two), WAYS ways,
 *                             true LRU, PF 1 = a next-line prefetch buffer, 0 = none; only fetches
 *                             from [START, END) (the flash) look it up. One C callback per TB
 *                             execution, like edges=on
 *   dcache=LINE:SETS:WAYS:0xSTART:0xEND
 *                             simulate a data cache (mem=on only; repeatable, up to 4): the loads
 *                             from [START, END) look it up, true LRU, no prefetch
 *   entry=0xADDR              an *entry cut* (repeatable, up to 64): every execution of the
 *                             instruction at ADDR (a function's first instruction) closes the
 *                             current segment just before it (`twin count --phase SYMBOL`)
 *
 * Segments: segment 0 runs from the start to the first mark, segment k from mark k to mark k+1,
 * the last one from the last mark to exit.  A TB counter is incremented when the TB is entered,
 * so the TB that contains the mark instruction is counted in the segment that the mark closes.
 * An entry cut is exact where ADDR begins its TB (a function entered by a call or jump always
 * does): that execution of the TB is moved to the new segment, so the segment ends just before
 * ADDR.  Where ADDR lies inside a TB (code falling through into it), the cut is at TB granularity
 * as for mark= (the whole TB in the closing segment).  With edges=on, the edge into the entry's TB
 * stays in the closing segment.
 * Cache lookups are made when a TB is entered, for every line its instructions touch, in order:
 * a TB's lines (and misses) belong to the segment that counts the TB, an exact entry cut moves
 * them with the execution it moves.  Memory accesses are counted when they happen.  An edge
 * (previous TB -> current TB) is counted when the current TB is entered, i.e. in the segment that
 * counts the current TB; the first TB of the run has no previous TB and no edge.
 *
 * Dump format (text, one record per line, fields separated by one space; "hex" is lower-case
 * hexadecimal without 0x, counts are decimal):
 *   TWINPROF 1                         header and format version
 *   target NAME                        QEMU target name (arm, riscv32, ...)
 *   mark HEX | mark -                  mark address, or "-" when none was given
 *   region IDX NAME HEXSTART HEXEND    one per region (IDX 0..R-1); bucket R, named "?", holds
 *                                      accesses outside every region
 *   tb ID HEXVADDR N HEX1 ... HEXN     one per translation, IDs dense from 0 in order; a guest
 *                                      block translated twice gets two records
 *   seg K P ID1 C1 ... IDP CP          segment K (0..S-1): P pairs (TB id, executions), nonzero only
 *   mem K L0 S0 L1 S1 ... LR SR        segment K loads/stores per region bucket (mem=on only)
 *   msite K P A1 B1 L1 S1 ... AP BP LP SP  segment K (mem=on only): P quadruples (instruction
 *                                      HEXADDR, region bucket, loads, stores), nonzero only, in no
 *                                      particular order, an address possibly more than once (a block
 *                                      translated twice); they add up to the segment's mem record
 *   edge K P S1 D1 C1 ... SP DP CP     segment K (edges=on only): P triples (source TB id,
 *                                      destination TB id, transitions), nonzero only, in no
 *                                      particular order; the host derives taken / not-taken
 *                                      counts of each block's final branch from them
 *   icache G LINE SETS WAYS PF HEXSTART HEXEND   one per icache= geometry (G 0..), as given
 *   cache K G L M P                    segment K, geometry G (icache= only): line lookups, misses,
 *                                      lines served by the prefetch buffer (neither counts as the
 *                                      other); L = hits + M + P
 *   cmiss K G P ID1 M1 ... IDP MP      segment K, geometry G: P pairs (TB id, misses), nonzero only;
 *                                      they add up to the cache record's M
 *   dcache G LINE SETS WAYS HEXSTART HEXEND   one per dcache= geometry (G 0..), as given
 *   dstat K G L M                      segment K, data cache G: load lookups, misses
 *   dsite K G P A1 M1 ... AP MP        segment K, data cache G: P pairs (instruction HEXADDR, misses),
 *                                      nonzero only; they add up to the dstat record's M
 *   entry HEX                          one per entry cut (entry= given only), in argument order
 *   cut K HEX X | cut K -              entry= given only: what closed segment K - the mark or entry
 *                                      at HEX (X = 1: exactly before that instruction, 0: at TB
 *                                      granularity, the TB holding HEX counted in segment K), or
 *                                      "-" for the end of the run
 *   end T S                            trailer: T tb records, S segments (detects truncation)
 * The file is written to PATH.tmp and renamed to PATH, so a reader never sees a partial dump.
 *
 * Threads: MCUs have one vCPU.  Translation, snapshots and the dump take one mutex; the inline
 * counters are plain (non-atomic) adds, exact with one vCPU; memory counters use relaxed atomics.
 * The edge table is touched only by the vCPU thread (and by the exit dump after it stopped).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

TWIN_EXPORT int qemu_plugin_version = TWIN_PLUGIN_API_VERSION;

enum { CHUNK_RECORDS = 1024, MAX_REGIONS = 8, MAX_NAME = 32, MAX_ENTRIES = 64, MAX_CACHES = 4 };

/* One translated block.  Records live in fixed-size chunks that never move, so the address
 * of `count` handed to QEMU for the inline add stays valid for the whole run. */
struct tb_record {
    uint64_t count;    /* executions so far (inline add) */
    uint64_t last;     /* value of count at the previous snapshot */
    uint64_t vaddr;
    uint32_t n_insns;
    uint64_t *insns;   /* n_insns instruction vaddrs */
    uint64_t end;      /* one past its last instruction byte */
    uint64_t miss[MAX_CACHES][2];   /* icache= misses so far, at the previous snapshot */
};

/* One simulated instruction cache: tags[set * ways ..] most recently used first, UINT64_MAX empty. */
struct cache {
    uint32_t line_shift, sets, ways;
    bool prefetch;
    uint64_t start, end;        /* the window of addresses it serves */
    uint64_t *tags;
    uint64_t pf_line;           /* the line in the prefetch buffer, UINT64_MAX none */
    uint64_t now[3], last[3];   /* lookups, misses, prefetched */
};

struct region {
    char name[MAX_NAME];
    uint64_t start, end;
};

struct pair {
    uint32_t id;
    uint64_t delta;
};

/* Configuration from the arguments. */
static const char *out_path;
static bool have_mark;
static uint64_t mark_vaddr;
static bool mem_on;
static struct region regions[MAX_REGIONS];
static unsigned n_regions;
static char target_name[MAX_NAME] = "?";
static uint64_t entry_vaddrs[MAX_ENTRIES];
static struct cache caches[MAX_CACHES];
static unsigned n_caches;
static struct cache dcaches[MAX_CACHES];   /* data caches (dcache=, mem=on): no prefetch */
static unsigned n_dcaches;
static uint64_t *dcache_segs;   /* n_segs * MAX_CACHES * 2 deltas: lookups, misses */
static struct miss_delta *dsite_deltas;
static size_t n_dsite_deltas, dsite_deltas_cap;
static size_t *dsite_seg_start;
static uint64_t *cache_segs;    /* n_segs * MAX_CACHES * 3 deltas */
struct miss_delta {   /* a cache's misses in one segment, of a TB (icache=) or an instruction (dcache=) */
    uint64_t key;     /* the TB id, or the instruction's address */
    uint32_t cache;
    uint64_t misses;
};
static struct miss_delta *miss_deltas;
static size_t n_miss_deltas, miss_deltas_cap;
static size_t *miss_seg_start;  /* per segment: miss_deltas[miss_seg_start[k] .. miss_seg_start[k+1]) */
static uint32_t last_cache_tb;  /* the TB whose lookups were made last, and their misses */
static bool have_last_cache_tb;
static uint64_t last_tb_stats[MAX_CACHES][3];   /* lookups, misses, prefetched */
static unsigned n_entries;

/* Entry cuts: what closed each segment (entry= given only). */
struct cut {
    uint64_t vaddr;   /* UINT64_MAX: the end of the run */
    bool exact;
};
static struct cut *cuts;
static struct cut pending_cut = {UINT64_MAX, false};

/* One registered entry-cut callback: its TB and the instruction's index in it. */
struct entry_site {
    uint32_t tb_id;
    uint32_t index;
    uint64_t vaddr;
};

/* TB records. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct tb_record **chunks;
static size_t n_chunks, chunks_cap;
static uint32_t n_tbs;

/* Segments: pairs[seg_start[k] .. seg_start[k+1]) belong to segment k. */
static struct pair *pairs;
static size_t n_pairs, pairs_cap;
static size_t *seg_start;
static size_t n_segs, segs_cap;

/* Edge counts: open-addressing hash table keyed by (src << 32 | dst) + 1 (0 = empty slot),
 * linear probing, grown at half load.  Counts are reset (keys kept) at each snapshot. */
struct edge_slot {
    uint64_t key;
    uint64_t count;
};
struct edge {
    uint32_t src, dst;
    uint64_t count;
};
static bool edges_on;
static struct edge_slot *edge_tab;
static size_t edge_cap, edge_used; /* edge_cap is a power of two */
static uint32_t prev_tb;
static bool have_prev;
static struct edge *edge_list; /* per segment: edge_list[edge_seg_start[k] .. edge_seg_start[k+1]) */
static size_t n_edges, edges_cap;
static size_t *edge_seg_start;

/* Memory counters: [bucket][0 = loads, 1 = stores]; bucket n_regions is "elsewhere". */
static uint64_t mem_now[MAX_REGIONS + 1][2];
static uint64_t mem_last[MAX_REGIONS + 1][2];
static uint64_t *mem_segs; /* n_segs * (MAX_REGIONS + 1) * 2 deltas */

/* The same per instruction (mem=on): one site per translated instruction, its counters allocated at
 * its first access (c[4 b + s]: now, c[4 b + 2 + s]: at the last snapshot; s 0 = load, 1 = store),
 * the sites with counters chained from touched_sites. Per segment, the nonzero deltas. */
struct mem_site {
    uint64_t vaddr;
    uint64_t *c;
    struct mem_site *next;
};
static struct mem_site *touched_sites;
struct site_delta {
    uint64_t vaddr;
    uint32_t bucket;
    uint64_t loads, stores;
};
static struct site_delta *site_deltas;
static size_t n_site_deltas, site_deltas_cap;
static size_t *site_seg_start; /* per segment: site_deltas[site_seg_start[k] .. site_seg_start[k+1]) */

static void *xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size);
    if (!q) {
        fprintf(stderr, "twin_plugin: out of memory\n");
        abort();
    }
    return q;
}

static struct tb_record *record_at(uint32_t id)
{
    return &chunks[id / CHUNK_RECORDS][id % CHUNK_RECORDS];
}

/* Append a new zeroed record; caller holds the lock. */
static struct tb_record *new_record(void)
{
    if (n_tbs % CHUNK_RECORDS == 0) {
        if (n_chunks == chunks_cap) {
            chunks_cap = chunks_cap ? 2 * chunks_cap : 16;
            chunks = xrealloc(chunks, chunks_cap * sizeof *chunks);
        }
        chunks[n_chunks] = calloc(CHUNK_RECORDS, sizeof(struct tb_record));
        if (!chunks[n_chunks]) {
            fprintf(stderr, "twin_plugin: out of memory\n");
            abort();
        }
        n_chunks++;
    }
    return record_at(n_tbs++);
}

static size_t edge_slot_of(uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (edge_cap - 1);
}

static void edge_grow(void)
{
    struct edge_slot *old = edge_tab;
    size_t old_cap = edge_cap;
    edge_cap = edge_cap ? 2 * edge_cap : 4096;
    edge_tab = calloc(edge_cap, sizeof *edge_tab);
    if (!edge_tab) {
        fprintf(stderr, "twin_plugin: out of memory\n");
        abort();
    }
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].key) {
            size_t j = edge_slot_of(old[i].key);
            while (edge_tab[j].key) {
                j = (j + 1) & (edge_cap - 1);
            }
            edge_tab[j] = old[i];
        }
    }
    free(old);
}

static void edge_add(uint32_t src, uint32_t dst)
{
    uint64_t key = (((uint64_t)src << 32) | dst) + 1;
    size_t j = edge_slot_of(key);
    while (edge_tab[j].key) {
        if (edge_tab[j].key == key) {
            edge_tab[j].count++;
            return;
        }
        j = (j + 1) & (edge_cap - 1);
    }
    if (2 * (edge_used + 1) > edge_cap) {
        edge_grow();
        edge_add(src, dst);
        return;
    }
    edge_tab[j].key = key;
    edge_tab[j].count = 1;
    edge_used++;
}

/* Move the nonzero edge counts into the current segment's list.  Caller holds the lock. */
static void snapshot_edges(void)
{
    for (size_t i = 0; i < edge_cap; i++) {
        struct edge_slot *e = &edge_tab[i];
        if (!e->count) {
            continue;
        }
        if (n_edges == edges_cap) {
            edges_cap = edges_cap ? 2 * edges_cap : 4096;
            edge_list = xrealloc(edge_list, edges_cap * sizeof *edge_list);
        }
        uint64_t k = e->key - 1;
        edge_list[n_edges].src = (uint32_t)(k >> 32);
        edge_list[n_edges].dst = (uint32_t)k;
        edge_list[n_edges].count = e->count;
        n_edges++;
        e->count = 0;
    }
}

static void on_tb_exec(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    uint32_t id = (uint32_t)(uintptr_t)userdata;
    if (have_prev) {
        edge_add(prev_tb, id);
    }
    prev_tb = id;
    have_prev = true;
}

/* Look line `line` up in cache c: 0 hit, 1 miss, 2 served by the prefetch buffer.  True LRU. */
static int cache_access(struct cache *c, uint64_t line)
{
    uint64_t *set = &c->tags[(line & (c->sets - 1)) * c->ways];
    c->now[0]++;
    if (set[0] == line) {   /* the most recently used line of its set: a hit, nothing moves */
        if (c->prefetch) {
            c->pf_line = line + 1;
        }
        return 0;
    }
    int result = 1;
    uint32_t w = 0;
    while (w < c->ways && set[w] != line) {
        w++;
    }
    if (w < c->ways) {
        result = 0;
    } else {
        w = c->ways - 1;   /* evict the least recently used */
        if (line == c->pf_line) {
            result = 2;
        }
    }
    memmove(&set[1], &set[0], w * sizeof *set);
    set[0] = line;
    if (c->prefetch) {
        c->pf_line = line + 1;
    }
    if (result) {
        c->now[result]++;
    }
    return result;
}

static void on_tb_cache(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    uint32_t id = (uint32_t)(uintptr_t)userdata;
    struct tb_record *r = record_at(id);   /* the record is complete before its TB can run */
    bool again = have_last_cache_tb && last_cache_tb == id;
    last_cache_tb = id;
    have_last_cache_tb = true;
    for (unsigned g = 0; g < n_caches; g++) {
        struct cache *c = &caches[g];
        uint64_t before[3] = {c->now[0], c->now[1], c->now[2]};
        if (again && last_tb_stats[g][1] == 0 && last_tb_stats[g][2] == 0) {
            /* The same TB again, all of its lines hit last time: they hit again, each set's order and
             * the prefetch buffer end as they are (a tight loop's block costs one add). */
            c->now[0] += last_tb_stats[g][0];
        } else if (r->vaddr >= c->start && r->end <= c->end) {
            for (uint64_t line = r->vaddr >> c->line_shift; line <= (r->end - 1) >> c->line_shift; line++) {
                cache_access(c, line);
            }
        }
        for (int i = 0; i < 3; i++) {
            last_tb_stats[g][i] = c->now[i] - before[i];
        }
        r->miss[g][0] += last_tb_stats[g][1];
    }
}

/* Move the last TB's lookups of every cache out of (sign -1) or back into (+1) the running counts. */
static void shift_last_misses(int sign)
{
    struct tb_record *r = record_at(last_cache_tb);
    for (unsigned g = 0; g < n_caches; g++) {
        r->miss[g][0] += (uint64_t)sign * last_tb_stats[g][1];
        for (int i = 0; i < 3; i++) {
            caches[g].now[i] += (uint64_t)sign * last_tb_stats[g][i];
        }
    }
}

/* Close the current segment: store nonzero counter deltas.  Caller holds the lock. */
static void snapshot(void)
{
    if (n_segs + 1 >= segs_cap) {
        segs_cap = segs_cap ? 2 * segs_cap : 64;
        seg_start = xrealloc(seg_start, segs_cap * sizeof *seg_start);
        if (edges_on) {
            edge_seg_start = xrealloc(edge_seg_start, segs_cap * sizeof *edge_seg_start);
        }
        if (mem_on) {
            mem_segs = xrealloc(mem_segs, segs_cap * (MAX_REGIONS + 1) * 2 * sizeof *mem_segs);
            site_seg_start = xrealloc(site_seg_start, segs_cap * sizeof *site_seg_start);
        }
        if (n_entries) {
            cuts = xrealloc(cuts, segs_cap * sizeof *cuts);
        }
        if (n_caches) {
            cache_segs = xrealloc(cache_segs, segs_cap * MAX_CACHES * 3 * sizeof *cache_segs);
            miss_seg_start = xrealloc(miss_seg_start, segs_cap * sizeof *miss_seg_start);
        }
        if (n_dcaches) {
            dcache_segs = xrealloc(dcache_segs, segs_cap * MAX_CACHES * 2 * sizeof *dcache_segs);
            dsite_seg_start = xrealloc(dsite_seg_start, segs_cap * sizeof *dsite_seg_start);
        }
    }
    if (n_entries) {
        cuts[n_segs] = pending_cut;
    }
    if (n_segs == 0) {
        seg_start[0] = 0;
        if (edges_on) {
            edge_seg_start[0] = 0;
        }
        if (mem_on) {
            site_seg_start[0] = 0;
        }
        if (n_caches) {
            miss_seg_start[0] = 0;
        }
        if (n_dcaches) {
            dsite_seg_start[0] = 0;
        }
    }
    for (uint32_t id = 0; id < n_tbs; id++) {
        struct tb_record *r = record_at(id);
        uint64_t now = r->count;
        if (now == r->last) {
            continue;
        }
        if (n_pairs == pairs_cap) {
            pairs_cap = pairs_cap ? 2 * pairs_cap : 4096;
            pairs = xrealloc(pairs, pairs_cap * sizeof *pairs);
        }
        pairs[n_pairs].id = id;
        pairs[n_pairs].delta = now - r->last;
        n_pairs++;
        r->last = now;
        for (unsigned g = 0; g < n_caches; g++) {
            uint64_t dm = r->miss[g][0] - r->miss[g][1];
            if (!dm) {
                continue;
            }
            if (n_miss_deltas == miss_deltas_cap) {
                miss_deltas_cap = miss_deltas_cap ? 2 * miss_deltas_cap : 4096;
                miss_deltas = xrealloc(miss_deltas, miss_deltas_cap * sizeof *miss_deltas);
            }
            miss_deltas[n_miss_deltas++] = (struct miss_delta){id, g, dm};
            r->miss[g][1] = r->miss[g][0];
        }
    }
    if (n_caches) {
        for (unsigned g = 0; g < n_caches; g++) {
            for (int i = 0; i < 3; i++) {
                cache_segs[(n_segs * MAX_CACHES + g) * 3 + i] = caches[g].now[i] - caches[g].last[i];
                caches[g].last[i] = caches[g].now[i];
            }
        }
        miss_seg_start[n_segs + 1] = n_miss_deltas;
    }
    if (mem_on) {
        uint64_t *row = &mem_segs[n_segs * (MAX_REGIONS + 1) * 2];
        for (unsigned b = 0; b <= n_regions; b++) {
            for (int s = 0; s < 2; s++) {
                uint64_t now = __atomic_load_n(&mem_now[b][s], __ATOMIC_RELAXED);
                row[2 * b + s] = now - mem_last[b][s];
                mem_last[b][s] = now;
            }
        }
        for (struct mem_site *m = touched_sites; m; m = m->next) {
            for (unsigned b = 0; b <= n_regions; b++) {
                uint64_t *c = &m->c[4 * b];
                uint64_t dl = c[0] - c[2], ds = c[1] - c[3];
                if (!dl && !ds) {
                    continue;
                }
                if (n_site_deltas == site_deltas_cap) {
                    site_deltas_cap = site_deltas_cap ? 2 * site_deltas_cap : 4096;
                    site_deltas = xrealloc(site_deltas, site_deltas_cap * sizeof *site_deltas);
                }
                site_deltas[n_site_deltas++] = (struct site_delta){m->vaddr, b, dl, ds};
                c[2] = c[0];
                c[3] = c[1];
            }
            for (unsigned g = 0; g < n_dcaches; g++) {
                uint64_t *dm = &m->c[(n_regions + 1) * 4 + 2 * g];
                if (dm[0] == dm[1]) {
                    continue;
                }
                if (n_dsite_deltas == dsite_deltas_cap) {
                    dsite_deltas_cap = dsite_deltas_cap ? 2 * dsite_deltas_cap : 1024;
                    dsite_deltas = xrealloc(dsite_deltas, dsite_deltas_cap * sizeof *dsite_deltas);
                }
                dsite_deltas[n_dsite_deltas++] = (struct miss_delta){m->vaddr, g, dm[0] - dm[1]};
                dm[1] = dm[0];
            }
        }
        site_seg_start[n_segs + 1] = n_site_deltas;
        if (n_dcaches) {
            for (unsigned g = 0; g < n_dcaches; g++) {
                for (int i = 0; i < 2; i++) {
                    dcache_segs[(n_segs * MAX_CACHES + g) * 2 + i] = dcaches[g].now[i] - dcaches[g].last[i];
                    dcaches[g].last[i] = dcaches[g].now[i];
                }
            }
            dsite_seg_start[n_segs + 1] = n_dsite_deltas;
        }
    }
    if (edges_on) {
        snapshot_edges();
    }
    n_segs++;
    seg_start[n_segs] = n_pairs;
    if (edges_on) {
        edge_seg_start[n_segs] = n_edges;
    }
}

static void on_mark(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    pthread_mutex_lock(&lock);
    pending_cut.vaddr = mark_vaddr;
    pending_cut.exact = false;
    snapshot();
    pthread_mutex_unlock(&lock);
}

static void on_entry(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    const struct entry_site *site = userdata;
    pthread_mutex_lock(&lock);
    struct tb_record *r = record_at(site->tb_id);
    bool exact = site->index == 0 && r->count > r->last;
    pending_cut.vaddr = site->vaddr;
    pending_cut.exact = exact;
    if (exact) {
        /* This TB's inline add already counted the execution that is starting: it belongs to the
         * segment that begins here.  One vCPU: nothing else touches the counter meanwhile. */
        r->count -= 1;
        if (n_caches && last_cache_tb == site->tb_id) {
            shift_last_misses(-1);
            snapshot();
            shift_last_misses(+1);
        } else {
            snapshot();
        }
        r->count += 1;
    } else {
        snapshot();
    }
    pthread_mutex_unlock(&lock);
}

static void on_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                   void *userdata)
{
    (void)vcpu_index;
    unsigned b = 0;
    while (b < n_regions && !(vaddr >= regions[b].start && vaddr < regions[b].end)) {
        b++;
    }
    int is_store = qemu_plugin_mem_is_store(info) ? 1 : 0;
    __atomic_fetch_add(&mem_now[b][is_store], 1, __ATOMIC_RELAXED);
    struct mem_site *m = userdata;   /* one vCPU: no other thread touches the site */
    if (!m->c) {   /* per region: loads, stores now and at the last snapshot; per data cache: misses */
        m->c = calloc((size_t)(n_regions + 1) * 4 + (size_t)n_dcaches * 2, sizeof *m->c);
        if (!m->c) {
            fprintf(stderr, "twin_plugin: out of memory\n");
            abort();
        }
        m->next = touched_sites;
        touched_sites = m;
    }
    m->c[4 * b + is_store] += 1;
    for (unsigned g = 0; g < n_dcaches && !is_store; g++) {
        struct cache *c = &dcaches[g];
        if (vaddr >= c->start && vaddr < c->end && cache_access(c, vaddr >> c->line_shift) == 1) {
            m->c[(n_regions + 1) * 4 + 2 * g] += 1;
        }
    }
}

static void on_tb_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t *insns = malloc((n ? n : 1) * sizeof *insns);
    if (!insns) {
        fprintf(stderr, "twin_plugin: out of memory\n");
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        insns[i] = qemu_plugin_insn_vaddr(insn);
        if (have_mark && insns[i] == mark_vaddr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        if (mem_on) {
            /* The rw filter is unreliable in QEMU 7.2: ask for both, test is_store(). */
            struct mem_site *site = calloc(1, sizeof *site);   /* lives as long as the TB may run */
            if (!site) {
                fprintf(stderr, "twin_plugin: out of memory\n");
                abort();
            }
            site->vaddr = insns[i];
            qemu_plugin_register_vcpu_mem_cb(insn, on_mem, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, site);
        }
    }

    pthread_mutex_lock(&lock);
    struct tb_record *r = new_record();
    r->vaddr = qemu_plugin_tb_vaddr(tb);
    r->n_insns = (uint32_t)n;
    r->insns = insns;
    r->end = n ? insns[n - 1] + qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, n - 1)) : r->vaddr;
    uint32_t tb_id = n_tbs - 1;
    pthread_mutex_unlock(&lock);

    for (size_t i = 0; i < n && n_entries; i++) {
        for (unsigned e = 0; e < n_entries; e++) {
            if (insns[i] != entry_vaddrs[e]) {
                continue;
            }
            struct entry_site *site = malloc(sizeof *site);   /* lives as long as the TB may run */
            if (!site) {
                fprintf(stderr, "twin_plugin: out of memory\n");
                abort();
            }
            site->tb_id = tb_id;
            site->index = (uint32_t)i;
            site->vaddr = insns[i];
            qemu_plugin_register_vcpu_insn_exec_cb(qemu_plugin_tb_get_insn(tb, i), on_entry,
                                                   QEMU_PLUGIN_CB_NO_REGS, site);
            break;
        }
    }

    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &r->count, 1);
    if (edges_on) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)tb_id);
    }
    if (n_caches && n) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_cache, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)tb_id);
    }
}

/* One "cmiss"/"dsite" record: segment k's misses of cache g, keys as decimal TB ids or hex addresses. */
static void write_misses(FILE *f, const char *tag, size_t k, unsigned g, const struct miss_delta *d,
                         const size_t *seg_start, bool hex)
{
    size_t p = 0;
    for (size_t i = seg_start[k]; i < seg_start[k + 1]; i++) {
        p += d[i].cache == g;
    }
    fprintf(f, "%s %zu %u %zu", tag, k, g, p);
    for (size_t i = seg_start[k]; i < seg_start[k + 1]; i++) {
        if (d[i].cache == g) {
            fprintf(f, hex ? " %" PRIx64 " %" PRIu64 : " %" PRIu64 " %" PRIu64, d[i].key, d[i].misses);
        }
    }
    fputc('\n', f);
}

static void write_dump(FILE *f)
{
    fprintf(f, "TWINPROF 1\n");
    fprintf(f, "target %s\n", target_name);
    if (have_mark) {
        fprintf(f, "mark %" PRIx64 "\n", mark_vaddr);
    } else {
        fprintf(f, "mark -\n");
    }
    for (unsigned b = 0; b < n_regions; b++) {
        fprintf(f, "region %u %s %" PRIx64 " %" PRIx64 "\n", b, regions[b].name, regions[b].start,
                regions[b].end);
    }
    for (uint32_t id = 0; id < n_tbs; id++) {
        struct tb_record *r = record_at(id);
        fprintf(f, "tb %" PRIu32 " %" PRIx64 " %" PRIu32, id, r->vaddr, r->n_insns);
        for (uint32_t i = 0; i < r->n_insns; i++) {
            fprintf(f, " %" PRIx64, r->insns[i]);
        }
        fputc('\n', f);
    }
    for (size_t k = 0; k < n_segs; k++) {
        fprintf(f, "seg %zu %zu", k, seg_start[k + 1] - seg_start[k]);
        for (size_t p = seg_start[k]; p < seg_start[k + 1]; p++) {
            fprintf(f, " %" PRIu32 " %" PRIu64, pairs[p].id, pairs[p].delta);
        }
        fputc('\n', f);
    }
    if (mem_on) {
        for (size_t k = 0; k < n_segs; k++) {
            const uint64_t *row = &mem_segs[k * (MAX_REGIONS + 1) * 2];
            fprintf(f, "mem %zu", k);
            for (unsigned b = 0; b <= n_regions; b++) {
                fprintf(f, " %" PRIu64 " %" PRIu64, row[2 * b], row[2 * b + 1]);
            }
            fputc('\n', f);
        }
        for (size_t k = 0; k < n_segs; k++) {
            fprintf(f, "msite %zu %zu", k, site_seg_start[k + 1] - site_seg_start[k]);
            for (size_t i = site_seg_start[k]; i < site_seg_start[k + 1]; i++) {
                const struct site_delta *d = &site_deltas[i];
                fprintf(f, " %" PRIx64 " %" PRIu32 " %" PRIu64 " %" PRIu64, d->vaddr, d->bucket, d->loads,
                        d->stores);
            }
            fputc('\n', f);
        }
    }
    if (edges_on) {
        for (size_t k = 0; k < n_segs; k++) {
            fprintf(f, "edge %zu %zu", k, edge_seg_start[k + 1] - edge_seg_start[k]);
            for (size_t e = edge_seg_start[k]; e < edge_seg_start[k + 1]; e++) {
                fprintf(f, " %" PRIu32 " %" PRIu32 " %" PRIu64, edge_list[e].src, edge_list[e].dst,
                        edge_list[e].count);
            }
            fputc('\n', f);
        }
    }
    for (unsigned g = 0; g < n_caches; g++) {
        const struct cache *c = &caches[g];
        fprintf(f, "icache %u %u %" PRIu32 " %" PRIu32 " %d %" PRIx64 " %" PRIx64 "\n", g, 1u << c->line_shift,
                c->sets, c->ways, c->prefetch ? 1 : 0, c->start, c->end);
    }
    for (size_t k = 0; k < n_segs && n_caches; k++) {
        for (unsigned g = 0; g < n_caches; g++) {
            const uint64_t *d = &cache_segs[(k * MAX_CACHES + g) * 3];
            fprintf(f, "cache %zu %u %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", k, g, d[0], d[1], d[2]);
            write_misses(f, "cmiss", k, g, miss_deltas, miss_seg_start, false);
        }
    }
    for (unsigned g = 0; g < n_dcaches; g++) {
        const struct cache *c = &dcaches[g];
        fprintf(f, "dcache %u %u %" PRIu32 " %" PRIu32 " %" PRIx64 " %" PRIx64 "\n", g, 1u << c->line_shift,
                c->sets, c->ways, c->start, c->end);
    }
    for (size_t k = 0; k < n_segs && n_dcaches; k++) {
        for (unsigned g = 0; g < n_dcaches; g++) {
            const uint64_t *d = &dcache_segs[(k * MAX_CACHES + g) * 2];
            fprintf(f, "dstat %zu %u %" PRIu64 " %" PRIu64 "\n", k, g, d[0], d[1]);
            write_misses(f, "dsite", k, g, dsite_deltas, dsite_seg_start, true);
        }
    }
    for (unsigned e = 0; e < n_entries; e++) {
        fprintf(f, "entry %" PRIx64 "\n", entry_vaddrs[e]);
    }
    for (size_t k = 0; k < n_segs && n_entries; k++) {
        if (cuts[k].vaddr == UINT64_MAX) {
            fprintf(f, "cut %zu -\n", k);
        } else {
            fprintf(f, "cut %zu %" PRIx64 " %d\n", k, cuts[k].vaddr, cuts[k].exact ? 1 : 0);
        }
    }
    fprintf(f, "end %" PRIu32 " %zu\n", n_tbs, n_segs);
}

static void on_exit_dump(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    pthread_mutex_lock(&lock);
    pending_cut.vaddr = UINT64_MAX;
    pending_cut.exact = false;
    snapshot(); /* the segment after the last mark */

    size_t len = strlen(out_path) + 5;
    char *tmp = malloc(len);
    if (!tmp) {
        pthread_mutex_unlock(&lock);
        return;
    }
    snprintf(tmp, len, "%s.tmp", out_path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "twin_plugin: cannot write %s: %s\n", tmp, strerror(errno));
    } else {
        write_dump(f);
        if (fclose(f) != 0 || rename(tmp, out_path) != 0) {
            fprintf(stderr, "twin_plugin: cannot write %s: %s\n", out_path, strerror(errno));
        }
    }
    free(tmp);
    pthread_mutex_unlock(&lock);
}

/* Parse "0x..." (or decimal) into *out; true on success. */
static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end != '\0') {
        return false;
    }
    *out = v;
    return true;
}

/* icache=LINE:SETS:WAYS:PF:0xSTART:0xEND, or (data) dcache=LINE:SETS:WAYS:0xSTART:0xEND */
static bool parse_cache(const char *spec, bool data)
{
    unsigned *count = data ? &n_dcaches : &n_caches;
    const char *name = data ? "dcache" : "icache";
    if (*count == MAX_CACHES) {
        fprintf(stderr, "twin_plugin: at most %d %s= geometries\n", MAX_CACHES, name);
        return false;
    }
    uint64_t v[6] = {0};
    char buf[160];
    if (strlen(spec) >= sizeof buf) {
        fprintf(stderr, "twin_plugin: icache= spec too long: '%s'\n", spec);
        return false;
    }
    strcpy(buf, spec);
    char *save = NULL, *tok = strtok_r(buf, ":", &save);
    int n = 0;
    for (; tok && n < 6; tok = strtok_r(NULL, ":", &save)) {
        if (data && n == 3) {
            n++;   /* a data cache has no PF field */
        }
        if (!parse_u64(tok, &v[n++])) {
            n = -1;
            break;
        }
    }
    bool pow2 = n == 6 && v[0] && !(v[0] & (v[0] - 1)) && v[1] && !(v[1] & (v[1] - 1));
    if (tok || !pow2 || v[2] == 0 || v[2] > 1024 || v[1] > (1u << 20) || v[3] > 1 || v[5] <= v[4]) {
        fprintf(stderr, "twin_plugin: bad %s '%s' (want LINE:SETS:WAYS%s:0xSTART:0xEND, LINE and SETS powers "
                "of two, 1..1024 ways%s)\n", name, spec, data ? "" : ":PF", data ? "" : ", PF 0 or 1");
        return false;
    }
    struct cache *c = data ? &dcaches[n_dcaches] : &caches[n_caches];
    c->line_shift = (uint32_t)__builtin_ctzll(v[0]);
    c->sets = (uint32_t)v[1];
    c->ways = (uint32_t)v[2];
    c->prefetch = v[3] == 1;
    c->start = v[4];
    c->end = v[5];
    c->pf_line = UINT64_MAX;
    c->tags = malloc((size_t)c->sets * c->ways * sizeof *c->tags);
    if (!c->tags) {
        fprintf(stderr, "twin_plugin: out of memory\n");
        return false;
    }
    memset(c->tags, 0xff, (size_t)c->sets * c->ways * sizeof *c->tags);
    (*count)++;
    return true;
}

/* region=NAME:0xSTART:0xEND */
static bool parse_region(const char *spec)
{
    if (n_regions == MAX_REGIONS) {
        fprintf(stderr, "twin_plugin: at most %d regions\n", MAX_REGIONS);
        return false;
    }
    struct region *r = &regions[n_regions];
    const char *c1 = strchr(spec, ':');
    const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    size_t name_len = c1 ? (size_t)(c1 - spec) : 0;
    if (!c2 || name_len == 0 || name_len >= MAX_NAME) {
        fprintf(stderr, "twin_plugin: bad region '%s' (want NAME:0xSTART:0xEND)\n", spec);
        return false;
    }
    char start[32];
    size_t start_len = (size_t)(c2 - c1 - 1);
    if (start_len == 0 || start_len >= sizeof start) {
        fprintf(stderr, "twin_plugin: bad region start in '%s'\n", spec);
        return false;
    }
    memcpy(start, c1 + 1, start_len);
    start[start_len] = '\0';
    memcpy(r->name, spec, name_len);
    r->name[name_len] = '\0';
    for (size_t i = 0; i < name_len; i++) {
        if (r->name[i] == ' ' || r->name[i] == '\t') {
            fprintf(stderr, "twin_plugin: region name must not contain blanks: '%s'\n", spec);
            return false;
        }
    }
    if (!parse_u64(start, &r->start) || !parse_u64(c2 + 1, &r->end) || r->end <= r->start) {
        fprintf(stderr, "twin_plugin: bad region bounds in '%s'\n", spec);
        return false;
    }
    n_regions++;
    return true;
}

static bool parse_arg(const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq) {
        fprintf(stderr, "twin_plugin: argument '%s' is not key=value\n", arg);
        return false;
    }
    size_t klen = (size_t)(eq - arg);
    const char *val = eq + 1;
    if (klen == 3 && strncmp(arg, "out", 3) == 0) {
        out_path = val;
    } else if (klen == 4 && strncmp(arg, "mark", 4) == 0) {
        if (!parse_u64(val, &mark_vaddr)) {
            fprintf(stderr, "twin_plugin: bad mark address '%s'\n", val);
            return false;
        }
        have_mark = true;
    } else if (klen == 5 && strncmp(arg, "entry", 5) == 0) {
        if (n_entries == MAX_ENTRIES) {
            fprintf(stderr, "twin_plugin: at most %d entry cuts\n", MAX_ENTRIES);
            return false;
        }
        if (!parse_u64(val, &entry_vaddrs[n_entries])) {
            fprintf(stderr, "twin_plugin: bad entry address '%s'\n", val);
            return false;
        }
        n_entries++;
    } else if (klen == 3 && strncmp(arg, "mem", 3) == 0) {
        if (strcmp(val, "on") == 0) {
            mem_on = true;
        } else if (strcmp(val, "off") == 0) {
            mem_on = false;
        } else {
            fprintf(stderr, "twin_plugin: mem= wants on or off, not '%s'\n", val);
            return false;
        }
    } else if (klen == 5 && strncmp(arg, "edges", 5) == 0) {
        if (strcmp(val, "on") == 0) {
            edges_on = true;
        } else if (strcmp(val, "off") == 0) {
            edges_on = false;
        } else {
            fprintf(stderr, "twin_plugin: edges= wants on or off, not '%s'\n", val);
            return false;
        }
    } else if (klen == 6 && strncmp(arg, "region", 6) == 0) {
        return parse_region(val);
    } else if (klen == 6 && strncmp(arg, "icache", 6) == 0) {
        return parse_cache(val, false);
    } else if (klen == 6 && strncmp(arg, "dcache", 6) == 0) {
        return parse_cache(val, true);
    } else {
        fprintf(stderr, "twin_plugin: unknown argument '%s'\n", arg);
        return false;
    }
    return true;
}

TWIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                    char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (!parse_arg(argv[i])) {
            return -1;
        }
    }
    if (!out_path || !*out_path) {
        fprintf(stderr, "twin_plugin: out=PATH is required\n");
        return -1;
    }
    if (n_dcaches && !mem_on) {
        fprintf(stderr, "twin_plugin: dcache= simulates loads: it needs mem=on\n");
        return -1;
    }
    if (info && info->target_name) {
        snprintf(target_name, sizeof target_name, "%s", info->target_name);
    }
    if (edges_on) {
        edge_grow();
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_translate);
    qemu_plugin_register_atexit_cb(id, on_exit_dump, NULL);
    return 0;
}
