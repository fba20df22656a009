/* QEMU RISC-V `virt` machine: NS16550 console, SiFive test device to end the run. */
#include "board.h"

#define UART_RBR (UART_BASE + 0)
#define UART_THR (UART_BASE + 0)
#define UART_LSR (UART_BASE + 5)   /* bit0 data ready, bit5 THR empty */

static inline uint8_t reg8(uintptr_t a) { return *(volatile uint8_t *)a; }

void board_init(void) {}

uint32_t board_clock_hz(void) { return BOARD_CLOCK_HZ; }

void board_marker_toggle(void) {}

int board_getc(void)
{
    if (!(reg8(UART_LSR) & 1))
        return -1;
    return reg8(UART_RBR);
}

void board_putc(uint8_t c)
{
    while (!(reg8(UART_LSR) & 0x20))
        ;
    *(volatile uint8_t *)UART_THR = c;
}

void board_exit(int code)
{
    mmio_write(TEST_BASE, code == 0 ? 0x5555u : (((uint32_t)code << 16) | 0x3333u));
    for (;;)
        ;
}
