/* Device side of the host <-> device protocol (docs/protocol.md), freestanding C.
 *
 *   frame   = COBS(payload || CRC-32(payload) as u32le) 0x00
 *   payload = type:u8 seq:u16le body
 *
 * Receiving: feed every byte from the UART to proto_feed(); it returns PROTO_FRAME when a valid
 * frame is complete, or a negative PROTO_ERR_* when a corrupt frame ended (answer it with
 * proto_send_error(PROTO_SEQ_NONE, E_FRAME, -ret, ...)). proto_poll() does the reading loop
 * with board_getc().
 * Sending: proto_send() COBS-encodes on the fly and writes through board_putc(); it writes a
 * 0x00 before the frame too, so the frame is separated from anything printed before it.
 *
 * Single instance, not re-entrant: one receiver and one sender (static state), for one UART.
 * CRC-32 lives in runtime/crc32.c (shared with the rest of the firmware).
 */
#ifndef TWIN_PROTO_H
#define TWIN_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 2   /* 2: PHASE carries instret */
#define PROTO_MAX_PAYLOAD 1024u                  /* type + seq + body, CRC excluded */
#define PROTO_HEADER_SIZE 3u
#define PROTO_MAX_BODY (PROTO_MAX_PAYLOAD - PROTO_HEADER_SIZE)
#define PROTO_SEQ_NONE 0xFFFFu                   /* seq of an ERROR for an unreadable frame */

/* Message types (>= 0x80: device -> host replies). */
enum proto_type {
    MSG_HELLO = 0x01,
    MSG_RUN = 0x02,
    MSG_MEM = 0x03,
    MSG_SELFTEST = 0x04,
    MSG_EXIT = 0x05,
    MSG_WORKLOAD = 0x06,
    MSG_INFO = 0x81,
    MSG_PHASE = 0x82,
    MSG_RESULT = 0x83,
    MSG_MEMINFO = 0x84,
    MSG_SELFTEST_DONE = 0x85,
    MSG_BYE = 0x86,
    MSG_BOOT = 0x87,
    MSG_WORKLOAD_DONE = 0x88,
    MSG_ERROR = 0xEE,
};

/* Error codes, shared by ERROR replies and the model-image status. */
enum proto_error_code {
    E_OK = 0,
    E_BAD_MAGIC = 1,
    E_VERSION = 2,
    E_CRC = 3,
    E_TOO_LARGE = 4,
    E_NO_RAM = 5,
    E_ARCH = 6,
    E_QUANT = 7,
    E_CORRUPT = 8,
    E_ARGS = 9,
    E_FRAME = 10,
    E_UNKNOWN = 11,
    E_NO_MODEL = 12,
    E_FAULT = 13,           /* sent unsolicited (seq 0xFFFF), detail = faulting pc */
};

/* PHASE kinds. */
enum proto_phase_kind {
    PHASE_VALIDATE = 0,
    PHASE_PREFILL = 1,
    PHASE_DECODE = 2,
    PHASE_SELFTEST = 3,
    PHASE_WORKLOAD = 4,     /* calibration workload (firmware/app/workloads.c), index = workload id */
};

/* proto_feed() / proto_poll() results. */
enum proto_status {
    PROTO_NONE = 0,         /* nothing complete yet */
    PROTO_FRAME = 1,        /* a valid frame is in *out */
    PROTO_ERR_COBS = -1,    /* bad COBS block (a block runs past the delimiter) */
    PROTO_ERR_SHORT = -2,   /* fewer than 7 bytes (header + CRC) */
    PROTO_ERR_LENGTH = -3,  /* payload longer than PROTO_MAX_PAYLOAD */
    PROTO_ERR_CRC = -4,     /* CRC mismatch */
};

typedef struct {
    uint8_t type;
    uint16_t seq;
    const uint8_t *body;    /* points into the receiver's buffer: valid until the next proto_feed() */
    uint16_t len;
} proto_frame_t;

/* Provided by the board layer. board_getc() returns -1 when no byte is waiting. */
void board_putc(uint8_t c);
int board_getc(void);

/* Receiver. */
void proto_reset(void);                             /* drop any partial frame */
int proto_feed(uint8_t byte, proto_frame_t *out);   /* one byte in; returns enum proto_status */
int proto_poll(proto_frame_t *out);                 /* feed board_getc() bytes until a frame, an
                                                       error or no byte waiting */
const char *proto_status_name(int status);          /* "crc", "cobs", "short", "length", ... */

/* Sender. len must be <= PROTO_MAX_BODY (longer bodies are truncated). */
void proto_send(uint8_t type, uint16_t seq, const uint8_t *body, size_t len);
/* ERROR reply: code:u16 detail:u32 message (a C string, may be NULL, cut to fit in
 * PROTO_ERROR_MAX bytes of body; the body is built on the stack). */
#define PROTO_ERROR_MAX 96u
void proto_send_error(uint16_t seq, uint16_t code, uint32_t detail, const char *message);

/* Little-endian helpers: put writes at p and returns p + size; get reads at p. */
uint8_t *proto_put_u8(uint8_t *p, uint8_t v);
uint8_t *proto_put_u16(uint8_t *p, uint16_t v);
uint8_t *proto_put_u32(uint8_t *p, uint32_t v);
uint8_t *proto_put_f32(uint8_t *p, float v);
uint8_t *proto_put_str(uint8_t *p, const char *s, size_t size);   /* NUL-padded to size bytes */
uint16_t proto_get_u16(const uint8_t *p);
uint32_t proto_get_u32(const uint8_t *p);
float proto_get_f32(const uint8_t *p);

#endif
