/* Calibration workloads (see workloads.h and docs/protocol.md, WORKLOAD).
 *
 * Micro-kernel loop bodies are inline assembly on Arm (Thumb-2) and RISC-V, so what the twin
 * counts is what was meant: e.g. the ALU body is 16 data-processing instructions plus the loop's
 * decrement and branch. A plain-C fallback keeps any other target building. Each kernel returns a
 * value the host can check (the same on a board and in the emulator). */
#include "workloads.h"

#include "board.h"
#include "crc32.h"
#include "kernels.h"
#include "proto.h"

#define WL_GROUP 32u                /* group size of the quantized LLM-kernel buffers */
#define WL_BLOCK 64u                /* bytes one load/store loop body touches (16 words) */

/* Kernels stay functions of their own, so the profile attributes their instructions by name. */
#define KERNEL static __attribute__((noinline))

#if defined(__arm__) && defined(__ARM_FP) && (__ARM_FP & 4)
#define WL_HARD_FP 1
#endif
/* The hand-written loops use Thumb-2 (three-operand ALU forms without flags, udiv); an ARMv6-M
 * build (Cortex-M0+) runs the C loops instead: their counts are as exactly affine in n. */
#if defined(__arm__) && defined(__ARM_ARCH_ISA_THUMB) && __ARM_ARCH_ISA_THUMB >= 2
#define WL_THUMB2 1
#endif

/* ------------------------------------------------------------------ micro-kernels */

#if defined(WL_THUMB2)
#define LOOP_END(n) "subs %[" n "], %[" n "], #1\n\tbne 1b\n\t"
#elif defined(__riscv)
#define LOOP_END(n) "addi %[" n "], %[" n "], -1\n\tbnez %[" n "], 1b\n\t"
#endif

