"""`twin count` (issue 12, item 5): any bare-metal ELF under the profiling plugin, phases cut at the entries
of named functions, the UART captured, faults / hangs / phases never reached as one-line errors, and
`twin predict --counts` on a board of that ISA. The programs are small C files built here."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from fixtures.programs import FIXTURES  # tests/ is on sys.path under pytest

from calibration.predict import PredictError, counts_from_count_file, isa_runs_on, predict_from_count_file
from twin.cli.main import main
from twin.profile.isa import CLASSES
from twin.profile.own import CountError, CountSpec, count

pytestmark = pytest.mark.qemu

# work(n) in both programs: a guard, 4 instructions per iteration, a return: 4n + 2 for n > 0
WORK = r"""
void work(unsigned n);
__attribute__((noinline)) void setup(void);
__attribute__((noinline)) void never_called(void);
"""

ARM_C = WORK + r"""
typedef unsigned int u32;
#define UART 0x40004000u
#define REG(a) (*(volatile u32 *)(a))
extern u32 _stack_top;
void reset_handler(void);
__attribute__((section(".vectors"), used)) const void *const vectors[2] = {&_stack_top, reset_handler};
__asm__(".text\n.thumb\n.syntax unified\n.global work\n.type work, %function\n.thumb_func\n"
        "work:\n cbz r0, 2f\n1: adds r1, r1, #1\n eors r2, r2, r1\n subs r0, r0, #1\n bne 1b\n2: bx lr\n"
        ".size work, .-work\n");
static void putc_(char c) { while (REG(UART + 4) & 1) ; REG(UART) = (u32)c; }
__attribute__((noinline)) void say(const char *s) { while (*s) putc_(*s++); }
void setup(void) { REG(UART + 0x10) = 16; REG(UART + 8) = 1; }
void never_called(void) { say("never"); }
__attribute__((noinline)) void spin(void) { for (;;) __asm__ volatile(""); }
void reset_handler(void)
{
    u32 mode = *(volatile u32 *)0x20001004u;     /* --load: 0 normal, 1 fault, 2 hang */
    setup();
    say("hello\n");
    work(10);
    work(100);
    work(*(volatile u32 *)0x20001000u);          /* --load: the third loop length */
    if (mode == 1) __asm__ volatile("udf #0");   /* no HardFault handler: a lockup */
    if (mode == 2) spin();
    say("bye\n");
    register u32 r0 __asm__("r0") = 0x18;        /* semihosting SYS_EXIT, ADP_Stopped_ApplicationExit */
    register u32 r1 __asm__("r1") = 0x20026;
    __asm__ volatile("bkpt 0xab" :: "r"(r0), "r"(r1));
    for (;;) ;
}
"""

RV_C = WORK + r"""
__asm__(".section .text.start, \"ax\"\n.global _start\n_start:\n la sp, _stack_top\n call main\n1: j 1b\n"
        ".text\n.global work\n.type work, @function\n"
        "work:\n beqz a0, 2f\n1: addi a1, a1, 1\n xor a2, a2, a1\n addi a0, a0, -1\n bnez a0, 1b\n2: ret\n"
        ".size work, .-work\n");
