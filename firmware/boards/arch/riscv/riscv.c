/* RV32 core services: cycle counter (mcycle where the platform says it counts cycles). */
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
