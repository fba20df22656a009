/* Model image format, version 1 (see docs/image-format.md). All fields little-endian;
 * offsets are relative to the image start. */
#ifndef TWIN_IMAGE_H
#define TWIN_IMAGE_H

#define TW_MAGIC 0x4D4C5754u /* bytes 'T','W','L','M' */
#define TW_VERSION 1u
#define TW_PREAMBLE_SIZE 16u
#define TW_HEADER_SIZE 96u /* preamble + header; the tensor table starts at header_size */
#define TW_ENTRY_SIZE 32u  /* smallest tensor-table entry this reader understands */
#define TW_ARCH_LLAMA 1u
#define TW_FLAG_SHARED_CLASSIFIER 1u
#define TW_FLAG_KV_INT8 2u /* int8 KV cache (docs/image-format.md, "Run-state arena") */
#define TW_MAX_TENSORS 4096u

/* Preamble */
#define TW_OFF_MAGIC 0
#define TW_OFF_VERSION 4
#define TW_OFF_HEADER_SIZE 6
#define TW_OFF_TOTAL_SIZE 8
#define TW_OFF_CRC 12
/* Header */
#define TW_OFF_ARCH 16
#define TW_OFF_DIM 20
#define TW_OFF_HIDDEN_DIM 24
#define TW_OFF_N_LAYERS 28
#define TW_OFF_N_HEADS 32
#define TW_OFF_N_KV_HEADS 36
#define TW_OFF_VOCAB_SIZE 40
#define TW_OFF_SEQ_LEN 44
#define TW_OFF_FLAGS 48
#define TW_OFF_NORM_EPS 52
#define TW_OFF_NAME 56 /* char[16] */
#define TW_OFF_N_TENSORS 72
#define TW_OFF_ENTRY_SIZE 76
/* 80..95 reserved, zero */

/* Tensor-table entry */
#define TW_E_KIND 0    /* u8 */
#define TW_E_BITS 1    /* u8: 32 (float), 8, 4, 3, 2 */
#define TW_E_SCHEME 2  /* u8: 0 = symmetric, 1 = asymmetric (uint8 zero points after the scales) */
#define TW_E_LAYER 4   /* u16 */
#define TW_E_GROUP 6   /* u16: 0 for float32 tensors */
#define TW_E_ROWS 8
#define TW_E_COLS 12
#define TW_E_DATA_OFF 16
#define TW_E_DATA_SIZE 20
#define TW_E_SCALE_OFF 24
#define TW_E_SCALE_SIZE 28

enum {
    TW_K_TOK_EMB = 0,
    TW_K_ATTN_NORM,
    TW_K_WQ,
    TW_K_WK,
    TW_K_WV,
    TW_K_WO,
    TW_K_FFN_NORM,
    TW_K_W1,
    TW_K_W2,
    TW_K_W3,
    TW_K_FINAL_NORM,
    TW_K_CLASSIFIER,
    TW_K_ROPE_FREQ,
    TW_K_COUNT
};

#endif
