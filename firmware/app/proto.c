/* Device side of the protocol: COBS + CRC-32 framing (see proto.h, docs/protocol.md). */
#include "proto.h"

#include "crc32.h"

#define CRC_SIZE 4u
#define MIN_FRAME (PROTO_HEADER_SIZE + CRC_SIZE)
#define MAX_DECODED (PROTO_MAX_PAYLOAD + CRC_SIZE)

/* ------------------------------------------------------------------ receiver */

static struct {
    uint8_t buf[MAX_DECODED];
    uint16_t len;          /* decoded bytes in buf */
    uint8_t remaining;     /* data bytes left in the current COBS block; 0: next byte is a code */
    uint8_t zero_pending;  /* the finished block implies a 0x00, unless the frame ends here */
    uint8_t started;       /* any byte received since the last delimiter */
    uint8_t overflow;      /* more than MAX_DECODED bytes: the frame will be rejected */
} rx;

void proto_reset(void)
{
    rx.len = 0;
    rx.remaining = 0;
    rx.zero_pending = 0;
    rx.started = 0;
    rx.overflow = 0;
}

static void rx_store(uint8_t byte)
{
    if (rx.len < MAX_DECODED)
        rx.buf[rx.len++] = byte;
    else
        rx.overflow = 1;
}

/* The delimiter arrived: check the frame collected so far. */
static int rx_finish(proto_frame_t *out)
{
    if (rx.remaining != 0)
        return PROTO_ERR_COBS;
    if (rx.overflow)
        return PROTO_ERR_LENGTH;
    if (rx.len < MIN_FRAME)
        return PROTO_ERR_SHORT;

    uint16_t n = (uint16_t)(rx.len - CRC_SIZE);
    if (crc32_update(0, rx.buf, n) != proto_get_u32(rx.buf + n))
        return PROTO_ERR_CRC;

    out->type = rx.buf[0];
    out->seq = proto_get_u16(rx.buf + 1);
    out->body = rx.buf + PROTO_HEADER_SIZE;
    out->len = (uint16_t)(n - PROTO_HEADER_SIZE);
    return PROTO_FRAME;
}

int proto_feed(uint8_t byte, proto_frame_t *out)
{
    if (byte == 0) {
        if (!rx.started)
            return PROTO_NONE;  /* empty frame: a separator, not an error */
        int status = rx_finish(out);
        proto_reset();
        return status;
    }
    rx.started = 1;
    if (rx.remaining == 0) {  /* a code byte starts a new block */
        if (rx.zero_pending)
            rx_store(0);
        rx.remaining = (uint8_t)(byte - 1);
        rx.zero_pending = (byte != 0xFF);
    } else {
        rx_store(byte);
        rx.remaining--;
    }
    return PROTO_NONE;
}

int proto_poll(proto_frame_t *out)
{
    for (;;) {
        int c = board_getc();
        if (c < 0)
            return PROTO_NONE;
        int status = proto_feed((uint8_t)c, out);
        if (status != PROTO_NONE)
            return status;
    }
}

const char *proto_status_name(int status)
{
    switch (status) {
    case PROTO_NONE: return "none";
    case PROTO_FRAME: return "frame";
    case PROTO_ERR_COBS: return "bad COBS encoding";
    case PROTO_ERR_SHORT: return "frame too short";
    case PROTO_ERR_LENGTH: return "frame too long";
    case PROTO_ERR_CRC: return "CRC mismatch";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------------ sender */

/* COBS encoder state: a block is held back until its length (the code byte) is known. */
static struct {
    uint8_t block[254];
    uint8_t len;
    uint8_t last_full;  /* the previous block was a full 0xFF block */
} tx;

static void tx_flush(uint8_t code)
{
    board_putc(code);
    for (uint8_t i = 0; i < tx.len; i++)
        board_putc(tx.block[i]);
    tx.len = 0;
}

static void tx_byte(uint8_t byte)
{
    if (byte == 0) {
        tx_flush((uint8_t)(tx.len + 1));
        tx.last_full = 0;
        return;
    }
    tx.block[tx.len++] = byte;
    if (tx.len == 254) {
        tx_flush(0xFF);
        tx.last_full = 1;
    }
}

static void tx_bytes(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        tx_byte(data[i]);
}

static void tx_end(void)
{
    /* Canonical COBS: data ending exactly with a full block gets no extra empty block. */
    if (tx.len > 0 || !tx.last_full)
        tx_flush((uint8_t)(tx.len + 1));
    board_putc(0);
}

void proto_send(uint8_t type, uint16_t seq, const uint8_t *body, size_t len)
{
    uint8_t header[PROTO_HEADER_SIZE];
    uint8_t crc_bytes[CRC_SIZE];

    if (len > PROTO_MAX_BODY)
        len = PROTO_MAX_BODY;
    proto_put_u16(proto_put_u8(header, type), seq);
    uint32_t crc = crc32_update(0, header, sizeof header);
    crc = crc32_update(crc, body, len);
    proto_put_u32(crc_bytes, crc);

    board_putc(0);  /* separates this frame from anything sent before */
    tx.len = 0;
    tx.last_full = 0;
    tx_bytes(header, sizeof header);
    tx_bytes(body, len);
    tx_bytes(crc_bytes, sizeof crc_bytes);
    tx_end();
}

void proto_send_error(uint16_t seq, uint16_t code, uint32_t detail, const char *message)
{
    uint8_t body[PROTO_ERROR_MAX];
    uint8_t *p = proto_put_u32(proto_put_u16(body, code), detail);

    while (message && *message && p < body + sizeof body)
        *p++ = (uint8_t)*message++;
    proto_send(MSG_ERROR, seq, body, (size_t)(p - body));
}

/* ------------------------------------------------------------------ little-endian helpers */

uint8_t *proto_put_u8(uint8_t *p, uint8_t v)
{
    p[0] = v;
    return p + 1;
}

uint8_t *proto_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

uint8_t *proto_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
    return p + 4;
}

union f32_bits {
    float f;
    uint32_t u;
};

uint8_t *proto_put_f32(uint8_t *p, float v)
{
    union f32_bits bits;
    bits.f = v;
    return proto_put_u32(p, bits.u);
}

uint8_t *proto_put_str(uint8_t *p, const char *s, size_t size)
{
    size_t i = 0;
    for (; s && s[i] && i < size; i++)
        p[i] = (uint8_t)s[i];
    for (; i < size; i++)
        p[i] = 0;
    return p + size;
}

uint16_t proto_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

uint32_t proto_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

float proto_get_f32(const uint8_t *p)
{
    union f32_bits bits;
    bits.u = proto_get_u32(p);
    return bits.f;
}
