/* RV32 core services: cycle and retired-instruction counters (where the platform says mcycle counts
 * cycles). */
#include "../../board.h"

uint32_t board_cycles(void)
{
#if defined(CYCLE_COUNTER_MCYCLE)
    uint32_t c;
    __asm__ volatile("csrr %0, mcycle" : "=r"(c));
    return c;
#else
    return 0;   /* no trustworthy cycle counter (QEMU's follows host time) */
#endif
}

#if defined(CYCLE_COUNTER_MCYCLE)
extern volatile uint32_t twin_mark_instret;   /* written by twin_mark() in start.S */

uint32_t board_mark_instret(void) { return twin_mark_instret; }
#else
uint32_t board_mark_instret(void) { return 0; }
#endif
