/* Native test driver for the model runtime (host gcc). Used by tests/model/test_runtime_native.py.
 *   driver open   IMAGE PARTITION ARENA          -> status, arena needed/used, crc, size, name
 *   driver gen    IMAGE N SEED TEMP TOPP TOK...  -> generated tokens (TEMP/TOPP: float32 bits, hex)
 *   driver logits IMAGE TOK...                   -> per position, the logits as float32 bits (hex)
 *   driver math   < hex float32 bits, one a line -> bits of tw_expf, tw_sqrtf, sin, cos
 *   driver quant  GROUP < hex float32 bits, one vector a line -> quantize_act's codes (decimal)
 *                 then its group scales (bits), one line each
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static uint8_t *load(const char *path, uint32_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = aligned_alloc(8, (size_t)n + 8);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) { perror("read"); exit(2); }
    fclose(f);
    *size = (uint32_t)n;
    return buf;
}

static float from_bits(const char *s) {
    uint32_t u = (uint32_t)strtoul(s, NULL, 16);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static twin_model model;

static void open_or_die(const char *path) {
    uint32_t size;
    uint8_t *img = load(path, &size);
    static uint8_t arena[1 << 24];
    int rc = model_open(&model, img, size, arena, sizeof arena);
    if (rc) { printf("status %d\n", rc); exit(1); }
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "open")) {
        uint32_t size, partition = (uint32_t)strtoul(argv[3], NULL, 0);
        uint32_t arena_size = (uint32_t)strtoul(argv[4], NULL, 0);
        uint8_t *img = load(argv[2], &size);
        uint8_t *part = aligned_alloc(8, partition + 8);
        memset(part, 0xFF, partition);
        memcpy(part, img, size < partition ? size : partition);
        uint8_t *arena = aligned_alloc(8, arena_size + 8);
        int rc = model_open(&model, part, partition, arena, arena_size);
        printf("status %d needed %u used %u crc %08x size %u name %s\n", rc, model_arena_needed(&model),
               model_arena_used(&model), model_image_crc(&model), model_image_size(&model), model_name(&model));
        return 0;
    }
    if (argc >= 8 && !strcmp(argv[1], "gen")) {
        open_or_die(argv[2]);
        int n = atoi(argv[3]), n_prompt = argc - 7, pos = 0;
        uint32_t rng;
        rng_seed(&rng, (uint32_t)strtoul(argv[4], NULL, 0));
        float temperature = from_bits(argv[5]), topp = from_bits(argv[6]);
        for (int i = 0; i < n_prompt - 1; i++) model_forward(&model, atoi(argv[7 + i]), pos++);
        int token = atoi(argv[argc - 1]);
        for (int k = 0; k < n; k++) {
            const float *logits = model_forward(&model, token, pos++);
            if (!logits) { printf("forward failed\n"); return 1; }
            token = model_sample(&model, logits, temperature, topp, &rng);
            printf("%d ", token);
        }
        printf("\n");
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "logits")) {
        open_or_die(argv[2]);
        for (int i = 3; i < argc; i++) {
            const float *logits = model_forward(&model, atoi(argv[i]), i - 3);
            for (uint32_t v = 0; v < model_vocab_size(&model); v++) printf("%08x ", to_bits(logits[v]));
            printf("\n");
        }
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "math")) {
        char line[64];
        while (fgets(line, sizeof line, stdin)) {
            float x = from_bits(line), s, c;
            tw_sincosf(x, &s, &c);
            printf("%08x %08x %08x %08x\n", to_bits(tw_expf(x)), to_bits(tw_sqrtf(x)), to_bits(s), to_bits(c));
        }
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "quant")) {
        static char line[1 << 16];
        static float x[4096], xs[4096 / 32];
        static int8_t xq[4096 + 128];
        uint32_t group = (uint32_t)atoi(argv[2]);
        while (fgets(line, sizeof line, stdin)) {
            uint32_t n = 0;
            for (char *tok = strtok(line, " \n"); tok && n < 4096; tok = strtok(NULL, " \n")) x[n++] = from_bits(tok);
            quantize_act(xq, xs, x, n, group);
            uint32_t ng = (n + group - 1) / group;
            for (uint32_t j = 0; j < ng * group; j++) printf("%d ", xq[j]);
            printf("\n");
            for (uint32_t g = 0; g < ng; g++) printf("%08x ", to_bits(xs[g]));
            printf("\n");
        }
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of driver.c\n");
    return 2;
}
