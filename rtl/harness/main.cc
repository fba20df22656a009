// The RTL bench board's harness: clocks the Verilated SoC (rtl/soc/twin_soc.sv) and implements the
// memory map behind its two ports, as QEMU's riscv32 `virt` machine lays it out for the firmware:
//
//   0x0000_1000  reset ROM (256 B): a jump to the DRAM base, at +0x00 and at +0x80 (Ibex starts there);
//                with --cpuctrl N, a write of N to Ibex's cpuctrlsts CSR (0x7C0) before it
//   0x0010_0000  SiFive test finisher: 0x5555 ends the run with 0, (code << 16) | 0x3333 with code
//   0x1000_0000  NS16550 console: RBR/THR at +0, LSR at +5 (bit 0 data ready, bit 5 THR empty)
//   0x8000_0000  DRAM (--dram-size): the ELF's loadable segments and the --load files
//
// The console is a TCP socket: the harness inherits one that is already listening (--listen-fd, as
// QEMU does) and accepts the host's connection before the first clock, so the host opens the board
// with pyserial exactly as it opens a serial port. On exit it prints one line of figures to stderr:
//   twin-rtl: cycles=N seconds=S cycles_per_second=R exit=E
#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

#include "Vtwin_soc.h"
#include "Vtwin_soc__Dpi.h"
#include "svdpi.h"
#include "verilated.h"

namespace {

constexpr uint32_t kRomBase = 0x00001000u, kRomSize = 0x100u;
constexpr uint32_t kFinisher = 0x00100000u;
constexpr uint32_t kUartBase = 0x10000000u, kUartSize = 0x100u;
constexpr uint32_t kDramBase = 0x80000000u;

struct Board {
    std::vector<uint8_t> dram;
    uint32_t rom[kRomSize / 4] = {};
    int conn = -1;
    std::vector<uint8_t> rx;         // bytes from the host not yet read by the firmware
    size_t rx_pos = 0;
    bool finished = false;
    int exit_code = 0;
    std::string fault;               // why the run stopped, when it is not the firmware's exit
    uint64_t cycle = 0;
};

Board board;

[[noreturn]] void die(const std::string &msg)
{
    std::fprintf(stderr, "twin-rtl: %s\n", msg.c_str());
    std::exit(2);
}

std::string hex(uint32_t v)
{
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}

std::vector<uint8_t> read_file(const char *path)
{
    FILE *f = std::fopen(path, "rb");
    if (!f)
        die(std::string("cannot open ") + path + ": " + std::strerror(errno));
    std::vector<uint8_t> data;
    uint8_t buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
        data.insert(data.end(), buf, buf + n);
    std::fclose(f);
    return data;
}

uint8_t *dram_at(uint32_t addr, size_t len)
{
    if (addr < kDramBase || uint64_t(addr - kDramBase) + len > board.dram.size())
        return nullptr;
    return board.dram.data() + (addr - kDramBase);
}

void place(uint32_t addr, const uint8_t *src, size_t len, const char *what)
{
    uint8_t *dst = dram_at(addr, len);
    if (!dst)
        die(std::string(what) + " does not fit the DRAM at " + hex(addr));
    std::memcpy(dst, src, len);
}

template <typename T> T get(const std::vector<uint8_t> &d, size_t off)
{
    if (off + sizeof(T) > d.size())
        die("the ELF file is truncated");
    T v;
    std::memcpy(&v, d.data() + off, sizeof v);
    return v;
}

// Load the PT_LOAD segments of a little-endian ELF32 RISC-V file at their physical addresses.
void load_elf(const char *path)
{
    std::vector<uint8_t> d = read_file(path);
    if (d.size() < 52 || std::memcmp(d.data(), "\x7f" "ELF", 4) != 0 || d[4] != 1 || d[5] != 1)
        die(std::string(path) + " is not a little-endian ELF32 file");
    if (get<uint16_t>(d, 18) != 243)
        die(std::string(path) + " is not a RISC-V ELF");
    uint32_t phoff = get<uint32_t>(d, 28);
    uint16_t phentsize = get<uint16_t>(d, 42), phnum = get<uint16_t>(d, 44);
    for (uint16_t i = 0; i < phnum; i++) {
        size_t ph = phoff + size_t(i) * phentsize;
        if (get<uint32_t>(d, ph) != 1)      // PT_LOAD
            continue;
        uint32_t offset = get<uint32_t>(d, ph + 4), paddr = get<uint32_t>(d, ph + 12);
        uint32_t filesz = get<uint32_t>(d, ph + 16), memsz = get<uint32_t>(d, ph + 20);
        if (memsz == 0)
            continue;
        if (uint64_t(offset) + filesz > d.size())
            die(std::string(path) + ": a segment lies beyond the end of the file");
        uint8_t *dst = dram_at(paddr, memsz);
        if (!dst)
            die(std::string(path) + ": segment at " + hex(paddr) + " is outside the DRAM");
        std::memcpy(dst, d.data() + offset, filesz);
        std::memset(dst + filesz, 0, memsz - filesz);
    }
}

// lui t0, %hi(DRAM); jalr zero, 0(t0) — at the ROM base and at base + 0x80 (Ibex's reset PC).
// cpuctrl >= 0: first csrrwi zero, 0x7c0, cpuctrl — Ibex's cpuctrlsts (bit 0: icache_enable, off at
// reset), a CSR QEMU's virt machine does not have, so it is set here and the firmware stays the
// twin's. These instructions run before the firmware's first phase mark: no phase counts them.
void fill_rom(int cpuctrl)
{
    const uint32_t lui_t0 = (kDramBase & 0xfffff000u) | (5u << 7) | 0x37u;
    const uint32_t jalr_t0 = (5u << 15) | 0x67u;
    const uint32_t csrwi_cpuctrl = (0x7c0u << 20) | (uint32_t(cpuctrl) << 15) | (5u << 12) | 0x73u;
    for (uint32_t at : {0u, 0x80u / 4}) {
        if (cpuctrl >= 0)
            board.rom[at++] = csrwi_cpuctrl;
        board.rom[at] = lui_t0;
        board.rom[at + 1] = jalr_t0;
    }
}

// ----------------------------------------------------------------------------------- the console

void rx_poll()
{
    if (board.rx_pos < board.rx.size())
        return;
    board.rx.clear();
    board.rx_pos = 0;
    uint8_t buf[4096];
    ssize_t n = recv(board.conn, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
        board.rx.assign(buf, buf + n);
    } else if (n == 0) {
        board.fault = "the host closed the console connection";
        board.finished = true;
        board.exit_code = 3;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        board.fault = std::string("console receive failed: ") + std::strerror(errno);
        board.finished = true;
        board.exit_code = 3;
    }
}

void tx(uint8_t c)
{
    for (;;) {
        ssize_t n = send(board.conn, &c, 1, MSG_NOSIGNAL);
        if (n == 1)
            return;
        if (n < 0 && errno == EINTR)
            continue;
        board.fault = "the host closed the console connection";
        board.finished = true;
        board.exit_code = 3;
        return;
    }
}

uint8_t uart_read(uint32_t off)
{
    switch (off) {
    case 0:
        rx_poll();
        return board.rx_pos < board.rx.size() ? board.rx[board.rx_pos++] : 0;
    case 5:
        rx_poll();
        return uint8_t(0x60u | (board.rx_pos < board.rx.size() ? 1u : 0u));
    default:
        return 0;
    }
}

void bus_fault(const char *what, uint32_t addr)
{
    if (board.finished)
        return;
    board.fault = std::string(what) + " at unmapped address " + hex(addr) + " (cycle " +
                  std::to_string(board.cycle) + ")";
    board.finished = true;
    board.exit_code = 4;
}

}  // namespace

