/* softfloat.c: IEEE-754 binary32 arithmetic for soft-float builds: RISC-V RV32IM without F, and
 * Arm's soft-float ABI (ARMv6-M: Cortex-M0/M0+, no FPU).
 *
 * What: __addsf3, __subsf3, __mulsf3, __floatsisf, __floatunsisf and the comparisons __eqsf2,
 * __nesf2, __ltsf2, __lesf2, __gtsf2, __gesf2 — the libgcc helpers GCC calls for float arithmetic
 * when the ISA has no F extension. On Arm GCC calls the run-time ABI's names instead (RTABI):
 * __aeabi_fadd, __aeabi_fsub, __aeabi_frsub, __aeabi_fmul, __aeabi_fdiv, __aeabi_i2f, __aeabi_ui2f,
 * __aeabi_fcmpeq/lt/le/gt/ge (0 or 1) and __aeabi_fcmpun; the section "Arm run-time ABI names"
 * defines them on the same code (TW_SF_AEABI). Linked before -lgcc, so these definitions win and
 * libgcc's generic soft-fp (which also calls __clzsi2) is not pulled in for them. twin/device/build.py
 * (`softfloat_sources`) adds this file to a build when the platform's -march has no F/D/G (and
 * no Zfinx) and its -mabi is ilp32/ilp32e, or when it builds ARMv6-M (-mcpu/-march) without
 * -mfloat-abi=hard: decided by the flags, never by a board id. Hardware-float builds
 * (rtl-cv32e40p-fpu: RV32IMFC; the Cortex-M4F/M7/M33/M55 boards) do not get it.
 *
 * Why it is exact: every result is the infinitely precise result rounded once, to nearest, ties
 * to even (the firmware is compared bit for bit with numpy float32 on the host).
 *  - Significands are kept in a 32-bit word with the leading 1 at bit 30 and 7 bits below the
 *    result's last bit; bits shifted out to the right are OR-ed into bit 0 ("sticky"). A value and
 *    its sticky approximation lie in the same open interval between multiples of 2 (of 4 after one
 *    left shift), so they round alike at bit 7 (halfway = bit 6); ties are seen only when exact.
 *  - Multiply: the 24x24-bit product is formed exactly (one mul + one mulhu on RV32IM) from the
 *    operands shifted to bits 31 and 30; its high word is the significand at bit 30 or 29 (one
 *    shift normalizes), the low word's nonzero-ness is the sticky bit. Without a 32x32->64-bit
 *    multiply (Thumb-1: TW_SF_MUL16) the same word comes from three exact 24x8-bit products (and
 *    the divide's quotient by long division, bit by bit).
 *  - Add: the larger magnitude first; the smaller is aligned with sticky. In an effective
 *    subtraction with an exponent difference of 0 or 1 nothing is shifted out (exact; any
 *    cancellation is renormalized), with a difference >= 2 at most one left shift follows.
 *  - pack(): rounding adds 0x3f + (last bit) at bit 7; a carry out of the significand moves into the
 *    exponent field by itself (largest finite rounds up to infinity exactly so). A biased exponent
 *    <= 0 denormalizes with sticky first and rounds once (underflow to subnormal or zero); >= 255 is
 *    infinity.
 *  - Subnormal inputs: mul normalizes them (exponent below 1), add takes them with exponent 1 and
 *    no hidden bit. Signed zeros: x + (-x) = +0, -0 + -0 = -0, the product's sign is the xor.
 *  - NaN: any NaN operand, inf - inf and 0 * inf give the canonical quiet NaN 0x7fc00000, as
 *    RISC-V's F extension and libgcc's RISC-V soft-fp do (the reference never sees a NaN).
 * The fast path (operands normal, result normal) is straight-line code with one or two branches;
 * everything else goes to out-of-line slow paths. Leading zeros are counted by five compare-and-shift
 * steps, without branches or __clzsi2.
 *
 * Tests: tests/device/test_softfloat.py compiles this file for the host (-DTW_SF_PREFIX=tw_sf_, so
 * the names are tw_sf_mulsf3 ...) and compares it bit for bit with the host CPU's float arithmetic
 * on special-class combinations and millions of random operands, also as the Thumb-1 build has it
 * (-DTW_SF_MUL16 -DTW_SF_AEABI: tw_sf_aeabi_fmul ...). Figures: README.md here. */
