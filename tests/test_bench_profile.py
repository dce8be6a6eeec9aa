"""The profile summariser: categories of hand-written HLO, a hand-made trace, a real CPU trace."""
import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest

from goal_jax.bench import profile

# Compiled-HLO text in the form XLA prints it, one instruction of each kind the summary files.
HLO = """HloModule jit_train_step, entry_computation_layout={()->f32[]}

%fused_dot (p0: bf16[64,512], p1: bf16[512,512]) -> bf16[64,512] {
  %p0 = bf16[64,512]{1,0} parameter(0)
  %p1 = bf16[512,512]{1,0} parameter(1)
  ROOT %dot.1 = bf16[64,512]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_norm (p0.1: f32[64,512]) -> f32[64,512] {
  %p0.1 = f32[64,512]{1,0} parameter(0)
  ROOT %multiply.2 = f32[64,512]{1,0} multiply(%p0.1, %p0.1)
}

%fused_adam (p0.2: f32[512,512]) -> f32[512,512] {
  %p0.2 = f32[512,512]{1,0} parameter(0)
  ROOT %sqrt.3 = f32[512,512]{1,0} sqrt(%p0.2)
}

%fused_layout (p0.3: f32[64,512]) -> f32[512,64] {
  %p0.3 = f32[64,512]{1,0} parameter(0)
  ROOT %transpose.4 = f32[512,64]{0,1} transpose(%p0.3), dimensions={1,0}
}

ENTRY %main.9 (a: bf16[64,512], w: bf16[512,512]) -> f32[] {
  %a = bf16[64,512]{1,0} parameter(0)
  %w = bf16[512,512]{1,0} parameter(1)
  %gemm_fusion.7 = bf16[64,512]{1,0} fusion(%a, %w), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(train_step)/jvp(CLIP.encode_image)/visual/transformer/resblocks_0/mlp/c_fc/dot_general"}
  %loop_multiply_fusion.3 = f32[64,512]{1,0} fusion(%a), kind=kLoop, calls=%fused_norm, metadata={op_name="jit(train_step)/jvp(CLIP.encode_image)/visual/transformer/resblocks_0/ln_1/mul"}
  %custom-call.5 = (bf16[64,8,64]{2,1,0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(train_step)/jvp(CLIP.encode_image)/visual/transformer/resblocks_0/attn/dot_product_attention"}
  %custom-call.6 = (bf16[64,512]{1,0}, f32[64]{0}, f32[64]{0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$norm"
  %loop_sqrt_fusion = f32[512,512]{1,0} fusion(%w), kind=kLoop, calls=%fused_adam, metadata={op_name="jit(train_step)/sqrt"}
  %transpose_fusion.2 = f32[512,64]{0,1} fusion(%a), kind=kLoop, calls=%fused_layout, metadata={op_name="jit(train_step)/jvp(CLIP.encode_image)/visual/transformer/resblocks_0/mlp/transpose"}
  %loop_exp_fusion = f32[] fusion(%a), kind=kLoop, calls=%fused_norm, metadata={op_name="jit(train_step)/jvp()/exp"}
  ROOT %all-reduce.1 = f32[] all-reduce(%loop_exp_fusion), replica_groups={}, to_apply=%fused_norm
}
"""

EXPECTED = {"gemm_fusion.7": "matmul", "loop_multiply_fusion.3": "layer norm",
            "custom-call.5": "attention", "loop_sqrt_fusion": "optimizer update",
            "custom-call.6": "layer norm",  # cuDNN's norm (--candidates): by its target alone
            "transpose_fusion.2": "copy/transpose", "loop_exp_fusion": "loss",
            "all-reduce.1": "collective"}


def test_categories_of_hand_written_hlo():
  ops = profile.parse_hlo(HLO)
  assert {name: profile.categorise(ops[name]) for name in EXPECTED} == EXPECTED
  assert ops["gemm_fusion.7"].inner_opcodes >= {"dot", "parameter"}
  assert ops["custom-call.5"].targets == ("__cudnn$fmhaSoftmax",)


def test_bytes_each_op_moves():
  """Results (less a custom call's u8 workspace) and each distinct operand, once."""
  ops = profile.parse_hlo(HLO)
  a, w = 64 * 512 * 2, 512 * 512 * 2  # bf16 parameters
  assert ops["gemm_fusion.7"].bytes == a + a + w
  assert ops["loop_multiply_fusion.3"].bytes == 64 * 512 * 4 + a
  assert ops["custom-call.5"].bytes == 64 * 8 * 64 * 2 + a
  assert ops["custom-call.6"].bytes == a + 2 * 64 * 4 + a  # a tuple of three results
  assert ops["loop_sqrt_fusion"].bytes == 512 * 512 * 4 + w
  assert profile.array_bytes("(pred[3]{0}, s64[2,2]{1,0}, f8e4m3fn[10]{0})") == 3 + 32 + 10


