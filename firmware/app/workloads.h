/* Calibration workloads: the WORKLOAD request (docs/protocol.md).
 *
 * Micro-kernels that each exercise one instruction class (ALU, multiply, multiply-accumulate,
 * packed DSP, loads from flash / SRAM, stores to SRAM, taken / not-taken branches, FP, divide),
 * written as inline-assembly loops on Arm and RISC-V so the class mix is known by construction,
 * plus the runtime's LLM kernels (kernels.h) at sizes the host chooses, on buffers carved from
 * the arena space the model does not use.
 *
 * Every run is bracketed by twin_mark() (the plugin's cut points) and board_cycles(): the reply
 * is PHASE kind 4 (index = workload id) then WORKLOAD_DONE {id, size, iterations, cycles, checksum}.
 * The per-run cost is affine in `iterations` (a constant set-up plus `iterations` identical
 * loop bodies); the data is filled outside the brackets. The host registry is twin/bench/workloads.py.
 */
#ifndef TWIN_WORKLOADS_H
#define TWIN_WORKLOADS_H

#include <stdint.h>

/* Workload ids (u16). Keep in step with twin/bench/workloads.py. */
enum workload_id {
    WL_ALU = 0x01,              /* add/eor/orr/sub chains                    size ignored */
    WL_MUL = 0x02,              /* 32-bit multiplies                         size ignored */
    WL_MAC = 0x03,              /* multiply-accumulate (mla; RISC-V mul+add) size ignored */
    WL_DSP = 0x04,              /* smlad/sadd16/qadd16 (plain C without DSP) size ignored */
    WL_LOAD_FLASH = 0x05,       /* word loads from the model partition       size = bytes walked */
    WL_LOAD_SRAM = 0x06,        /* word loads from SRAM (free arena)         size = bytes walked */
    WL_STORE_SRAM = 0x07,       /* word stores to SRAM (free arena)          size = bytes walked */
    WL_BRANCH_TAKEN = 0x08,     /* conditional branches, all taken           size ignored */
    WL_BRANCH_NOT_TAKEN = 0x09, /* conditional branches, none taken          size ignored */
    WL_FP = 0x0A,               /* single-precision add/mul (soft-float: libgcc calls) */
    WL_DIV = 0x0B,              /* unsigned 32-bit division                  size ignored */
    WL_FDIV = 0x0C,             /* single-precision divide and square root  size ignored */
    WL_MATVEC_Q8 = 0x100,       /* matvec_q8        size = rows << 16 | cols */
    WL_MATVEC_Q4 = 0x101,       /* matvec_q4        size = rows << 16 | cols */
    WL_QUANTIZE = 0x102,        /* quantize_act     size = n */
    WL_RMSNORM = 0x103,         /* rmsnorm          size = n */
    WL_SOFTMAX = 0x104,         /* softmax          size = n */
    WL_ATTENTION = 0x105,       /* attention_head   size = n_pos << 16 | head_size */
    WL_SWIGLU = 0x106,          /* swiglu           size = n */
};

/* The profiling plugin's cut point (defined in main.c). */
void twin_mark(void);

/* Answer one WORKLOAD request: body = id:u16 size:u32 iterations:u32. `arena_used` bytes at the
 * start of the arena belong to the model and are left alone. Sends PHASE + WORKLOAD_DONE, or a
 * single ERROR (E_ARGS: bad body, unknown id, bad size, buffers larger than the free arena). */
void workload_request(uint16_t seq, const uint8_t *body, uint16_t len, uint32_t arena_used);

#endif