#include <stdint.h>

#ifdef TW_SF_PREFIX
#define TW_SF_CAT2(p, n) p##n
#define TW_SF_CAT(p, n) TW_SF_CAT2(p, n)
#define TW_SF(name) TW_SF_CAT(TW_SF_PREFIX, name)
#else
#define TW_SF(name) __##name
#endif

#define LIKELY(x) __builtin_expect(!!(x), 1)
#define NOINLINE __attribute__((noinline))

#define SIGN 0x80000000u
#define INF 0x7f800000u
#define QNAN 0x7fc00000u
#define FRAC 0x007fffffu
#define TOP 0x40000000u          /* the leading 1 of a working significand */

/* The helpers' interface. In the soft-float ABI (ilp32) a float travels in an integer register,
 * so on the target the helpers take and return its bits as uint32_t: the same registers as libgcc's
 * float signatures, and the slow paths become tail calls. The host tests (TW_SF_PREFIX) get float
 * in and out, in the host's own calling convention. */
#if defined(TW_SF_PREFIX)
typedef float tw_sf_t;
typedef union { float f; uint32_t u; } tw_sf_bits;
static inline uint32_t bits_of(float f) { tw_sf_bits b; b.f = f; return b.u; }
static inline float float_of(uint32_t u) { tw_sf_bits b; b.u = u; return b.f; }
#define IN(x) bits_of(x)
#define OUT(x) float_of(x)
#elif defined(__riscv_float_abi_soft)
typedef uint32_t tw_sf_t;
#define IN(x) (x)
#define OUT(x) (x)
#elif defined(__arm__) && defined(__SOFTFP__) && !defined(__ARM_FP) && !defined(__ARM_PCS_VFP)
/* Arm, -mfloat-abi=soft (no FPU instructions, AAPCS base standard: float arguments in r0, r1 and the
 * result in r0, as integers are): the helpers are called by their run-time ABI names. */
typedef uint32_t tw_sf_t;
#define IN(x) (x)
#define OUT(x) (x)
#ifndef TW_SF_AEABI
#define TW_SF_AEABI 1
#endif
#else
#error "softfloat.c is for a soft-float ABI (RISC-V ilp32/ilp32e, Arm soft); the host tests define TW_SF_PREFIX"
#endif

/* Run-time ABI names: __aeabi_fmul on the target, tw_sf_aeabi_fmul in the host tests. */
#define TW_SF_EABI(name) TW_SF(aeabi_##name)

/* No 32x32->64-bit multiply: Thumb-1 only (ARMv6-M, ARMv8-M Baseline) has MULS (the low word) and no
 * UMULL, so (uint64_t)a * b would be a call to __aeabi_lmul (libgcc's generic 64x64-bit multiply: 2.2 M
 * of 8.4 M instructions per token on rpi-pico, README.md); the products are then formed from exact
 * 24x8- and 16x16-bit ones in 32 bits (TW_SF_MUL16; the host tests define it to check that variant). */
#if !defined(TW_SF_MUL16) && defined(__arm__) && defined(__ARM_ARCH_ISA_THUMB) && __ARM_ARCH_ISA_THUMB == 1 \
    && !defined(__ARM_ARCH_ISA_ARM)
#define TW_SF_MUL16 1
#endif

