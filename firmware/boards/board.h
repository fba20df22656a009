/* The board layer: everything the application needs from a board, and nothing else.
 * One C file per board family (mps2.c, stm32f4.c, riscv_virt.c) implements it, with the core's
 * start-up in boards/arch/<arch>/. The runtime never includes this header. */
#ifndef TWIN_BOARD_H
#define TWIN_BOARD_H
#include <stddef.h>
#include <stdint.h>

void board_init(void);              /* clocks, console UART; called once before main() */
int board_getc(void);               /* next received byte, or -1 when none is waiting */
void board_putc(uint8_t c);         /* blocking transmit of one byte */
uint32_t board_clock_hz(void);      /* the core clock actually configured */
uint32_t board_cycles(void);        /* free-running cycle counter; 0 where there is none (emulators) */
uint32_t board_mark_instret(void);  /* retired instructions at the last twin_mark(); 0 where the core
                                       has no such counter (a phase's count is the delta of two) */
void board_exit(int code) __attribute__((noreturn));   /* end the run (emulator) or reset (board) */

/* Memory facts from the linker script (firmware/link.ld + the generated memory.ld). */
extern uint8_t __model_start[], __model_size[];
extern uint8_t __arena_start[], __arena_end[];
extern uint8_t __stack_limit[], __stack_top[];
extern uint8_t __flash_start[], __flash_end[];
extern uint8_t __data_start[], __data_end[], __bss_start[], __bss_end[];

/* The phase-marker pin a power analyzer records: high during every phase, low in between. Called by
 * twin_mark() at each phase boundary; a no-op on boards without one (emulated ones). */
void board_marker_toggle(void);

uint32_t board_stack_peak(void);    /* deepest stack use so far, from the painted stack */
void board_fault(uint32_t pc) __attribute__((noreturn));   /* called by the fault handlers */

/* Board identity, from the platform file (passed as -D by the build). */
#ifndef BOARD_ID
#define BOARD_ID "unknown"
#endif
#ifndef BOARD_CORE
#define BOARD_CORE "unknown"
#endif
#ifndef BUILD_ID
#define BUILD_ID "dev"
#endif

static inline uint32_t mmio_read(uintptr_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }

#endif
