/* RV32 start-up: stack and global pointer, trap vector, counters, then the shared C start. */
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
#if defined(CYCLE_COUNTER_MCYCLE)
    csrw mcountinhibit, zero       /* some cores (CV32E40P) reset with mcycle/minstret stopped */
#endif
#if defined(__riscv_flen)
    li t0, 0x2000                  /* mstatus.FS = Initial: the FPU is off at reset */
    csrs mstatus, t0
#endif
    call twin_c_start
1:  j 1b

    /* 256-byte aligned: cores with vectored-only trap handling (Ibex, CV32E40P) take mtvec[31:8]. */
    .balign 256
twin_trap:
    csrr a0, mepc
    call board_fault
2:  j 2b

#if defined(CYCLE_COUNTER_MCYCLE)
/* The phase marker (the C default is in app/main.c): its first instruction reads minstret, where
 * the emulator's profiling plugin cuts its counts, so the retired-instruction delta between two
 * marks is exactly what the plugin counts between them. board_mark_instret() returns the snapshot. */
    .section .text.twin_mark, "ax"
    .globl twin_mark
    .type twin_mark, @function
twin_mark:
    csrr t0, minstret
    la t1, twin_mark_instret
    sw t0, 0(t1)
    tail board_marker_toggle
    .size twin_mark, . - twin_mark

    .section .bss.twin_mark_instret, "aw", @nobits
    .balign 4
    .globl twin_mark_instret
twin_mark_instret:
    .word 0
#endif