def _event(name, dur, tid=7, hlo_op=None):
  return {"ph": "X", "pid": 1, "tid": tid, "ts": 0.0, "dur": dur, "name": name,
          "args": {"hlo_module": "jit_train_step", "hlo_op": hlo_op or name}}


def test_summary_of_a_hand_made_gpu_trace():
  """Events as an H200 trace has them: kernels inside a CUDA graph name the command buffer as
  their HLO op and carry the fusion's name with '_' for '.'; library kernels match no HLO."""
  events = [{"ph": "M", "pid": 1, "tid": 7, "name": "thread_name",
             "args": {"name": "Stream #14(Compute)"}}]
  for _ in range(2):  # two traced steps
    events += [_event("gemm_fusion_7", 300.0, hlo_op="command_buffer_1"),
               _event("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT", 500.0, hlo_op="command_buffer_1"),
               _event("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 200.0,
                      hlo_op="command_buffer_1"),
               _event("loop_multiply_fusion_3", 100.0, hlo_op="command_buffer_1"),
               _event("cudnn_generated_fort_native_layer_norm_fwd", 40.0,
                      hlo_op="command_buffer_1"),
               _event("loop_sqrt_fusion", 50.0),
               _event("Memset 3", 10.0, hlo_op="command_buffer_1")]
  events.append({**_event("elsewhere", 9000.0), "args": {"hlo_module": "jit_device_put",
                                                         "hlo_op": "copy.1"}})
  summary = profile.summarise({"traceEvents": events}, HLO, steps=2)
  ms = {c["category"]: c["ms_per_step"] for c in summary["categories"]}
  assert ms == pytest.approx({"matmul": 0.8, "attention": 0.2, "layer norm": 0.14,
                              "optimizer update": 0.05, "copy/transpose": 0.01})
  assert (summary["module"], summary["device_ms_per_step"]) == ("jit_train_step",
                                                                pytest.approx(1.2))
  by_name = {c["category"]: c for c in summary["categories"]}
  # loop_multiply_fusion.3 (layer norm) is named by the HLO; cuDNN's norm kernel is not, so
  # the bandwidth is over the named op's 100 us of the category's 140 per step.
  norm = by_name["layer norm"]
  assert norm["gb_per_step"] == pytest.approx((64 * 512 * 4 + 64 * 512 * 2) / 1e9)
  assert norm["tb_per_s"] == pytest.approx((64 * 512 * 6) / 100.0 / 1e6)
  assert norm["with_bytes"] == pytest.approx(100 / 140)
  assert by_name["matmul"]["with_bytes"] == pytest.approx(300 / 800)
  markdown = profile.format_markdown(summary, "hand-made")
  assert "| layer norm | 0.140 | 11.7 % | | |" in markdown  # under 90 % named: no bandwidth
  assert "| optimizer update | 0.050 | 4.2 % | 0.00 | 0.03 |" in markdown
  top = summary["top_ops"][0]
  assert (top["op"], top["category"], top["calls_per_step"]) == (
      "nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT", "matmul", 1)
  fused = next(o for o in summary["top_ops"] if o["op"] == "gemm_fusion.7")
  assert fused["shape"].startswith("bf16[64,512]") and "mlp/c_fc" in fused["source"]


def test_capture_and_summarise_a_cpu_step(tmp_path):
  """A real trace of a jitted matmul + norm + update on the CPU: the matmul's op is found in the
  HLO, and the device time adds up over the categories."""

  @jax.jit
  def step(w, x):
    def loss(w):
      with jax.named_scope("tower/ln_1"):
        h = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
      return jnp.sum(jnp.tanh(h @ w) ** 2)
    return w - 0.1 * jax.grad(loss)(w)

  w, x = jnp.ones((256, 256)) * 0.01, jnp.ones((512, 256))
  compiled = step.lower(w, x).compile()
  state = {"w": compiled(w, x)}

  def run():
    state["w"] = compiled(state["w"], x)
    return state["w"]

  out = profile.capture(run, compiled.as_text(), str(tmp_path / "row"), steps=3)
  summary = profile.summarise_dir(out, "cpu step", steps=3)
  assert summary["module"] == "jit_step"
  categories = {c["category"]: c for c in summary["categories"]}
  assert "matmul" in categories and "optimizer update" in categories
  assert sum(c["ms_per_step"] for c in summary["categories"]) == pytest.approx(
      summary["device_ms_per_step"])
  assert sum(c["share"] for c in summary["categories"]) == pytest.approx(1.0)
  assert any(o["category"] == "matmul" and "dot_general" in o["source"]
             for o in summary["top_ops"])
  assert json.load(open(os.path.join(out, "summary.json"))) == summary
  assert "| matmul |" in open(os.path.join(out, "summary.md")).read()
  with gzip.open(os.path.join(out, "hlo.txt.gz"), "rt") as f:
    assert f.read() == compiled.as_text()
