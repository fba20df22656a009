/* RV32 start-up: stack and global pointer, trap vector, then the shared C start. */
    .section .text.start, "ax"
    .globl twin_reset
twin_reset:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, __stack_top
    la t0, twin_trap
    csrw mtvec, t0
    call twin_c_start
1:  j 1b

    .align 4
twin_trap:
    csrr a0, mepc
    call board_fault
2:  j 2b
