/* Arm MPS2/MPS2+ FPGA boards (AN386, AN500, AN505): CMSDK APB UART console. */
#include "board.h"

#define UART_DATA    (UART_BASE + 0x00)
#define UART_STATE   (UART_BASE + 0x04)   /* bit0 TX full, bit1 RX full */
#define UART_CTRL    (UART_BASE + 0x08)   /* bit0 TX enable, bit1 RX enable */
#define UART_BAUDDIV (UART_BASE + 0x10)

void board_init(void)
{
    mmio_write(UART_BAUDDIV, 16);     /* must precede enabling TX (QEMU's CMSDK UART) */
    mmio_write(UART_CTRL, 3);
    /* A read of DATA makes QEMU's UART model ask its character backend for input at once; without it
     * the first host bytes wait for QEMU's next main-loop tick (about 1 s). Harmless on hardware. */
    (void)mmio_read(UART_DATA);
}

uint32_t board_clock_hz(void) { return BOARD_CLOCK_HZ; }

void board_marker_toggle(void) {}

int board_getc(void)
{
    if (!(mmio_read(UART_STATE) & 2))
        return -1;
    return (int)(mmio_read(UART_DATA) & 0xFF);
}

void board_putc(uint8_t c)
{
    while (mmio_read(UART_STATE) & 1)
        ;
    mmio_write(UART_DATA, c);
}
