/* The profiling firmware: validate the model image once at boot, then answer protocol requests
 * (docs/protocol.md). Every phase — image validation, prefill, each decoded token, the self-test
 * loop, each calibration workload (workloads.c) — is bracketed by twin_mark() calls, where the
 * emulator's profiling plugin cuts its counts. */
#include "board.h"
#include "model.h"
#include "proto.h"
#include "workloads.h"

/* The profiling plugin watches this function's first instruction. noipa: never inlined or dropped.
 * Weak: a core with a retired-instruction counter brings its own (boards/arch/riscv/start.S). */
__attribute__((noipa, used, weak)) void twin_mark(void)
{
    __asm__ volatile("" ::: "memory");
    board_marker_toggle();   /* the same boundary on a GPIO, for a power analyzer */
}

static twin_model model;
static int model_status;
static uint32_t validate_cycles, validate_instret;

static void send_phase(uint16_t seq, uint8_t kind, uint16_t index, uint16_t token, uint32_t cycles,
                       uint32_t instret)
{
    uint8_t body[17], *p = body;
    p = proto_put_u8(p, kind);
    p = proto_put_u16(p, index);
    p = proto_put_u16(p, token);
    p = proto_put_u32(p, cycles);
    p = proto_put_u32(p, board_stack_peak());
    p = proto_put_u32(p, instret);
    proto_send(MSG_PHASE, seq, body, (size_t)(p - body));
}

static void on_hello(uint16_t seq)
{
    send_phase(seq, PHASE_VALIDATE, 0, 0, validate_cycles, validate_instret);
    uint8_t body[96], *p = body;
    p = proto_put_u16(p, PROTO_VERSION);
    p = proto_put_u16(p, (uint16_t)model_status);
    p = proto_put_u32(p, board_clock_hz());
    p = proto_put_u32(p, model_status == TW_OK ? model_image_crc(&model) : 0);
    p = proto_put_u32(p, model_status == TW_OK ? model_image_size(&model) : 0);
    p = proto_put_u32(p, validate_cycles);
    p = proto_put_str(p, BOARD_ID, 24);
    p = proto_put_str(p, BOARD_CORE, 16);
    p = proto_put_str(p, BUILD_ID, 24);
    p = proto_put_str(p, model_status == TW_OK ? model_name(&model) : "", 16);
    proto_send(MSG_INFO, seq, body, (size_t)(p - body));
}

static void on_run(uint16_t seq, const uint8_t *b, uint16_t len)
{
    if (model_status != TW_OK) {
        proto_send_error(seq, E_NO_MODEL, (uint32_t)model_status, "no valid model image");
        return;
    }
    if (len < 16) {
        proto_send_error(seq, E_ARGS, len, "RUN body too short");
        return;
    }
    uint32_t n_prompt = proto_get_u16(b), n_tokens = proto_get_u16(b + 2), seed = proto_get_u32(b + 4);
    float temperature = proto_get_f32(b + 8), topp = proto_get_f32(b + 12);
    const uint8_t *prompt = b + 16;
    if (len != 16 + 2 * n_prompt) {
        proto_send_error(seq, E_ARGS, len, "RUN body length does not match n_prompt");
        return;
    }
    if (n_prompt < 1 || n_prompt + n_tokens > model_seq_len(&model)) {
        proto_send_error(seq, E_ARGS, model_seq_len(&model), "prompt + tokens must be 1..context");
        return;
    }
    for (uint32_t i = 0; i < n_prompt; i++)
        if (proto_get_u16(prompt + 2 * i) >= model_vocab_size(&model)) {
            proto_send_error(seq, E_ARGS, i, "prompt token id out of the vocabulary");
            return;
        }
    if (!(temperature >= 0.0f) || !(topp >= 0.0f && topp <= 1.0f)) {
        proto_send_error(seq, E_ARGS, 0, "temperature must be >= 0 and top-p in [0, 1]");
        return;
    }

    uint32_t rng, total = 0, pos = 0;
    rng_seed(&rng, seed);
    uint32_t c0 = board_cycles();
    twin_mark();
    uint32_t i0 = board_mark_instret();
    for (uint32_t i = 0; i + 1 < n_prompt; i++)
        model_forward(&model, proto_get_u16(prompt + 2 * i), (int)pos++);
    twin_mark();
    uint32_t cycles = board_cycles() - c0;
    total += cycles;
    send_phase(seq, PHASE_PREFILL, 0, 0, cycles, board_mark_instret() - i0);

    int token = proto_get_u16(prompt + 2 * (n_prompt - 1));
    for (uint32_t k = 0; k < n_tokens; k++) {
        c0 = board_cycles();
        twin_mark();
        i0 = board_mark_instret();
        const float *logits = model_forward(&model, token, (int)pos++);
        token = model_sample(&model, logits, temperature, topp, &rng);
        twin_mark();
        cycles = board_cycles() - c0;
        total += cycles;
        send_phase(seq, PHASE_DECODE, (uint16_t)k, (uint16_t)token, cycles, board_mark_instret() - i0);
    }

    uint8_t body[14], *p = body;
    p = proto_put_u16(p, 0);
    p = proto_put_u16(p, (uint16_t)(n_tokens + 1));
    p = proto_put_u16(p, (uint16_t)n_tokens);
    p = proto_put_u32(p, total);
    p = proto_put_u32(p, board_stack_peak());
    proto_send(MSG_RESULT, seq, body, (size_t)(p - body));
}