// ----------------------------------------------------------------------------------- DPI: the bus

extern "C" unsigned int twin_bus_read(unsigned int addr, unsigned int be, svBit fetch)
{
    uint32_t word = addr & ~3u;
    if (const uint8_t *p = dram_at(word, 4)) {
        uint32_t v;
        std::memcpy(&v, p, 4);
        return v;
    }
    if (word - kRomBase < kRomSize)
        return board.rom[(word - kRomBase) / 4];
    if (!fetch && word - kUartBase < kUartSize) {
        uint32_t v = 0;
        for (unsigned lane = 0; lane < 4; lane++)
            if (be & (1u << lane))
                v |= uint32_t(uart_read(word - kUartBase + lane)) << (8 * lane);
        return v;
    }
    if (!fetch && word == kFinisher)
        return 0;
    bus_fault(fetch ? "instruction fetch" : "load", addr);
    return 0;
}

extern "C" void twin_bus_write(unsigned int addr, unsigned int be, unsigned int data)
{
    uint32_t word = addr & ~3u;
    if (uint8_t *p = dram_at(word, 4)) {
        for (unsigned lane = 0; lane < 4; lane++)
            if (be & (1u << lane))
                p[lane] = uint8_t(data >> (8 * lane));
        return;
    }
    if (word - kUartBase < kUartSize) {
        if (word == kUartBase && (be & 1u))
            tx(uint8_t(data));
        return;
    }
    if (word == kFinisher) {
        uint32_t status = data & 0xffffu;
        if (status == 0x5555u || status == 0x3333u) {
            board.finished = true;
            board.exit_code = status == 0x5555u ? 0 : int(data >> 16);
        }
        return;
    }
    bus_fault("store", addr);
}

// ----------------------------------------------------------------------------------- main

