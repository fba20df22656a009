/* Cortex-M start-up shared by every Arm board: vector table, reset, FPU and DWT cycle counter,
 * fault handlers, and the exit (a system reset: QEMU run with -no-reboot ends, a board restarts). */
#include "../../board.h"

void twin_c_start(void);
void twin_reset(void);

#define SCB_CPACR   0xE000ED88u
#define SCB_AIRCR   0xE000ED0Cu
#define SCB_VTOR    0xE000ED08u
#define DEMCR       0xE000EDFCu
#define DWT_CTRL    0xE0001000u
#define DWT_CYCCNT  0xE0001004u

static void fault_handler(void)
{
    uint32_t *sp;
    __asm__ volatile("mrs %0, msp" : "=r"(sp));
    board_fault(sp[6]);   /* stacked PC of the faulting instruction */
}

static void default_handler(void)
{
    for (;;)
        ;
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))__stack_top,
    twin_reset,
    fault_handler,      /* NMI */
    fault_handler,      /* HardFault */
    fault_handler,      /* MemManage */
    fault_handler,      /* BusFault */
    fault_handler,      /* UsageFault */
    fault_handler,      /* SecureFault (v8-M) */
    0, 0, 0,
    default_handler,    /* SVC */
    default_handler,    /* DebugMon */
    0,
    default_handler,    /* PendSV */
    default_handler,    /* SysTick */
};

void twin_reset(void)
{
    mmio_write(SCB_VTOR, (uint32_t)(uintptr_t)vectors);
#if defined(__ARM_FP)
    mmio_write(SCB_CPACR, mmio_read(SCB_CPACR) | (0xFu << 20));   /* CP10, CP11 full access */
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    mmio_write(DEMCR, mmio_read(DEMCR) | (1u << 24));             /* TRCENA */
    mmio_write(DWT_CYCCNT, 0);
    mmio_write(DWT_CTRL, mmio_read(DWT_CTRL) | 1u);               /* CYCCNTENA */
    twin_c_start();
}

uint32_t board_cycles(void)
{
    return mmio_read(DWT_CYCCNT);   /* reads 0 in QEMU: it does not model the DWT */
}

uint32_t board_mark_instret(void)
{
    return 0;       /* the DWT counts cycles, not retired instructions */
}

void board_exit(int code)
{
    (void)code;   /* the protocol has already carried every result */
    __asm__ volatile("dsb" ::: "memory");
    mmio_write(SCB_AIRCR, (0x5FAu << 16) | (1u << 2));            /* SYSRESETREQ */
    for (;;)
        ;
}