static void on_mem(uint16_t seq)
{
    uint8_t body[32], *p = body;
    p = proto_put_u32(p, (uint32_t)(__flash_end - __flash_start));
    p = proto_put_u32(p, (uint32_t)(__bss_end - __data_start));
    p = proto_put_u32(p, (uint32_t)(__stack_top - __stack_limit));
    p = proto_put_u32(p, board_stack_peak());
    p = proto_put_u32(p, (uint32_t)(__arena_end - __arena_start));
    p = proto_put_u32(p, model_arena_used(&model));
    p = proto_put_u32(p, (uint32_t)(uintptr_t)__model_size);
    p = proto_put_u32(p, model_status == TW_OK ? model_image_size(&model) : 0);
    proto_send(MSG_MEMINFO, seq, body, (size_t)(p - body));
}

/* A loop of exactly three instructions per iteration (add, subtract, branch): the plugin's count of
 * the SELFTEST phase must change by exactly 3 per extra iteration. */
static uint32_t selftest_loop(uint32_t n)
{
    uint32_t sum = 0;
    if (n == 0)
        return 0;
#if defined(__arm__)
    __asm__ volatile("1: adds %1, %1, %0\n\t"
                     "subs %0, %0, #1\n\t"
                     "bne 1b"
                     : "+r"(n), "+r"(sum) : : "cc");
#elif defined(__riscv)
    __asm__ volatile("1: add %1, %1, %0\n\t"
                     "addi %0, %0, -1\n\t"
                     "bnez %0, 1b"
                     : "+r"(n), "+r"(sum));
#else
    for (; n; n--)
        sum += n;
#endif
    return sum;
}

static void on_selftest(uint16_t seq, const uint8_t *b, uint16_t len)
{
    if (len != 4) {
        proto_send_error(seq, E_ARGS, len, "SELFTEST takes one u32");
        return;
    }
    uint32_t n = proto_get_u32(b);
    uint32_t c0 = board_cycles();
    twin_mark();
    uint32_t i0 = board_mark_instret();
    uint32_t sum = selftest_loop(n);
    twin_mark();
    uint32_t cycles = board_cycles() - c0;
    send_phase(seq, PHASE_SELFTEST, 0, 0, cycles, board_mark_instret() - i0);
    uint8_t body[12], *p = body;
    p = proto_put_u32(p, n);
    p = proto_put_u32(p, sum);
    p = proto_put_u32(p, cycles);
    proto_send(MSG_SELFTEST_DONE, seq, body, (size_t)(p - body));
}

void board_fault(uint32_t pc)
{
    proto_send_error(PROTO_SEQ_NONE, E_FAULT, pc, "firmware fault (hard fault / trap)");
    board_exit(0x7F);
}

int main(void)
{
    uint32_t c0 = board_cycles();
    twin_mark();
    uint32_t i0 = board_mark_instret();
    model_status = model_open(&model, __model_start, (uint32_t)(uintptr_t)__model_size, __arena_start,
                              (uint32_t)(__arena_end - __arena_start));
    twin_mark();
    validate_cycles = board_cycles() - c0;
    validate_instret = board_mark_instret() - i0;

    uint8_t boot[2];
    proto_put_u16(boot, PROTO_VERSION);
    proto_send(MSG_BOOT, PROTO_SEQ_NONE, boot, sizeof boot);   /* "I am up and listening" */

    for (;;) {
        proto_frame_t f;
        int r = proto_poll(&f);
        if (r == PROTO_NONE)
            continue;
        if (r < 0) {
            proto_send_error(PROTO_SEQ_NONE, E_FRAME, (uint32_t)-r, proto_status_name(r));
            continue;
        }
        switch (f.type) {
        case MSG_HELLO: on_hello(f.seq); break;
        case MSG_RUN: on_run(f.seq, f.body, f.len); break;
        case MSG_MEM: on_mem(f.seq); break;
        case MSG_SELFTEST: on_selftest(f.seq, f.body, f.len); break;
        case MSG_WORKLOAD: workload_request(f.seq, f.body, f.len, model_arena_used(&model)); break;
        case MSG_EXIT:
            proto_send(MSG_BYE, f.seq, 0, 0);
            board_exit(f.len ? f.body[0] : 0);
            break;
        default: proto_send_error(f.seq, E_UNKNOWN, f.type, "unknown message type");
        }
    }
}
