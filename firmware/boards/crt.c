/* Core-independent C start-up: copy .data, clear .bss, paint the stack, run main, exit.
 * Also the few libc functions the compiler may call on its own. */
#include "board.h"

int main(void);

#define STACK_PAINT 0xA5A5A5A5u

extern uint8_t __data_load[];

void twin_c_start(void)
{
    uint32_t *src = (uint32_t *)__data_load, *dst = (uint32_t *)__data_start;
    while (dst < (uint32_t *)__data_end)
        *dst++ = *src++;
    for (uint32_t *p = (uint32_t *)__bss_start; p < (uint32_t *)__bss_end; p++)
        *p = 0;
    /* Paint the stack below the current frame; board_stack_peak() finds the deepest overwritten word. */
    uint32_t *here = (uint32_t *)__builtin_frame_address(0) - 16;
    for (volatile uint32_t *p = (uint32_t *)__stack_limit; p < here; p++)
        *p = STACK_PAINT;
    board_init();
    board_exit(main());
}

uint32_t board_stack_peak(void)
{
    const uint32_t *p = (const uint32_t *)__stack_limit;
    while (p < (const uint32_t *)__stack_top && *p == STACK_PAINT)
        p++;
    return (uint32_t)(__stack_top - (uint8_t *)p);
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s)
        return memcpy(dst, src, n);
    while (n--)
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}