tw_sf_t TW_SF(addsf3)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF(subsf3)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF(mulsf3)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF(divsf3)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF(floatsisf)(int32_t i);
tw_sf_t TW_SF(floatunsisf)(uint32_t i);
int TW_SF(eqsf2)(tw_sf_t a, tw_sf_t b);
int TW_SF(nesf2)(tw_sf_t a, tw_sf_t b);
int TW_SF(ltsf2)(tw_sf_t a, tw_sf_t b);
int TW_SF(lesf2)(tw_sf_t a, tw_sf_t b);
int TW_SF(gtsf2)(tw_sf_t a, tw_sf_t b);
int TW_SF(gesf2)(tw_sf_t a, tw_sf_t b);
#if defined(TW_SF_AEABI)
tw_sf_t TW_SF_EABI(fadd)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF_EABI(fsub)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF_EABI(frsub)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF_EABI(fmul)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF_EABI(fdiv)(tw_sf_t a, tw_sf_t b);
tw_sf_t TW_SF_EABI(i2f)(int32_t i);
tw_sf_t TW_SF_EABI(ui2f)(uint32_t i);
int TW_SF_EABI(fcmpeq)(tw_sf_t a, tw_sf_t b);
int TW_SF_EABI(fcmplt)(tw_sf_t a, tw_sf_t b);
int TW_SF_EABI(fcmple)(tw_sf_t a, tw_sf_t b);
int TW_SF_EABI(fcmpgt)(tw_sf_t a, tw_sf_t b);
int TW_SF_EABI(fcmpge)(tw_sf_t a, tw_sf_t b);
int TW_SF_EABI(fcmpun)(tw_sf_t a, tw_sf_t b);
#endif

/* Leading zeros of x != 0: five compare-and-shift steps, no branches. */
static inline uint32_t lz32(uint32_t x)
{
    uint32_t n, s;
    n = (uint32_t)(x < 0x00010000u) << 4; x <<= n;
    s = (uint32_t)(x < 0x01000000u) << 3; x <<= s; n += s;
    s = (uint32_t)(x < 0x10000000u) << 2; x <<= s; n += s;
    s = (uint32_t)(x < 0x40000000u) << 1; x <<= s; n += s;
    return n + (uint32_t)(x < 0x80000000u);
}

/* m >> s (0 <= s <= 31) with the bits shifted out OR-ed into bit 0. */
static inline uint32_t shift_sticky(uint32_t m, uint32_t s)
{
    uint32_t r = m >> s;
    return r | (uint32_t)((r << s) != m);
}

/* Biased exponent outside 1..254: infinity, or a subnormal / zero rounded once. */
static NOINLINE uint32_t pack_slow(uint32_t sign, int32_t e, uint32_t m)
{
    if (e > 0)
        return sign | INF;                       /* overflow (round to nearest: infinity) */
    uint32_t s = (uint32_t)(1 - e);
    m = shift_sticky(m, s < 31u ? s : 31u);      /* the leading 1 now below bit 30 */
    m += 0x3fu + ((m >> 7) & 1u);                /* a carry into bit 30 gives the smallest normal */
    return sign | (m >> 7);
}

/* sign | the value m * 2^(e - 157), m in [2^30, 2^31) with round and sticky bits in bits 6..0. */
static inline uint32_t pack(uint32_t sign, int32_t e, uint32_t m)
{
    if (LIKELY((uint32_t)(e - 1) < 254u)) {
        m += 0x3fu + ((m >> 7) & 1u);            /* round to nearest, ties to even */
        return sign | (((uint32_t)(e - 1) << 23) + (m >> 7));   /* hidden bit adds 1 to e - 1 */
    }
    return pack_slow(sign, e, m);
}

/* ---- multiply ---------------------------------------------------------------------------- */

/* 24-bit significands ma, mb (leading 1 at bit 23), biased exponents (may be < 1). */
#if defined(TW_SF_MUL16)
/* The 48-bit product P = A B of A = ma >> 8 and B = mb >> 7 (24 bits, the leading 1 at bit 23) from
 * three 24x8-bit products, each exact in 32 bits: B's bytes b2 (with the leading 1), b1, b0 give
 * P = A b2 2^16 + A b1 2^8 + A b0. t = A b1 + (A b0 >> 8) < 255 2^24 + 2^24 fits, and then
 * P = (A b2 + (t >> 8)) 2^16 + (t & 0xff) 2^8 + (A b0 & 0xff): s = P >> 16 = A b2 + (t >> 8) (< 2^32 as
 * P < 2^48), the leading 1 at bit 31 or 30, and P's low 16 bits are zero iff t's and A b0's low bytes
 * are. The 64-bit product below is ma mb = P 2^15 (high word P >> 17, low word P's low 17 bits): the
 * word packed is the same, s >> 1 with s's bit 0 and the rest as sticky, or s with the rest after the
 * normalizing shift (k = s >> 31 says which). */