__attribute__((noinline)) void say(const char *s) { while (*s) *(volatile unsigned char *)0x10000000u = *s++; }
void setup(void) { say("rv\n"); }
void never_called(void) { say("never"); }
int main(void)
{
    setup();
    work(10);
    work(100);
    *(volatile unsigned *)0x100000u = 0x5555;    /* the machine's exit device (SiFive test): pass */
    for (;;) ;
}
"""

TOOLS = {"arm": ("arm-none-eabi-gcc", "qemu-system-arm", ("-mcpu=cortex-m4", "-mthumb"), "arm.ld", ARM_C),
         "riscv": ("riscv64-unknown-elf-gcc", "qemu-system-riscv32",
                   ("-march=rv32imac_zicsr", "-mabi=ilp32", "-mcmodel=medany"), "riscv.ld", RV_C)}


def _build(arch, tmp_path):
    gcc, qemu, flags, ld, src = TOOLS[arch]
    if shutil.which(gcc) is None or shutil.which(qemu) is None:
        pytest.skip(f"{gcc} or {qemu} not installed")
    c = tmp_path / f"{arch}_own.c"
    c.write_text(src)
    elf = tmp_path / f"{arch}_own.elf"
    subprocess.run([gcc, *flags, "-O2", "-g", "-nostdlib", "-nostartfiles", "-ffreestanding",
                    "-Wl,--no-warn-rwx-segments", "-T", str(FIXTURES / ld), "-o", str(elf), str(c)],
                   check=True, capture_output=True, text=True)
    return elf


@pytest.fixture(scope="module")
def arm_elf(tmp_path_factory):
    return _build("arm", tmp_path_factory.mktemp("arm"))


def _words(tmp_path, name, *values):
    path = tmp_path / name
    path.write_bytes(b"".join(v.to_bytes(4, "little") for v in values))
    return path


def _arm_count(arm_elf, tmp_path, n3=7, mode=0, phases=("setup", "work"), timeout=20.0):
    load = _words(tmp_path, f"load-{n3}-{mode}.bin", n3, mode)
    return count(CountSpec(elf=arm_elf, platform="mps2-an386", phases=phases, loads=((0x20001000, load),),
                           timeout=timeout))


def test_arm_counts_match_the_loop_length_and_phases_cut_at_the_symbols(arm_elf, tmp_path):
    r = _arm_count(arm_elf, tmp_path, n3=7)
    assert r["uart"] == "hello\nbye\n" and r["exit"]["status"] == 0
    assert r["phases"] == ["start", "setup", "work"]
    f = r["by_phase_functions"]
    assert f["work"]["work"] == sum(4 * n + 2 for n in (10, 100, 7))        # exactly the analytic length
    assert len(r["instructions"]["by_phase_entries"]["work"]) == 3          # one instance per call
    # cut exactly at the entries: no instruction of setup before its phase, none of work outside its own
    assert set(f["start"]) == {"reset_handler"}
    assert "work" not in f["setup"] and f["setup"]["setup"] == r_setup_len(arm_elf)
    seq = [s["phase"] for s in r["sequence"]]
    assert seq == ["start", "setup", "work", "work", "work"]
    ins = r["instructions"]
    assert ins["total"] == sum(ins["by_phase"].values()) == sum(s["instructions"] for s in r["sequence"])
    assert sum(ins["by_class"].values()) == ins["total"] and set(ins["by_class"]) == set(CLASSES)
    assert r["memory_traffic"]["setup"]["peripherals"]["stores"] >= 2 + 6   # BAUDDIV, CTRL, "hello\n"
    assert r["elf_isa"] == "armv7e-m" and r["memory"]["flash_bytes"] > 0
    # the loaded loop length moves the work phase by exactly 4 instructions per iteration
    r2 = _arm_count(arm_elf, tmp_path, n3=20)
    assert r2["by_phase_functions"]["work"]["work"] - f["work"]["work"] == 4 * 13
    assert r2["instructions"]["by_phase"]["work"] - ins["by_phase"]["work"] == 4 * 13


def r_setup_len(elf):
    """setup's instructions from its disassembly (straight-line code: every one runs once)."""
    out = subprocess.run(["arm-none-eabi-objdump", "-d", "--disassemble=setup", str(elf)], capture_output=True,
                         text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("  ") and "\t" in line)


def test_riscv_counts_and_the_exit_device(tmp_path):
    elf = _build("riscv", tmp_path)
    r = count(CountSpec(elf=elf, platform="riscv32-virt", phases=("work",), timeout=20.0))
    assert r["uart"] == "rv\n"
    assert r["by_phase_functions"]["work"]["work"] == (4 * 10 + 2) + (4 * 100 + 2)
    assert "work" not in r["by_phase_functions"]["start"]
    assert r["instructions"]["by_phase_entries"]["work"][1] - r["instructions"]["by_phase_entries"]["work"][0] \
        in range(4 * 90, 4 * 90 + 8)                                        # the loop plus a few of main's
    assert r["elf_isa"].startswith("rv32imac")


