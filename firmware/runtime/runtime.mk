# Model runtime sources and the flags its bit-exactness depends on (see model.h).
# Include from a board/app Makefile:  include $(TOP)/firmware/runtime/runtime.mk
# TW_KERNELS picks the kernel set (a platform's `kernels:` field; firmware/kernels/README.md): every
# file of kernels/ref, each replaced by the set's file of the same name.
RUNTIME_DIR ?= $(dir $(lastword $(MAKEFILE_LIST)))
TW_KERNELS ?= ref
KERNELS_DIR := $(RUNTIME_DIR)../kernels/
KERNEL_SRCS := $(foreach f,$(sort $(notdir $(wildcard $(KERNELS_DIR)ref/*.c))),\
    $(or $(wildcard $(KERNELS_DIR)$(TW_KERNELS)/$(f)),$(KERNELS_DIR)ref/$(f)))
RUNTIME_SRCS := $(RUNTIME_DIR)model.c $(RUNTIME_DIR)kernels_ref.c $(RUNTIME_DIR)crc32.c $(KERNEL_SRCS)
RUNTIME_CFLAGS := -I$(RUNTIME_DIR) -ffp-contract=off -fno-fast-math -ffreestanding -std=c11