static inline uint32_t mul_core24(uint32_t sign, int32_t e, uint32_t a, uint32_t b0, uint32_t b1, uint32_t b2)
{
    uint32_t p0 = a * b0, p1 = a * b1, p2 = a * b2;
    uint32_t t = p1 + (p0 >> 8);
    uint32_t s = p2 + (t >> 8), k = s >> 31;
    uint32_t m = (s >> k) | (s & k) | (uint32_t)(((t | p0) << 24) != 0);
    return pack(sign, e - 1 + (int32_t)k, m);
}

static inline uint32_t mul_core(uint32_t sign, int32_t e, uint32_t ma, uint32_t mb)
{
    uint32_t a = ma >> 8, b = mb >> 7;
    return mul_core24(sign, e, a, b & 0xffu, (b >> 8) & 0xffu, b >> 16);
}
#else
static inline uint32_t mul_core(uint32_t sign, int32_t e, uint32_t ma, uint32_t mb)
{
    uint64_t p = (uint64_t)ma * mb;              /* ma at bit 31, mb at bit 30: p in [2^61, 2^63) */
    uint32_t hi = (uint32_t)(p >> 32), lo = (uint32_t)p;
    uint32_t n = (uint32_t)(hi < TOP);           /* leading 1 at bit 29: one shift */
    hi = (hi << n) | (uint32_t)(lo != 0);
    return pack(sign, e - (int32_t)n, hi);
}
#endif

static NOINLINE uint32_t mul_slow(uint32_t a, uint32_t b)
{
    uint32_t sign = (a ^ b) & SIGN, aa = a & ~SIGN, ab = b & ~SIGN;
    if (aa > INF || ab > INF)
        return QNAN;
    if (aa == INF || ab == INF)
        return (aa == 0 || ab == 0) ? QNAN : (sign | INF);   /* 0 * inf is invalid */
    if (aa == 0 || ab == 0)
        return sign;
    int32_t ea = (int32_t)(aa >> 23), eb = (int32_t)(ab >> 23);
    uint32_t ma = aa & FRAC, mb = ab & FRAC;
    if (ea == 0) { uint32_t k = lz32(ma) - 8u; ma <<= k; ea = 1 - (int32_t)k; } else ma |= 0x800000u;
    if (eb == 0) { uint32_t k = lz32(mb) - 8u; mb <<= k; eb = 1 - (int32_t)k; } else mb |= 0x800000u;
    return mul_core(sign, ea + eb - 126, ma << 8, mb << 7);
}

#if defined(TW_SF_MUL16)
static inline uint32_t mul_bits(uint32_t a, uint32_t b)
{
    uint32_t ea = (a << 1) >> 24, eb = (b << 1) >> 24;
    if (LIKELY(ea - 1u < 254u && eb - 1u < 254u))
        return mul_core24((a ^ b) & SIGN, (int32_t)(ea + eb) - 126, ((a << 9) >> 9) | 0x800000u, b & 0xffu,
                          (b >> 8) & 0xffu, ((b << 9) >> 25) + 0x80u);
    return mul_slow(a, b);
}
#else
static inline uint32_t mul_bits(uint32_t a, uint32_t b)
{
    uint32_t ea = (a >> 23) & 0xffu, eb = (b >> 23) & 0xffu;
    if (LIKELY(ea - 1u < 254u && eb - 1u < 254u))
        return mul_core((a ^ b) & SIGN, (int32_t)(ea + eb) - 126, (a << 8) | SIGN, ((b << 8) | SIGN) >> 1);
    return mul_slow(a, b);
}
#endif

tw_sf_t TW_SF(mulsf3)(tw_sf_t a, tw_sf_t b) { return OUT(mul_bits(IN(a), IN(b))); }

/* ---- divide ------------------------------------------------------------------------------ */

