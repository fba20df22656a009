// lowRISC Ibex (RV32IMC) as the bench board's core. The RTL comes from the pythondata-cpu-ibex
// package; its configuration (multiplier, branch-target ALU, writeback stage, instruction cache)
// comes from the board's platform file (rtl.config), passed by the build as defines.
`ifndef IBEX_RV32M
  `define IBEX_RV32M ibex_pkg::RV32MFast
`endif
`ifndef IBEX_BRANCH_TARGET_ALU
  `define IBEX_BRANCH_TARGET_ALU 1'b0
`endif
`ifndef IBEX_WRITEBACK_STAGE
  `define IBEX_WRITEBACK_STAGE 1'b0
`endif
`ifndef IBEX_ICACHE
  `define IBEX_ICACHE 1'b0
`endif
module twin_cpu #(
  parameter ibex_pkg::rv32m_e RV32M           = `IBEX_RV32M,
  parameter bit               BranchTargetALU = `IBEX_BRANCH_TARGET_ALU,
  parameter bit               WritebackStage  = `IBEX_WRITEBACK_STAGE,
  parameter bit               ICache          = `IBEX_ICACHE
) (
  input  logic        clk_i,
  input  logic        rst_ni,
  input  logic [31:0] boot_addr_i,
  output logic        instr_req_o,
  input  logic        instr_gnt_i,
  input  logic        instr_rvalid_i,
  output logic [31:0] instr_addr_o,
  input  logic [31:0] instr_rdata_i,
  output logic        data_req_o,
  input  logic        data_gnt_i,
  input  logic        data_rvalid_i,
  output logic        data_we_o,
  output logic [3:0]  data_be_o,
  output logic [31:0] data_addr_o,
  output logic [31:0] data_wdata_o,
  input  logic [31:0] data_rdata_i
);
  // Ibex starts at boot_addr[31:8] + 0x80; the harness's reset ROM there jumps to the firmware.
  // With ICache, the cache (ibex_icache.sv: its default 4 kB, 2 ways, 64-bit lines, no ECC or
  // scrambling) replaces the prefetch buffer; it passes fetches through until software sets
  // cpuctrlsts.icache_enable (CSR 0x7C0 bit 0, reset 0), which the reset ROM does (--cpuctrl).
  ibex_top #(
    .RV32M(RV32M), .RV32B(ibex_pkg::RV32BNone), .RegFile(ibex_pkg::RegFileFF),
    .BranchTargetALU(BranchTargetALU), .WritebackStage(WritebackStage),
    .ICache(ICache), .ICacheECC(1'b0), .ICacheScramble(1'b0),
    .DmBaseAddr(32'h0000_0800), .DmAddrMask(32'h0000_0003),
    .DmHaltAddr(32'h0000_0800), .DmExceptionAddr(32'h0000_0800)
  ) u_top (
    .clk_i, .rst_ni,
    .test_en_i(1'b0), .scan_rst_ni(1'b1), .ram_cfg_i(prim_ram_1p_pkg::RAM_1P_CFG_DEFAULT),
    .hart_id_i(32'h0), .boot_addr_i,
    .instr_req_o, .instr_gnt_i, .instr_rvalid_i, .instr_addr_o, .instr_rdata_i,
    .instr_rdata_intg_i(7'h0), .instr_err_i(1'b0),
    .data_req_o, .data_gnt_i, .data_rvalid_i, .data_we_o, .data_be_o, .data_addr_o, .data_wdata_o,
    .data_wdata_intg_o(), .data_rdata_i, .data_rdata_intg_i(7'h0), .data_err_i(1'b0),
    .irq_software_i(1'b0), .irq_timer_i(1'b0), .irq_external_i(1'b0), .irq_fast_i(15'h0),
    .irq_nm_i(1'b0),
    .scramble_key_valid_i(1'b0), .scramble_key_i('0), .scramble_nonce_i('0), .scramble_req_o(),
    .debug_req_i(1'b0), .crash_dump_o(), .double_fault_seen_o(),
    .fetch_enable_i(ibex_pkg::IbexMuBiOn),
    .alert_minor_o(), .alert_major_internal_o(), .alert_major_bus_o(), .core_sleep_o()
  );
endmodule