KERNEL uint32_t k_alu(uint32_t n)
{
    uint32_t a = 0x12345678u, b = 0x9abcdef0u, c = 0x0f0f0f0fu, d = 0x33333333u;
#if defined(WL_THUMB2) || defined(__riscv)
#if defined(WL_THUMB2)
#define OR_OP "orr"
#define XOR_OP "eor"
#else
#define OR_OP "or"
#define XOR_OP "xor"
#endif
    __asm__ volatile("1:\n\t"
                     ".rept 4\n\t"
                     "add %[a], %[a], %[b]\n\t"
                     XOR_OP " %[b], %[b], %[c]\n\t"
                     OR_OP " %[c], %[c], %[d]\n\t"
                     "sub %[d], %[d], %[a]\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n), [a] "+r"(a), [b] "+r"(b), [c] "+r"(c), [d] "+r"(d) : : "cc");
#undef OR_OP
#undef XOR_OP
#else
    for (; n; n--) {
        a += b; b ^= c; c |= d; d -= a;
    }
#endif
    return a ^ b ^ c ^ d;
}

KERNEL uint32_t k_mul(uint32_t n)
{
    uint32_t a = 3, b = 5, c = 7, d = 11;
#if defined(WL_THUMB2) || defined(__riscv)
    __asm__ volatile("1:\n\t"
                     ".rept 4\n\t"
                     "mul %[a], %[a], %[b]\n\t"
                     "mul %[b], %[b], %[c]\n\t"
                     "mul %[c], %[c], %[d]\n\t"
                     "mul %[d], %[d], %[a]\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n), [a] "+r"(a), [b] "+r"(b), [c] "+r"(c), [d] "+r"(d) : : "cc");
#else
    for (; n; n--) {
        a *= b; b *= c; c *= d; d *= a;
    }
#endif
    return a ^ b ^ c ^ d;
}

KERNEL uint32_t k_mac(uint32_t n)
{
    uint32_t a = 1, b = 2, x = 0x01010101u, y = 0x00ff00ffu;
#if defined(WL_THUMB2)
    __asm__ volatile("1:\n\t"
                     ".rept 8\n\t"
                     "mla %[a], %[x], %[y], %[a]\n\t"
                     "mla %[b], %[y], %[x], %[b]\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n), [a] "+r"(a), [b] "+r"(b) : [x] "r"(x), [y] "r"(y) : "cc");
#elif defined(__riscv)
    uint32_t t0, t1;   /* RV32IM has no multiply-accumulate: mul + add */
    __asm__ volatile("1:\n\t"
                     ".rept 4\n\t"
                     "mul %[t0], %[x], %[y]\n\t"
                     "add %[a], %[a], %[t0]\n\t"
                     "mul %[t1], %[y], %[a]\n\t"
                     "add %[b], %[b], %[t1]\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n), [a] "+r"(a), [b] "+r"(b), [t0] "=&r"(t0), [t1] "=&r"(t1)
                     : [x] "r"(x), [y] "r"(y));
#else
    for (; n; n--) {
        a += x * y; b += y * x;
    }
#endif
    return a + 0x9e3779b9u * b;
}

KERNEL uint32_t k_dsp(uint32_t n)
{
    uint32_t acc0 = 0, acc1 = 0, p = 0x00030005u, q = 0x0007fffbu;
#if defined(WL_THUMB2) && defined(__ARM_FEATURE_DSP)
    __asm__ volatile("1:\n\t"
                     ".rept 4\n\t"
                     "smlad %[acc0], %[p], %[q], %[acc0]\n\t"
                     "sadd16 %[p], %[p], %[q]\n\t"
                     "smlad %[acc1], %[q], %[p], %[acc1]\n\t"
                     "qadd16 %[q], %[q], %[p]\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n), [acc0] "+r"(acc0), [acc1] "+r"(acc1), [p] "+r"(p), [q] "+r"(q)
                     : : "cc");
#else
    /* The same packed 16-bit arithmetic in plain C (no DSP extension): what a core without
     * SIMD instructions executes instead. Wrap-around instead of saturation in qadd16. */
    for (; n; n--) {
        for (int k = 0; k < 4; k++) {
            int32_t pl = (int16_t)p, ph = (int16_t)(p >> 16), ql = (int16_t)q, qh = (int16_t)(q >> 16);
            acc0 += (uint32_t)(pl * ql + ph * qh);
            p = ((uint32_t)(pl + ql) & 0xffffu) | (uint32_t)(ph + qh) << 16;
            pl = (int16_t)p; ph = (int16_t)(p >> 16);
            acc1 += (uint32_t)(ql * pl + qh * ph);
            q = ((uint32_t)(ql + pl) & 0xffffu) | (uint32_t)(qh + ph) << 16;
        }
        __asm__ volatile("" : "+r"(p), "+r"(q));   /* keep the loop from being folded */
    }
#endif
    return acc0 ^ acc1 ^ p ^ q;
}


#define OFFSETS "0,4,8,12,16,20,24,28,32,36,40,44,48,52,56,60"
#if defined(WL_THUMB2)
#define MOV "mov"
#define LOAD_AT_P ".irp off," OFFSETS "\n\tldr %[t], [%[p], #\\off]\n\t.endr\n\t"
#define STORE_AT_P ".irp off," OFFSETS "\n\tstr %[n], [%[p], #\\off]\n\t.endr\n\t"
#define NEXT_BLOCK "adds %[p], %[p], #64\n\tsubs %[k], %[k], #1\n\tbne 2b\n\t"
#elif defined(__riscv)
#define MOV "mv"
#define LOAD_AT_P ".irp off," OFFSETS "\n\tlw %[t], \\off(%[p])\n\t.endr\n\t"
#define STORE_AT_P ".irp off," OFFSETS "\n\tsw %[n], \\off(%[p])\n\t.endr\n\t"
#define NEXT_BLOCK "addi %[p], %[p], 64\n\taddi %[k], %[k], -1\n\tbnez %[k], 2b\n\t"
#endif

/* n passes over `blocks` blocks of 64 bytes: 16 word loads per block (plus one add, the pointer
 * step and the block loop). The sum of every 16th word is the result. */
KERNEL uint32_t k_load(const uint8_t *base, uint32_t blocks, uint32_t n)
{
    uint32_t acc = 0;
#if defined(WL_THUMB2) || defined(__riscv)
    uint32_t t, k;
    const uint8_t *p;
    __asm__ volatile("1:\n\t"
                     MOV " %[p], %[base]\n\t"
                     MOV " %[k], %[blocks]\n\t"
                     "2:\n\t"
                     LOAD_AT_P
                     "add %[acc], %[acc], %[t]\n\t"
                     NEXT_BLOCK
                     LOOP_END("n")
                     : [n] "+r"(n), [acc] "+r"(acc), [t] "=&r"(t), [k] "=&r"(k), [p] "=&r"(p)
                     : [base] "r"(base), [blocks] "r"(blocks) : "cc", "memory");
#else
    for (; n; n--)
        for (uint32_t b = 0; b < blocks; b++)
            acc += ((const volatile uint32_t *)base)[16 * b + 15];
#endif
    return acc;
}

/* n passes over `blocks` blocks of 64 bytes: 16 word stores of the pass counter per block. */
KERNEL void k_store(uint8_t *base, uint32_t blocks, uint32_t n)
{
#if defined(WL_THUMB2) || defined(__riscv)
    uint32_t k;
    uint8_t *p;
    __asm__ volatile("1:\n\t"
                     MOV " %[p], %[base]\n\t"
                     MOV " %[k], %[blocks]\n\t"
                     "2:\n\t"
                     STORE_AT_P
                     NEXT_BLOCK
                     LOOP_END("n")
                     : [n] "+r"(n), [k] "=&r"(k), [p] "=&r"(p)
                     : [base] "r"(base), [blocks] "r"(blocks) : "cc", "memory");
#else
    for (; n; n--)
        for (uint32_t w = 0; w < 16 * blocks; w++)
            ((volatile uint32_t *)base)[w] = n;
#endif
}

/* Eight conditional branches per iteration, every one taken, over a nop: a branch to its own
 * fall-through would look not taken to the twin's edge counts (the next block starts there either way). */
KERNEL uint32_t k_branch_taken(uint32_t n)
{
#if defined(WL_THUMB2)
    __asm__ volatile("cmp %[n], #0\n\t"          /* n != 0: Z clear, and bne keeps it clear */
                     "1:\n\t"
                     ".rept 8\n\t"
                     "bne 2f\n\t"
                     "nop\n\t"                  /* skipped: the target is not the fall-through */
                     "2:\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n) : : "cc");
#elif defined(__riscv)
    __asm__ volatile("1:\n\t"
                     ".rept 8\n\t"
                     "beq %[n], %[n], 2f\n\t"
                     "nop\n\t"
                     "2:\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n));
#else
    for (volatile uint32_t i = 0; i < 8 * n; i++) {}
#endif
    return n;
}

/* Eight conditional branches per iteration, none taken. */
KERNEL uint32_t k_branch_not_taken(uint32_t n)
{
#if defined(WL_THUMB2)
    __asm__ volatile("cmp %[n], #0\n\t"
                     "1:\n\t"
                     ".rept 8\n\t"
                     "beq 3f\n\t"
                     ".endr\n\t"
                     "3:\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n) : : "cc");
#elif defined(__riscv)
    __asm__ volatile("1:\n\t"
                     ".rept 8\n\t"
                     "bne %[n], %[n], 3f\n\t"
                     ".endr\n\t"
                     "3:\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n));
#else
    for (volatile uint32_t i = 0; i < 8 * n; i++) {}
#endif
    return n;
}

/* 8 additions and 8 multiplications per iteration, single precision: FPU instructions where
 * the core has one, libgcc's __addsf3 / __mulsf3 otherwise. */
KERNEL uint32_t k_fp(uint32_t n)
{
    float a = 1.0f, b = 0.5f, c = 1.5f, d = 1.0f;
#if defined(WL_HARD_FP)
    __asm__ volatile("1:\n\t"
                     ".rept 8\n\t"
                     "vadd.f32 %[a], %[a], %[b]\n\t"
                     "vmul.f32 %[c], %[c], %[d]\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     /* all in-out: an input could share a register with an equal-valued output */
                     : [n] "+r"(n), [a] "+t"(a), [c] "+t"(c), [b] "+t"(b), [d] "+t"(d) : : "cc");
#else
    __asm__ volatile("" : "+r"(b), "+r"(d));   /* unknown to the compiler: no folding of c * 1 */
    for (; n; n--) {
        for (int k = 0; k < 8; k++) {
            a = a + b;
            c = c * d;
        }
        __asm__ volatile("" : "+r"(a), "+r"(c));
    }
#endif
    union { float f; uint32_t u; } ua = {a}, uc = {c};
    return ua.u ^ uc.u;
}

/* Single precision, the same values every time (a / 1, sqrt 1): 4 VDIV and 4 VSQRT per iteration
 * where the core has an FPU, else 8 divisions by libgcc's __divsf3 (as RV32F builds with -mno-fdiv). */
KERNEL uint32_t k_fdiv(uint32_t n)
{
    float a = 1.5f, b = 1.0f, c = 1.0f;
#if defined(WL_HARD_FP)
    __asm__ volatile("1:\n\t"
                     ".rept 4\n\t"
                     "vdiv.f32 %[a], %[a], %[b]\n\t"
                     "vsqrt.f32 %[c], %[c]\n\t"
                     ".endr\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n), [a] "+t"(a), [b] "+t"(b), [c] "+t"(c) : : "cc");
#else
    __asm__ volatile("" : "+r"(b));   /* unknown to the compiler: no folding of a / 1 */
    for (; n; n--) {
        for (int k = 0; k < 8; k++) a = a / b;
        __asm__ volatile("" : "+r"(a));
    }
#endif
    union { float f; uint32_t u; } ua = {a}, uc = {c};
    return ua.u ^ uc.u;
}

/* 16 unsigned divisions per iteration (dividend 0xdeadbeef by 7, 13, 1000, 65537). */
KERNEL uint32_t k_div(uint32_t n)
{
    uint32_t acc = 0, x = 0xdeadbeefu, d0 = 7, d1 = 13, d2 = 1000, d3 = 65537;
#if defined(WL_THUMB2) || defined(__riscv)
#if defined(WL_THUMB2)
#define DIV "udiv"
#else
#define DIV "divu"
#endif
    uint32_t t;
    __asm__ volatile("1:\n\t"
                     ".rept 4\n\t"
                     DIV " %[t], %[x], %[d0]\n\t"
                     DIV " %[t], %[x], %[d1]\n\t"
                     DIV " %[t], %[x], %[d2]\n\t"
                     DIV " %[t], %[x], %[d3]\n\t"
                     ".endr\n\t"
                     "add %[acc], %[acc], %[t]\n\t"
                     LOOP_END("n")
                     : [n] "+r"(n), [acc] "+r"(acc), [t] "=&r"(t)
                     : [x] "r"(x), [d0] "r"(d0), [d1] "r"(d1), [d2] "r"(d2), [d3] "r"(d3) : "cc");
#undef DIV
#else
    for (; n; n--) {
        __asm__ volatile("" : "+r"(x));
        acc += x / d0 + x / d1 + x / d2 + x / d3;
    }
#endif
    return acc;
}

/* ------------------------------------------------------------------ buffers and jobs */

typedef struct {
    uint8_t *next, *end;
    uint32_t needed;     /* bytes asked for in total (also when they did not fit) */
    int failed;
} wl_pool;

static void *pool_take(wl_pool *pool, uint32_t bytes)
{
    bytes = (bytes + 7u) & ~7u;
    pool->needed += bytes;
    if (pool->failed || (uint32_t)(pool->end - pool->next) < bytes) {
        pool->failed = 1;
        return 0;
    }
    void *p = pool->next;
    pool->next += bytes;
    return p;
}

static uint32_t wl_rng = 1;

static uint32_t rnd(void)
{
    return rng_next(&wl_rng);
}

static void fill_floats(float *x, uint32_t n, float scale)
{
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)(int32_t)rnd() * (scale / 2147483648.0f);
}

static void fill_bytes(uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
}

/* int8 codes in [-127, 127] (what quantize_act produces) */
static void fill_codes(int8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        p[i] = (int8_t)((int32_t)(rnd() % 255u) - 127);
}

typedef struct {
    uint16_t id;
    uint32_t size, iterations;
    uint32_t blocks;                 /* load / store kernels */
    uint8_t *bytes;                  /* load / store buffer */
    tw_tensor w;                     /* matvec weights */
    float *x, *y, *out, *att, *scales;
    int8_t *xq;
    uint32_t n, m;                   /* vector length; attention positions */
    uint8_t *result;                 /* checksummed after the run */
    uint32_t result_bytes;
} wl_job;

/* Allocate and fill the buffers of `job` (outside the measured bracket). Returns E_OK or an error
 * code with *detail set. */
static int prepare(wl_job *job, wl_pool *pool, uint32_t *detail, const char **why)
{
    uint32_t size = job->size, hi = size >> 16, lo = size & 0xffffu;
    wl_rng = 0x9e3779b9u ^ ((uint32_t)job->id << 20) ^ size;
    if (wl_rng == 0)
        wl_rng = 1;
    *detail = size;
    switch (job->id) {
    case WL_ALU: case WL_MUL: case WL_MAC: case WL_DSP: case WL_BRANCH_TAKEN:
    case WL_BRANCH_NOT_TAKEN: case WL_FP: case WL_FDIV: case WL_DIV:
        return E_OK;
    case WL_LOAD_FLASH:
        if (size < WL_BLOCK || size % WL_BLOCK || size > (uint32_t)(uintptr_t)__model_size) {
            *why = "size must be a multiple of 64 bytes, within the model partition";
            return E_ARGS;
        }
        job->bytes = __model_start;
        job->blocks = size / WL_BLOCK;
        return E_OK;
    case WL_LOAD_SRAM: case WL_STORE_SRAM:
        if (size < WL_BLOCK || size % WL_BLOCK) {
            *why = "size must be a positive multiple of 64 bytes";
            return E_ARGS;
        }
        job->bytes = pool_take(pool, size);
        job->blocks = size / WL_BLOCK;
        if (pool->failed)
            break;
        fill_bytes(job->bytes, size);
        job->result = job->bytes;
        job->result_bytes = job->id == WL_STORE_SRAM ? size : 0;
        break;
    case WL_MATVEC_Q8: case WL_MATVEC_Q4: {
        uint32_t rows = hi, cols = lo, padded = (cols + WL_GROUP - 1) / WL_GROUP * WL_GROUP;
        if (rows == 0 || cols == 0) {
            *why = "size must be rows << 16 | cols with rows, cols >= 1";
            return E_ARGS;
        }
        uint8_t bits = job->id == WL_MATVEC_Q8 ? 8 : 4;
        uint32_t row_bytes = padded * bits / 8, groups = padded / WL_GROUP;
        uint8_t *data = pool_take(pool, rows * row_bytes);
        job->scales = pool_take(pool, rows * groups * 4);
        job->xq = pool_take(pool, padded);
        job->x = pool_take(pool, groups * 4);           /* activation scales */
        job->out = pool_take(pool, rows * 4);
        if (pool->failed)
            break;
        if (bits == 8)
            fill_codes((int8_t *)data, rows * row_bytes);
        else
            fill_bytes(data, rows * row_bytes);          /* any nibble is a valid 4-bit code */
        fill_floats(job->scales, rows * groups, 0.01f);
        fill_codes(job->xq, padded);
        fill_floats(job->x, groups, 0.01f);
        job->w = (tw_tensor){0};
        job->w.data = data;
        job->w.scales = job->scales;
        job->w.rows = rows;
        job->w.cols = cols;
        job->w.padded_cols = padded;
        job->w.group_size = WL_GROUP;
        job->w.bits = bits;
        job->result = (uint8_t *)job->out;
        job->result_bytes = rows * 4;
        break;
    }
    case WL_QUANTIZE: case WL_RMSNORM: case WL_SOFTMAX: case WL_SWIGLU: {
        uint32_t n = size, padded = (n + WL_GROUP - 1) / WL_GROUP * WL_GROUP;
        if (n == 0 || n > 0x1000000u) {
            *why = "size must be the vector length n >= 1";
            return E_ARGS;
        }
        job->n = n;
        job->x = pool_take(pool, padded * 4);
        job->y = pool_take(pool, n * 4);
        job->out = pool_take(pool, n * 4);
        job->xq = pool_take(pool, padded);
        job->scales = pool_take(pool, padded / WL_GROUP * 4);
        if (pool->failed)
            break;
        fill_floats(job->x, n, 4.0f);
        fill_floats(job->y, n, 1.0f);
        if (job->id == WL_QUANTIZE) {
            job->result = (uint8_t *)job->xq;
            job->result_bytes = padded;
        } else {
            job->result = (uint8_t *)job->out;
            job->result_bytes = n * 4;
        }
        break;
    }
    case WL_ATTENTION: {
        uint32_t n_pos = hi, head = lo;
        if (n_pos == 0 || head == 0) {
            *why = "size must be n_pos << 16 | head_size with both >= 1";
            return E_ARGS;
        }
        job->n = head;
        job->m = n_pos;
        job->x = pool_take(pool, head * 4);              /* q */
        job->y = pool_take(pool, 2 * n_pos * head * 4);  /* key cache, then value cache */
        job->att = pool_take(pool, n_pos * 4);
        job->out = pool_take(pool, head * 4);
        if (pool->failed)
            break;
        fill_floats(job->x, head, 1.0f);
        fill_floats(job->y, 2 * n_pos * head, 1.0f);
        job->result = (uint8_t *)job->out;
        job->result_bytes = head * 4;
        break;
    }
    default:
        *detail = job->id;
        *why = "unknown workload id";
        return E_ARGS;
    }
    if (pool->failed) {
        *detail = pool->needed;
        *why = "workload buffers do not fit in the free arena";
        return E_ARGS;
    }
    return E_OK;
}

static void copy_floats(float *dst, const float *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        dst[i] = src[i];
}

/* The measured part: `iterations` runs of the kernel. */
static uint32_t execute(wl_job *job)
{
    uint32_t n = job->iterations, r = 0;
    switch (job->id) {
    case WL_ALU: return n ? k_alu(n) : 0;
    case WL_MUL: return n ? k_mul(n) : 0;
    case WL_MAC: return n ? k_mac(n) : 0;
    case WL_DSP: return n ? k_dsp(n) : 0;
    case WL_LOAD_FLASH: case WL_LOAD_SRAM: return n ? k_load(job->bytes, job->blocks, n) : 0;
    case WL_STORE_SRAM: if (n) k_store(job->bytes, job->blocks, n); return 0;
    case WL_BRANCH_TAKEN: return n ? k_branch_taken(n) : 0;
    case WL_BRANCH_NOT_TAKEN: return n ? k_branch_not_taken(n) : 0;
    case WL_FP: return n ? k_fp(n) : 0;
    case WL_DIV: return n ? k_div(n) : 0;
    case WL_FDIV: return n ? k_fdiv(n) : 0;
    case WL_MATVEC_Q8:
        for (; n; n--) matvec_q8(job->out, job->xq, job->x, &job->w);
        break;
    case WL_MATVEC_Q4:
        for (; n; n--) matvec_q4(job->out, job->xq, job->x, &job->w);
        break;
    case WL_QUANTIZE:
        for (; n; n--) quantize_act(job->xq, job->scales, job->x, job->n, WL_GROUP);
        break;
    case WL_RMSNORM:
        for (; n; n--) rmsnorm(job->out, job->x, job->y, job->n, 1e-5f);
        break;
    /* softmax and swiglu work in place: each iteration starts again from the same input (the
     * copy is part of the measured work), so every iteration costs the same. */
    case WL_SOFTMAX:
        for (; n; n--) {
            copy_floats(job->out, job->x, job->n);
            softmax(job->out, job->n);
        }
        break;
    case WL_SWIGLU:
        for (; n; n--) {
            copy_floats(job->out, job->x, job->n);
            swiglu(job->out, job->y, job->n);
        }
        break;
    case WL_ATTENTION:
        for (; n; n--)
            attention_head(job->out, job->att, job->x, job->y, job->y + job->m * job->n, job->n, job->m,
                           job->n, 0.125f);
        break;
    default: break;
    }
    return r;
}

void workload_request(uint16_t seq, const uint8_t *body, uint16_t len, uint32_t arena_used)
{
    if (len != 10) {
        proto_send_error(seq, E_ARGS, len, "WORKLOAD takes id:u16 size:u32 iterations:u32");
        return;
    }
    wl_job job = {0};
    job.id = proto_get_u16(body);
    job.size = proto_get_u32(body + 2);
    job.iterations = proto_get_u32(body + 6);
    uint8_t *free_start = __arena_start + ((arena_used + 7u) & ~7u);
    wl_pool pool = {free_start < __arena_end ? free_start : __arena_end, __arena_end, 0, 0};
    uint32_t detail = 0;
    const char *why = "";
    int status = prepare(&job, &pool, &detail, &why);
    if (status != E_OK) {
        proto_send_error(seq, (uint16_t)status, detail, why);
        return;
    }

    uint32_t c0 = board_cycles();
    twin_mark();
    uint32_t i0 = board_mark_instret();
    uint32_t value = execute(&job);
    twin_mark();
    uint32_t cycles = board_cycles() - c0;
    uint32_t instret = board_mark_instret() - i0;

    uint32_t checksum = job.result_bytes ? crc32_update(0, job.result, job.result_bytes) : value;
    uint8_t phase[17], *p = phase;
    p = proto_put_u8(p, PHASE_WORKLOAD);
    p = proto_put_u16(p, job.id);
    p = proto_put_u16(p, 0);
    p = proto_put_u32(p, cycles);
    p = proto_put_u32(p, board_stack_peak());
    p = proto_put_u32(p, instret);
    proto_send(MSG_PHASE, seq, phase, (size_t)(p - phase));
    uint8_t done[18], *q = done;
    q = proto_put_u16(q, job.id);
    q = proto_put_u32(q, job.size);
    q = proto_put_u32(q, job.iterations);
    q = proto_put_u32(q, cycles);
    q = proto_put_u32(q, checksum);
    proto_send(MSG_WORKLOAD_DONE, seq, done, (size_t)(q - done));
}