#if defined(TW_SF_MUL16)
/* 24-bit significands ma, mb (leading 1 at bit 23); e = ea - eb + 127. Without a 32x32->64-bit
 * multiply for a reciprocal (Thumb-1), the quotient q = floor(ma * 2^(30+k) / mb), k = (ma < mb), in
 * [2^30, 2^31), bit by bit: restoring long division, 31 steps of compare, subtract and shift; the
 * partial remainder r stays below 2 mb < 2^25, and its last value is 0 only for an exact quotient. */
static inline uint32_t div_core(uint32_t sign, int32_t e, uint32_t ma, uint32_t mb)
{
    uint32_t k = (uint32_t)(ma < mb), r = ma << k, q = 0;   /* r in [mb, 2 mb): the first bit is 1 */
    for (uint32_t i = 0; i < 31u; i++) {
        q <<= 1;
        if (r >= mb) { r -= mb; q |= 1u; }
        r <<= 1;
    }
    return pack(sign, e - (int32_t)k, q | (uint32_t)(r != 0));
}
#else
static inline uint32_t mulhu(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
static inline int32_t mulhsu(int32_t s, uint32_t u)
{
    return (int32_t)(((int64_t)s * (int64_t)(uint64_t)u) >> 32);
}

/* One Newton step for x ~ 2^30 / (d / 2^32): x += x (1 - d x), |1 - d x| small (the error squares). */
static inline uint32_t newton(uint32_t d, uint32_t x)
{
    int32_t err = (int32_t)(0x40000000u - mulhu(d, x));   /* (1 - d x) 2^30 */
    return x + (uint32_t)mulhsu((int32_t)((uint32_t)err << 2), x);
}

/* 24-bit significands ma, mb (leading 1 at bit 23); e = ea - eb + 127. The quotient
 * q = floor(ma * 2^(30+k) / mb), k = (ma < mb), lies in [2^30, 2^31); it is estimated with a
 * reciprocal (multiplies only: no divu), then made exact with the remainder, which fits in an int32
 * because the estimate is within a few units (-2..4 measured over all divisors, see README.md). */
static inline uint32_t div_core(uint32_t sign, int32_t e, uint32_t ma, uint32_t mb)
{
    uint32_t k = (uint32_t)(ma < mb), d = mb << 8;        /* d / 2^32 in [1/2, 1) */
    uint32_t x = 3031741620u - mulhu(d, 2021161081u);     /* 2^30 / (d / 2^32): 48/17 - 32/17 d, 4 bits */
    x = newton(d, x);                                     /* 8 bits */
    x = newton(d, x);                                     /* 16 bits */
    x = newton(d, x);                                     /* ~30 bits */
    uint32_t q = (mulhu(ma << 8, x) << k) + 1u;
    int32_t r = (int32_t)((ma << (30u + k)) - q * mb);     /* the exact remainder (mod 2^32, small) */
    while (r < 0) { q--; r += (int32_t)mb; }
    while (r >= (int32_t)mb) { q++; r -= (int32_t)mb; }
    return pack(sign, e - (int32_t)k, q | (uint32_t)(r != 0));
}
#endif

static NOINLINE uint32_t div_slow(uint32_t a, uint32_t b)
{
    uint32_t sign = (a ^ b) & SIGN, aa = a & ~SIGN, ab = b & ~SIGN;
    if (aa > INF || ab > INF)
        return QNAN;
    if (aa == INF)
        return ab == INF ? QNAN : (sign | INF);          /* inf / inf is invalid */
    if (ab == INF)
        return sign;
    if (ab == 0)
        return aa == 0 ? QNAN : (sign | INF);            /* 0 / 0 invalid, x / 0 infinite */
    if (aa == 0)
        return sign;
    int32_t ea = (int32_t)(aa >> 23), eb = (int32_t)(ab >> 23);
    uint32_t ma = aa & FRAC, mb = ab & FRAC;
    if (ea == 0) { uint32_t k = lz32(ma) - 8u; ma <<= k; ea = 1 - (int32_t)k; } else ma |= 0x800000u;
    if (eb == 0) { uint32_t k = lz32(mb) - 8u; mb <<= k; eb = 1 - (int32_t)k; } else mb |= 0x800000u;
    return div_core(sign, ea - eb + 127, ma, mb);
}

static inline uint32_t div_bits(uint32_t a, uint32_t b)
{
    uint32_t ea = (a >> 23) & 0xffu, eb = (b >> 23) & 0xffu;
    if (LIKELY(ea - 1u < 254u && eb - 1u < 254u))
        return div_core((a ^ b) & SIGN, (int32_t)ea - (int32_t)eb + 127, (a & FRAC) | 0x800000u,
                        (b & FRAC) | 0x800000u);
    return div_slow(a, b);
}

tw_sf_t TW_SF(divsf3)(tw_sf_t a, tw_sf_t b) { return OUT(div_bits(IN(a), IN(b))); }

/* ---- add, subtract ----------------------------------------------------------------------- */

/* |a| >= |b|, and a is infinity or NaN, or b is zero or subnormal. */
static NOINLINE uint32_t add_slow(uint32_t a, uint32_t b)
{
    uint32_t aa = a & ~SIGN, ab = b & ~SIGN;
    if (aa >= INF) {
        if (aa > INF)
            return QNAN;                        /* NaN has the largest magnitude: a if either */
        return (ab == INF && ((a ^ b) & SIGN)) ? QNAN : a;   /* inf - inf is invalid */
    }
    if (ab == 0)
        return aa == 0 ? (a & b) : a;           /* -0 + -0 = -0, +0 + -0 = +0 */
    int32_t e = (int32_t)(aa >> 23);             /* b subnormal: exponent 1, no hidden bit */
    uint32_t ma = (aa & FRAC) << 7, mb = (ab & FRAC) << 7, m;
    if (e != 0) ma |= TOP; else e = 1;
    uint32_t d = (uint32_t)e - 1u;
    mb = shift_sticky(mb, d < 31u ? d : 31u);
    if ((a ^ b) & SIGN) {
        m = ma - mb;
        if (m == 0)
            return 0;
    } else {
        m = ma + mb;
        if (m >> 31) { m = (m >> 1) | (m & 1u); e++; }
    }
    if (m < TOP) { uint32_t k = lz32(m) - 1u; m <<= k; e -= (int32_t)k; }
    return pack(a & SIGN, e, m);
}

static inline uint32_t add_bits(uint32_t a, uint32_t b)
{
    if ((a & ~SIGN) < (b & ~SIGN)) { uint32_t t = a; a = b; b = t; }
    uint32_t ea = (a >> 23) & 0xffu, eb = (b >> 23) & 0xffu;
    if (LIKELY(ea != 255u && eb != 0)) {        /* both normal: ea >= eb >= 1 */
        uint32_t ma = ((a << 8) | SIGN) >> 1, mb = ((b << 8) | SIGN) >> 1, m;
        uint32_t d = ea - eb;
        int32_t e = (int32_t)ea;
        if (d < 8u)
            mb >>= d;                            /* bits 6..0 of mb are 0: nothing shifted out */
        else
            mb = shift_sticky(mb, d < 31u ? d : 31u);
        if ((int32_t)(a ^ b) >= 0) {
            m = ma + mb;                         /* < 2^32 */
            uint32_t c = m >> 31;                /* carry: one shift right, sticky kept */
            m = (m >> c) | (m & c);
            e += (int32_t)c;
        } else {
            m = ma - mb;                         /* >= 0: |a| >= |b| */
            if (m < TOP) {
                if (m >= (TOP >> 1)) {
                    m <<= 1; e--;
                } else {                         /* cancellation: d <= 1, exact */
                    if (m == 0)
                        return 0;                /* x - x = +0 */
                    uint32_t k = lz32(m) - 1u;
                    m <<= k; e -= (int32_t)k;
                }
            }
        }
        return pack(a & SIGN, e, m);
    }
    return add_slow(a, b);
}

tw_sf_t TW_SF(addsf3)(tw_sf_t a, tw_sf_t b) { return OUT(add_bits(IN(a), IN(b))); }
tw_sf_t TW_SF(subsf3)(tw_sf_t a, tw_sf_t b) { return OUT(add_bits(IN(a), IN(b) ^ SIGN)); }

/* ---- integer to float -------------------------------------------------------------------- */

static inline uint32_t from_u32(uint32_t sign, uint32_t u)
{
    if (u == 0)
        return 0;
    uint32_t k = lz32(u);
    u <<= k;                                     /* leading 1 at bit 31: the value is u * 2^-k */
    return pack(sign, 158 - (int32_t)k, (u >> 1) | (u & 1u));
}

tw_sf_t TW_SF(floatsisf)(int32_t i)
{
    uint32_t sign = (uint32_t)i & SIGN, u = sign ? 0u - (uint32_t)i : (uint32_t)i;
    if (u == 0)
        return OUT(0);
    uint32_t k = lz32(u);                        /* |i| <= 2^31: bit 0 of u << k is 0 unless k = 0, */
    return OUT(pack(sign, 158 - (int32_t)k, (u << k) >> 1));   /* and then it is 2^31: exact */
}

tw_sf_t TW_SF(floatunsisf)(uint32_t i) { return OUT(from_u32(0, i)); }

/* ---- Arm run-time ABI names ------------------------------------------------------------- */
/* What GCC calls on Arm (RTABI): the same helpers under the __aeabi_ names. frsub is b - a;
 * fcmpXX return 1 when a XX b holds, else 0 (a NaN operand: 0), fcmpun 1 when a or b is a NaN. These
 * are the whole sets of libgcc's objects for them (addsf3, subsf3, _arm_addsubsf3, mulsf3, divsf3,
 * floatsisf, floatunsisf, _arm_cmpsf2's fcmp*, unordsf2), so none of libgcc's is linked beside ours;
 * _arm_cmpsf2's flag-returning __aeabi_cfcmp* are left out: GCC never calls them (hand-written
 * assembly does), and a reference would fail the link on the duplicate fcmp* (never a silent mix). */
#if defined(TW_SF_AEABI)
tw_sf_t TW_SF_EABI(fadd)(tw_sf_t a, tw_sf_t b) { return OUT(add_bits(IN(a), IN(b))); }
tw_sf_t TW_SF_EABI(fsub)(tw_sf_t a, tw_sf_t b) { return OUT(add_bits(IN(a), IN(b) ^ SIGN)); }
tw_sf_t TW_SF_EABI(frsub)(tw_sf_t a, tw_sf_t b) { return OUT(add_bits(IN(b), IN(a) ^ SIGN)); }
tw_sf_t TW_SF_EABI(fmul)(tw_sf_t a, tw_sf_t b) { return OUT(mul_bits(IN(a), IN(b))); }
tw_sf_t TW_SF_EABI(fdiv)(tw_sf_t a, tw_sf_t b) { return OUT(div_bits(IN(a), IN(b))); }

/* u != 0 shifted left until bit 31 is set, the shift in *k: by halving steps, each a shift-test and a
 * branch (and a shift and an add when taken), since Thumb-1 has no set-on-compare (lz32's branch-free
 * steps take 7 instructions each there); where there is a CLZ, that. For i2f and ui2f, often on the
 * firmware's path (each group sum of a matvec). */
static inline uint32_t aeabi_to_bit31(uint32_t u, uint32_t *k)
{
#if defined(__ARM_FEATURE_CLZ)
    *k = (uint32_t)__builtin_clz(u);
    return u << *k;
#else
    uint32_t n = 0;
    if (!(u >> 16)) { u <<= 16; n = 16; }
    if (!(u >> 24)) { u <<= 8; n += 8; }
    if (!(u >> 28)) { u <<= 4; n += 4; }
    if (!(u >> 30)) { u <<= 2; n += 2; }
    if (!(u >> 31)) { u <<= 1; n += 1; }
    *k = n;
    return u;
#endif
}

tw_sf_t TW_SF_EABI(i2f)(int32_t i)
{
    uint32_t sign = (uint32_t)i & SIGN, u = sign ? 0u - (uint32_t)i : (uint32_t)i, k;
    if (u == 0)
        return OUT(0);
    u = aeabi_to_bit31(u, &k);                   /* bit 0 is 0 unless k = 0, and then u = 2^31 */
    return OUT(pack(sign, 158 - (int32_t)k, u >> 1));
}

tw_sf_t TW_SF_EABI(ui2f)(uint32_t i)
{
    uint32_t k;
    if (i == 0)
        return OUT(0);
    i = aeabi_to_bit31(i, &k);
    return OUT(pack(0, 158 - (int32_t)k, (i >> 1) | (i & 1u)));
}

/* a < b, a <= b, a == b as the fcmp* give them: false when either is a NaN. */
static inline int aeabi_unordered(uint32_t a, uint32_t b) { return (a & ~SIGN) > INF || (b & ~SIGN) > INF; }
static inline int32_t aeabi_key(uint32_t x)     /* monotonic in the value; -0 and +0 both 0 */
{
    return (int32_t)x < 0 ? -(int32_t)(x & ~SIGN) : (int32_t)x;
}
static inline int aeabi_lt(uint32_t a, uint32_t b)
{
    return !aeabi_unordered(a, b) && aeabi_key(a) < aeabi_key(b);
}
static inline int aeabi_le(uint32_t a, uint32_t b)
{
    return !aeabi_unordered(a, b) && aeabi_key(a) <= aeabi_key(b);
}
static inline int aeabi_eq(uint32_t a, uint32_t b)
{
    return !aeabi_unordered(a, b) && aeabi_key(a) == aeabi_key(b);
}

int TW_SF_EABI(fcmpeq)(tw_sf_t a, tw_sf_t b) { return aeabi_eq(IN(a), IN(b)); }
int TW_SF_EABI(fcmplt)(tw_sf_t a, tw_sf_t b) { return aeabi_lt(IN(a), IN(b)); }
int TW_SF_EABI(fcmple)(tw_sf_t a, tw_sf_t b) { return aeabi_le(IN(a), IN(b)); }
int TW_SF_EABI(fcmpgt)(tw_sf_t a, tw_sf_t b) { return aeabi_lt(IN(b), IN(a)); }
int TW_SF_EABI(fcmpge)(tw_sf_t a, tw_sf_t b) { return aeabi_le(IN(b), IN(a)); }
int TW_SF_EABI(fcmpun)(tw_sf_t a, tw_sf_t b) { return aeabi_unordered(IN(a), IN(b)); }
#endif

/* ---- comparisons ------------------------------------------------------------------------- */
/* libgcc's contract: eq/ne return 0 iff equal; lt/le return < 0 / <= 0 iff a < b / a <= b; gt/ge
 * return > 0 / >= 0 iff a > b / a >= b; unordered (a NaN) makes each of those false. */

static inline int32_t order_key(uint32_t x)     /* monotonic in the value; -0 and +0 both 0 */
{
    return (int32_t)x < 0 ? -(int32_t)(x & ~SIGN) : (int32_t)x;
}

static inline int compare(uint32_t a, uint32_t b, int unordered)
{
    if ((a & ~SIGN) > INF || (b & ~SIGN) > INF)
        return unordered;
    int32_t ka = order_key(a), kb = order_key(b);
    return (ka > kb) - (ka < kb);
}

int TW_SF(eqsf2)(tw_sf_t a, tw_sf_t b) { return compare(IN(a), IN(b), 1); }
int TW_SF(nesf2)(tw_sf_t a, tw_sf_t b) { return compare(IN(a), IN(b), 1); }
int TW_SF(ltsf2)(tw_sf_t a, tw_sf_t b) { return compare(IN(a), IN(b), 2); }
int TW_SF(lesf2)(tw_sf_t a, tw_sf_t b) { return compare(IN(a), IN(b), 2); }
int TW_SF(gtsf2)(tw_sf_t a, tw_sf_t b) { return compare(IN(a), IN(b), -2); }
int TW_SF(gesf2)(tw_sf_t a, tw_sf_t b) { return compare(IN(a), IN(b), -2); }