namespace {

uint32_t number(const char *s, const char *flag)
{
    char *end = nullptr;
    errno = 0;
    unsigned long v = std::strtoul(s, &end, 0);
    if (errno || !end || *end || v > 0xffffffffUL)
        die(std::string("bad value for ") + flag + ": " + s);
    return uint32_t(v);
}

void usage()
{
    die("usage: twin-rtl --elf FILE --listen-fd N [--load ADDR=FILE]... [--flash-wait N] [--ram-wait N] "
        "[--ram-base ADDR] [--boot ADDR] [--dram-size BYTES] [--max-cycles N] [--cpuctrl 0..31]");
}

}  // namespace

int main(int argc, char **argv)
{
    const char *elf = nullptr;
    std::vector<std::pair<uint32_t, std::string>> loads;
    int listen_fd = -1;
    uint32_t flash_wait = 0, ram_wait = 0, ram_base = 0xffffffffu, boot = kRomBase;
    uint32_t dram_size = 16u << 20;
    uint64_t max_cycles = 0;
    int cpuctrl = -1;                // no CSR write in the reset ROM
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (a == "--elf") elf = v;
        else if (a == "--listen-fd") listen_fd = int(number(v, "--listen-fd"));
        else if (a == "--flash-wait") flash_wait = number(v, "--flash-wait");
        else if (a == "--ram-wait") ram_wait = number(v, "--ram-wait");
        else if (a == "--ram-base") ram_base = number(v, "--ram-base");
        else if (a == "--boot") boot = number(v, "--boot");
        else if (a == "--dram-size") dram_size = number(v, "--dram-size");
        else if (a == "--max-cycles") max_cycles = std::strtoull(v, nullptr, 0);
        else if (a == "--cpuctrl") {
            uint32_t bits = number(v, "--cpuctrl");
            if (bits > 31)
                die("--cpuctrl must be 0..31 (a csrrwi immediate)");
            cpuctrl = int(bits);
        }
        else if (a == "--load") {
            const char *eq = std::strchr(v, '=');
            if (!eq)
                usage();
            loads.emplace_back(number(std::string(v, eq).c_str(), "--load"), eq + 1);
        } else
            usage();
    }
    if (!elf || listen_fd < 0)
        usage();
    if (flash_wait > 255 || ram_wait > 255)
        die("wait states must be 0..255");

    board.dram.assign(dram_size, 0);
    fill_rom(cpuctrl);
    load_elf(elf);
    for (auto &[addr, path] : loads) {
        std::vector<uint8_t> data = read_file(path.c_str());
        place(addr, data.data(), data.size(), path.c_str());
    }

    board.conn = accept(listen_fd, nullptr, nullptr);
    if (board.conn < 0)
        die(std::string("accept on the console socket failed: ") + std::strerror(errno));
    close(listen_fd);
    int one = 1;
    setsockopt(board.conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(1, argv);
    auto top = std::make_unique<Vtwin_soc>(ctx.get());
    top->flash_wait_i = uint8_t(flash_wait);
    top->ram_wait_i = uint8_t(ram_wait);
    top->ram_base_i = ram_base;
    top->boot_addr_i = boot;
    // Reset: an edge of rst_ni, not just a low level, for the asynchronous resets (always_ff @(posedge
    // clk or negedge rst_ni)) behind a core's own clock gate (ibex_top gates the core's clock off
    // while core_busy_q, reset to off, is off): those flops see no clock edge during reset, only this.
    // Without it they kept their initial value: e.g. the I-cache's round-robin way, one-hot 01 at
    // reset, stayed 00 and no line was allocated once both ways of a set were filled.
    top->clk_i = 0;
    top->rst_ni = 1;
    top->eval();
    top->rst_ni = 0;
    top->eval();
    for (int i = 0; i < 4; i++) {
        top->clk_i = 1;
        top->eval();
        top->clk_i = 0;
        top->eval();
    }
    top->rst_ni = 1;
    top->eval();

    auto t0 = std::chrono::steady_clock::now();
    while (!board.finished) {
        top->clk_i = 1;
        top->eval();
        top->clk_i = 0;
        top->eval();
        if (++board.cycle == max_cycles) {
            board.fault = "the run reached --max-cycles " + std::to_string(max_cycles);
            board.exit_code = 5;
            break;
        }
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    top->final();
    if (!board.fault.empty())
        std::fprintf(stderr, "twin-rtl: %s\n", board.fault.c_str());
    std::fprintf(stderr, "twin-rtl: cycles=%llu seconds=%.3f cycles_per_second=%.0f exit=%d\n",
                 (unsigned long long)board.cycle, seconds, seconds > 0 ? board.cycle / seconds : 0.0,
                 board.exit_code);
    shutdown(board.conn, SHUT_WR);
    close(board.conn);
    return board.exit_code;
}