def test_fault_hang_and_phases_never_reached_are_one_line_errors(arm_elf, tmp_path):
    with pytest.raises(CountError, match=r"^the firmware faulted.*Lockup") as e:
        _arm_count(arm_elf, tmp_path, mode=1)
    assert "\n" not in str(e.value)
    with pytest.raises(CountError, match=r"did not exit within 2 s \(hung\?\).*running spin") as e:
        _arm_count(arm_elf, tmp_path, mode=2, timeout=2.0)
    assert "\n" not in str(e.value)
    with pytest.raises(CountError, match=r"phase 'never_called': the firmware never entered never_called"):
        _arm_count(arm_elf, tmp_path, phases=("work", "never_called"))
    with pytest.raises(CountError, match=r"no function symbol 'nosuch'"):
        _arm_count(arm_elf, tmp_path, phases=("nosuch",))
    with pytest.raises(CountError, match=r"runs 32-bit riscv code"):
        count(CountSpec(elf=arm_elf, platform="riscv32-virt"))


def test_cli_count_then_predict_a_board_of_that_isa(arm_elf, tmp_path):
    load = _words(tmp_path, "n.bin", 7, 0)
    out = tmp_path / "own.count.json"
    r = CliRunner().invoke(main, ["count", "--elf", str(arm_elf), "--platform", "mps2-an386", "--phase", "setup",
                                  "--phase", "work", "--load", f"0x20001000={load}", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert json.loads(out.read_text()) | {"wall_seconds": 0} == data | {"wall_seconds": 0}
    counts = counts_from_count_file(out)
    entries = data["instructions"]["by_phase_entries"]["work"]
    assert sum(counts.decode.values()) == pytest.approx(sum(entries) / 3)          # a token = one work entry
    assert sum(counts.prefill.values()) == data["instructions"]["total"] - sum(entries)
    p = CliRunner().invoke(main, ["predict", "--counts", str(out), "--platform", "nucleo-h743zi", "--json"])
    assert p.exit_code == 0, p.output
    pr = json.loads(p.output)
    assert pr["platform"] == "nucleo-h743zi" and pr["counts"]["platform"] == "mps2-an386"
    assert pr["token_seconds"]["value"] > 0 and pr["energy_per_token_joules"]["value"] > 0
    assert any("a token = one entry of work" in n for n in pr["notes"])
    # the H743's I-cache (a board of the counted ISA) was simulated on the run: the prediction uses its misses
    work = data["instructions"]["by_phase_icache"]["work"]["16384B/32B/2w"]
    assert 0 < work["misses"] < work["lookups"] and work["prefetched"] == 0
    assert counts.decode_icache["16384B/32B/2w"]["lookups"] == pytest.approx(work["lookups"] / 3)
    assert any(n.startswith("fetch stalls from the twin's simulation of the 16384B/32B/2w") for n in pr["notes"])
    bad = CliRunner().invoke(main, ["predict", "--counts", str(out), "--platform", "esp32-c3-devkit"])
    assert bad.exit_code != 0 and "cannot run the counted code (armv7e-m" in bad.output
    with pytest.raises(PredictError, match="not a `twin count --json` file"):
        predict_from_count_file("nucleo-h743zi", _words(tmp_path, "junk.json", 0))
    bad = CliRunner().invoke(main, ["count", "--elf", str(arm_elf), "--platform", "mps2-an386", "--load", "x=y"])
    assert bad.exit_code != 0 and "want ADDR=FILE" in bad.output


def test_isa_compatibility():
    assert isa_runs_on("armv6-m", "armv7e-m") and isa_runs_on("armv7e-m", "armv8-m.main")
    assert not isa_runs_on("armv7e-m", "armv6-m")
    assert isa_runs_on("rv32imc", "rv32imac") and isa_runs_on("rv32imac_zicsr_zmmul", "rv32imac")
    assert not isa_runs_on("rv32imac", "rv32imc")
