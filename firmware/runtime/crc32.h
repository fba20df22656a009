/* CRC-32 (IEEE 802.3 / zlib: reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF).
 *
 * The one CRC-32 of the firmware: the model-image check (model.c), the protocol (app/proto.c) and
 * the workload checksums: crc32_update(0, data, len) equals Python's zlib.crc32(data),
 * and CRCs chain like zlib: crc32_update(crc32_update(0, a, na), b, nb) == CRC of a||b.
 * Freestanding: needs only <stdint.h> and <stddef.h>. Uses a 16-entry (64-byte) table. */
#ifndef TWIN_CRC32_H
#define TWIN_CRC32_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t len);

#endif
