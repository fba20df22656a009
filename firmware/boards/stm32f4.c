/* STM32F40x/41x boards (STM32F4-Discovery): 168 MHz from the 8 MHz HSE through the PLL, USART2 console
 * on PA2/PA3 at 115200 baud. Every wait on the RCC is bounded: QEMU does not model the RCC (it reads
 * 0), so there the firmware stays on the 16 MHz HSI and says so through board_clock_hz().
 * Phase marker: PD12 (the green LED LD4 on the Discovery board), high during every phase. */
#include "board.h"

#define RCC          0x40023800u
#define RCC_CR       (RCC + 0x00)
#define RCC_PLLCFGR  (RCC + 0x04)
#define RCC_CFGR     (RCC + 0x08)
#define RCC_AHB1ENR  (RCC + 0x30)
#define RCC_APB1ENR  (RCC + 0x40)
#define FLASH_ACR    0x40023C00u
#define GPIOA        0x40020000u
#define GPIOD        0x40020C00u
#define MARKER_PIN   12u
#define USART_SR     (UART_BASE + 0x00)   /* bit5 RXNE, bit7 TXE */
#define USART_DR     (UART_BASE + 0x04)
#define USART_BRR    (UART_BASE + 0x08)
#define USART_CR1    (UART_BASE + 0x0C)

#define HSI_HZ 16000000u
#define WAIT_LIMIT 100000u

static uint32_t sysclk_hz = HSI_HZ;
static uint32_t apb1_hz = HSI_HZ;

static int wait_set(uintptr_t reg, uint32_t mask)
{
    for (uint32_t i = 0; i < WAIT_LIMIT; i++)
        if ((mmio_read(reg) & mask) == mask)
            return 1;
    return 0;
}

static void clock_init(void)
{
    mmio_write(RCC_CR, mmio_read(RCC_CR) | (1u << 16));                   /* HSEON */
    if (!wait_set(RCC_CR, 1u << 17))                                      /* HSERDY */
        return;
    /* PLL: 8 MHz / M=8 * N=336 / P=2 = 168 MHz, Q=7 (48 MHz USB clock), source HSE. */
    mmio_write(RCC_PLLCFGR, 8u | (336u << 6) | (0u << 16) | (1u << 22) | (7u << 24));
    mmio_write(RCC_CR, mmio_read(RCC_CR) | (1u << 24));                   /* PLLON */
    if (!wait_set(RCC_CR, 1u << 25))                                      /* PLLRDY */
        return;
    mmio_write(FLASH_ACR, FLASH_WAIT_STATES | (1u << 8) | (1u << 9) | (1u << 10)); /* WS, prefetch, I/D cache */
    mmio_write(RCC_CFGR, (5u << 10) | (4u << 13));                        /* APB1 = /4, APB2 = /2 */
    mmio_write(RCC_CFGR, mmio_read(RCC_CFGR) | 2u);                       /* SW = PLL */
    if (!wait_set(RCC_CFGR, 2u << 2))                                     /* SWS = PLL */
        return;
    sysclk_hz = BOARD_CLOCK_HZ;
    apb1_hz = BOARD_CLOCK_HZ / 4;
}

void board_init(void)
{
    clock_init();
    mmio_write(RCC_AHB1ENR, mmio_read(RCC_AHB1ENR) | 1u | (1u << 3));     /* GPIOA, GPIOD */
    mmio_write(GPIOD + 0x00, (mmio_read(GPIOD + 0x00) & ~(3u << (2 * MARKER_PIN))) | (1u << (2 * MARKER_PIN)));
    mmio_write(RCC_APB1ENR, mmio_read(RCC_APB1ENR) | (1u << 17));         /* USART2 */
    /* PA2 (TX) and PA3 (RX): alternate function 7. */
    mmio_write(GPIOA + 0x00, (mmio_read(GPIOA + 0x00) & ~(0xFu << 4)) | (0xAu << 4));
    mmio_write(GPIOA + 0x20, (mmio_read(GPIOA + 0x20) & ~(0xFFu << 8)) | (0x77u << 8));
    mmio_write(USART_BRR, (apb1_hz + 57600u) / 115200u);                 /* 16x oversampling */
    mmio_write(USART_CR1, (1u << 13) | (1u << 3) | (1u << 2));            /* UE, TE, RE */
}

uint32_t board_clock_hz(void) { return sysclk_hz; }

void board_marker_toggle(void)
{
    static int high;
    high = !high;
    mmio_write(GPIOD + 0x18, high ? (1u << MARKER_PIN) : (1u << (MARKER_PIN + 16)));   /* BSRR set / reset */
}

int board_getc(void)
{
    if (!(mmio_read(USART_SR) & (1u << 5)))
        return -1;
    return (int)(mmio_read(USART_DR) & 0xFF);
}

void board_putc(uint8_t c)
{
    while (!(mmio_read(USART_SR) & (1u << 7)))
        ;
    mmio_write(USART_DR, c);
}
