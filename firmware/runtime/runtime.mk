# Model runtime sources and the flags its bit-exactness depends on (see model.h).
# Include from a board/app Makefile:  include $(TOP)/firmware/runtime/runtime.mk
RUNTIME_DIR ?= $(dir $(lastword $(MAKEFILE_LIST)))
RUNTIME_SRCS := $(RUNTIME_DIR)model.c $(RUNTIME_DIR)kernels_ref.c $(RUNTIME_DIR)crc32.c
RUNTIME_CFLAGS := -I$(RUNTIME_DIR) -ffp-contract=off -fno-fast-math -ffreestanding -std=c11
