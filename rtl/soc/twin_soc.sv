// The RTL bench board: one RV32 core (rtl/cores/<core>.sv provides module twin_cpu) on two
// memory ports, instruction and data, each an OBI-style req/gnt/rvalid port. The memory map
// behind the ports lives in the C++ harness (rtl/harness/main.cc) and mirrors QEMU's riscv32
// `virt` machine as the firmware uses it: DRAM at 0x8000_0000 (code, model, RAM windows), an
// NS16550 console at 0x1000_0000, the SiFive test finisher at 0x0010_0000, a reset ROM at 0x1000.
//
// Wait states are inputs, set by the harness at start-up from the board's platform file:
// an access to the code/model windows (below ram_base) costs flash_wait extra cycles, one to
// RAM ram_wait; a port accepts a new request only when the previous one has been answered,
// except at zero wait states, where it streams one access per cycle.
module twin_soc (
  input  logic        clk_i,
  input  logic        rst_ni,
  input  logic [7:0]  flash_wait_i,
  input  logic [7:0]  ram_wait_i,
  input  logic [31:0] ram_base_i,
  input  logic [31:0] boot_addr_i
);
  logic        instr_req, instr_gnt, instr_rvalid;
  logic [31:0] instr_addr, instr_rdata;
  logic        data_req, data_gnt, data_rvalid, data_we;
  logic [3:0]  data_be;
  logic [31:0] data_addr, data_wdata, data_rdata;

  twin_cpu u_cpu (
    .clk_i, .rst_ni, .boot_addr_i,
    .instr_req_o(instr_req), .instr_gnt_i(instr_gnt), .instr_rvalid_i(instr_rvalid),
    .instr_addr_o(instr_addr), .instr_rdata_i(instr_rdata),
    .data_req_o(data_req), .data_gnt_i(data_gnt), .data_rvalid_i(data_rvalid), .data_we_o(data_we),
    .data_be_o(data_be), .data_addr_o(data_addr), .data_wdata_o(data_wdata), .data_rdata_i(data_rdata)
  );

  twin_port #(.Fetch(1'b1)) u_iport (
    .clk_i, .rst_ni, .flash_wait_i, .ram_wait_i, .ram_base_i,
    .req_i(instr_req), .gnt_o(instr_gnt), .rvalid_o(instr_rvalid), .addr_i(instr_addr),
    .we_i(1'b0), .be_i(4'hF), .wdata_i(32'h0), .rdata_o(instr_rdata)
  );

  twin_port #(.Fetch(1'b0)) u_dport (
    .clk_i, .rst_ni, .flash_wait_i, .ram_wait_i, .ram_base_i,
    .req_i(data_req), .gnt_o(data_gnt), .rvalid_o(data_rvalid), .addr_i(data_addr),
    .we_i(data_we), .be_i(data_be), .wdata_i(data_wdata), .rdata_o(data_rdata)
  );
endmodule

// One memory port. The access happens (in the harness) when it is granted; its answer comes
// 1 + wait cycles later.
module twin_port #(
  parameter bit Fetch = 1'b0
) (
  input  logic        clk_i,
  input  logic        rst_ni,
  input  logic [7:0]  flash_wait_i,
  input  logic [7:0]  ram_wait_i,
  input  logic [31:0] ram_base_i,
  input  logic        req_i,
  output logic        gnt_o,
  output logic        rvalid_o,
  input  logic [31:0] addr_i,
  input  logic        we_i,
  input  logic [3:0]  be_i,
  input  logic [31:0] wdata_i,
  output logic [31:0] rdata_o
);
  import "DPI-C" function int unsigned twin_bus_read(input int unsigned addr, input int unsigned be,
                                                     input bit fetch);
  import "DPI-C" function void twin_bus_write(input int unsigned addr, input int unsigned be,
                                              input int unsigned data);

  logic       busy_q;       // an access is waiting for its answer
  logic [7:0] left_q;       // cycles until rvalid, after this one
  logic [31:0] rdata_q;

  wire [7:0] wait_for = (addr_i >= ram_base_i || addr_i < 32'h8000_0000) ? ram_wait_i : flash_wait_i;
  wire       answering = busy_q && left_q == 8'd0;
  assign gnt_o    = req_i && (!busy_q || answering);
  assign rvalid_o = answering;
  assign rdata_o  = rdata_q;

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      busy_q  <= 1'b0;
      left_q  <= 8'd0;
      rdata_q <= 32'h0;
    end else begin
      if (gnt_o) begin
        busy_q <= 1'b1;
        left_q <= wait_for;
        if (we_i) begin
          twin_bus_write(addr_i, {28'h0, be_i}, wdata_i);
          rdata_q <= 32'h0;
        end else begin
          rdata_q <= twin_bus_read(addr_i, {28'h0, be_i}, Fetch);
        end
      end else if (answering) begin
        busy_q <= 1'b0;
      end else if (busy_q) begin
        left_q <= left_q - 8'd1;
      end
    end
  end
endmodule
