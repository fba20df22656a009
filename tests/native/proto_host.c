/* Native test driver for firmware/app/proto.c: an echo device on stdin/stdout.
 *
 * Every valid frame is answered with a frame of type (type | 0x80), the same seq and the same
 * body. A corrupt frame is answered with ERROR E_FRAME, seq 0xFFFF, detail = -status and the
 * status name as the message. Ends at end of input. */
#include <stdio.h>
#include <unistd.h>

#include "proto.h"

static unsigned char out_buf[4096];
static size_t out_len;

static void flush_out(void)
{
    size_t done = 0;
    while (done < out_len) {
        ssize_t n = write(1, out_buf + done, out_len - done);
        if (n <= 0)
            return;
        done += (size_t)n;
    }
    out_len = 0;
}

void board_putc(uint8_t c)
{
    if (out_len == sizeof out_buf)
        flush_out();
    out_buf[out_len++] = c;
}

int board_getc(void)
{
    unsigned char c;
    return read(0, &c, 1) == 1 ? c : -1;
}

int main(void)
{
    unsigned char in[256];
    ssize_t n;
    proto_frame_t frame;

    while ((n = read(0, in, sizeof in)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            int status = proto_feed(in[i], &frame);
            if (status == PROTO_FRAME)
                proto_send((uint8_t)(frame.type | 0x80), frame.seq, frame.body, frame.len);
            else if (status < 0)
                proto_send_error(PROTO_SEQ_NONE, E_FRAME, (uint32_t)-status, proto_status_name(status));
        }
        flush_out();
    }
    return 0;
}
