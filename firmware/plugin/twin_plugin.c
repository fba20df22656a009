/*
 * twin_plugin.c - QEMU TCG plugin that counts exactly what the firmware executes.
 *
 * Design (cheap by construction):
 *   - every translated block (TB) gets a record {id, start vaddr, insn vaddrs} and a 64-bit
 *     counter at a stable address; an inline "add 1" runs on every TB execution;
 *   - a call to the firmware's twin_mark() (arg mark=) snapshots all counters: the nonzero
 *     deltas since the previous snapshot form one *segment*;
 *   - everything else (per-instruction, per-class, per-function counts) is derived on the host
 *     from the dumped TB records and the ELF (twin/profile.py).
 *
 * Arguments (-plugin twin_plugin.so,key=value,...):
 *   out=PATH                  where to write the dump at exit (required)
 *   mark=0xADDR               address of the first instruction of twin_mark (optional)
 *   mem=on|off                count data loads/stores per region (default off; ~4x slower)
 *   region=NAME:0xSTART:0xEND an address range [START, END) for mem mode (repeatable, up to 8)
 *
 * Segments: segment 0 runs from the start to the first mark, segment k from mark k to mark k+1,
 * the last one from the last mark to exit.  A TB counter is incremented when the TB is entered,
 * so the TB that contains the mark instruction is counted in the segment that the mark closes.
 * Memory accesses are counted when they happen.
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
 *   end T S                            trailer: T tb records, S segments (detects truncation)
 * The file is written to PATH.tmp and renamed to PATH, so a reader never sees a partial dump.
 *
 * Threads: MCUs have one vCPU.  Translation, snapshots and the dump take one mutex; the inline
 * counters are plain (non-atomic) adds, exact with one vCPU; memory counters use relaxed atomics.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

TWIN_EXPORT int qemu_plugin_version = TWIN_PLUGIN_API_VERSION;

enum { CHUNK_RECORDS = 1024, MAX_REGIONS = 8, MAX_NAME = 32 };

/* One translated block.  Records live in fixed-size chunks that never move, so the address
 * of `count` handed to QEMU for the inline add stays valid for the whole run. */
struct tb_record {
    uint64_t count;    /* executions so far (inline add) */
    uint64_t last;     /* value of count at the previous snapshot */
    uint64_t vaddr;
    uint32_t n_insns;
    uint64_t *insns;   /* n_insns instruction vaddrs */
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

/* Memory counters: [bucket][0 = loads, 1 = stores]; bucket n_regions is "elsewhere". */
static uint64_t mem_now[MAX_REGIONS + 1][2];
static uint64_t mem_last[MAX_REGIONS + 1][2];
static uint64_t *mem_segs; /* n_segs * (MAX_REGIONS + 1) * 2 deltas */

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

/* Close the current segment: store nonzero counter deltas.  Caller holds the lock. */
static void snapshot(void)
{
    if (n_segs + 1 >= segs_cap) {
        segs_cap = segs_cap ? 2 * segs_cap : 64;
        seg_start = xrealloc(seg_start, segs_cap * sizeof *seg_start);
        if (mem_on) {
            mem_segs = xrealloc(mem_segs, segs_cap * (MAX_REGIONS + 1) * 2 * sizeof *mem_segs);
        }
    }
    if (n_segs == 0) {
        seg_start[0] = 0;
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
    }
    n_segs++;
    seg_start[n_segs] = n_pairs;
}

static void on_mark(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    pthread_mutex_lock(&lock);
    snapshot();
    pthread_mutex_unlock(&lock);
}

static void on_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                   void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    unsigned b = 0;
    while (b < n_regions && !(vaddr >= regions[b].start && vaddr < regions[b].end)) {
        b++;
    }
    int is_store = qemu_plugin_mem_is_store(info) ? 1 : 0;
    __atomic_fetch_add(&mem_now[b][is_store], 1, __ATOMIC_RELAXED);
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
            qemu_plugin_register_vcpu_mem_cb(insn, on_mem, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, NULL);
        }
    }

    pthread_mutex_lock(&lock);
    struct tb_record *r = new_record();
    r->vaddr = qemu_plugin_tb_vaddr(tb);
    r->n_insns = (uint32_t)n;
    r->insns = insns;
    pthread_mutex_unlock(&lock);

    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &r->count, 1);
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
    }
    fprintf(f, "end %" PRIu32 " %zu\n", n_tbs, n_segs);
}

static void on_exit_dump(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    pthread_mutex_lock(&lock);
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
    } else if (klen == 3 && strncmp(arg, "mem", 3) == 0) {
        if (strcmp(val, "on") == 0) {
            mem_on = true;
        } else if (strcmp(val, "off") == 0) {
            mem_on = false;
        } else {
            fprintf(stderr, "twin_plugin: mem= wants on or off, not '%s'\n", val);
            return false;
        }
    } else if (klen == 6 && strncmp(arg, "region", 6) == 0) {
        return parse_region(val);
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
    if (info && info->target_name) {
        snprintf(target_name, sizeof target_name, "%s", info->target_name);
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_translate);
    qemu_plugin_register_atexit_cb(id, on_exit_dump, NULL);
    return 0;
}
