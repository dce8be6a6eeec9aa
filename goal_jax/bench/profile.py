"""Where a step's device time goes: a trace of a few steps and its summary by category.

`capture` runs a few steps under `jax.profiler.trace` (a Perfetto JSON trace, readable without
TensorBoard) and keeps the compiled HLO beside it; `summarise` joins the two: each device op in
the trace is looked up in the HLO (its opcode, the ops fused into it, its custom-call target and
the JAX name stack in its metadata) and filed under one category. The name stack carries the
Flax module path (`.../visual/transformer/resblocks_3/ln_1/...`) and whether the op is in the
differentiated loss (`jvp(...)`, `transpose(jvp(...))`) or after it (the optimizer update), so
the categories need no knowledge of a backend's kernel names beyond attention's custom calls.

The summary (JSON and Markdown) is what a GPU lease brings back to decide offline: device time
by category and the most expensive ops with their shapes.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

import jax

CATEGORIES = ("matmul", "attention", "layer norm", "elementwise", "loss", "optimizer update",
              "copy/transpose", "collective", "host transfer", "other")
# What runs at the memory's speed rather than the tensor cores'.
MEMORY_BOUND = ("layer norm", "elementwise", "loss", "optimizer update", "copy/transpose")

INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.+?)\s+(?P<opcode>[a-z][\w\-]*)\((?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")  # at column 0
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8\w*)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_MATMUL_OPS = {"dot", "convolution"}
_MATMUL_TARGETS = ("gemm", "matmul", "cublas", "triton", "cudnn$conv")
_ATTENTION_TARGETS = ("fmha", "flash", "attention", "sdpa")
_NORM_TARGET = "$norm"  # XLA's cuDNN layer norm custom call, `__cudnn$norm`
_COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
                "all-reduce-start", "all-reduce-done", "all-gather-start", "all-gather-done",
                "collective-permute-start", "collective-permute-done"}
_TRANSFERS = {"send", "recv", "send-done", "recv-done", "infeed", "outfeed", "copy-start",
              "copy-done"}
_LAYOUT_OPS = {"copy", "transpose", "bitcast", "reshape", "parameter", "broadcast",
               "get-tuple-element", "tuple", "slice", "concatenate", "dynamic-slice",
               "dynamic-update-slice", "pad"}
TRACE_NAME = "perfetto_trace.json.gz"
HLO_NAME = "hlo.txt.gz"


@dataclasses.dataclass
class Op:
  """One HLO instruction as the summary needs it."""
  name: str
  opcode: str
  shape: str
  op_name: str = ""
  inner_opcodes: frozenset = frozenset()  # of the fused computation (and what it calls)
  targets: tuple[str, ...] = ()  # custom-call targets, its own or inside its fusion
  operands: tuple[str, ...] = ()
  bytes: int = 0  # its results' and distinct operands' bytes (`_bytes_moved`)


def parse_hlo(text: str) -> dict[str, Op]:
  """Instructions of compiled HLO text by name, fusions knowing the opcodes they contain."""
  computations: dict[str, list[tuple[str, str, list[str]]]] = collections.defaultdict(list)
  ops: dict[str, Op] = {}
  current = None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group("name")
      continue
    m = INSTRUCTION.match(line)
    if not m or current is None:
      continue
    rest = m.group("rest")
    targets = _TARGET.findall(rest)
    computations[current].append((m.group("opcode"), ",".join(targets), _CALLS.findall(rest)))
    op_name = _OP_NAME.search(rest)
    ops[m.group("name")] = Op(m.group("name"), m.group("opcode"), m.group("shape"),
                              op_name.group(1) if op_name else "", frozenset(), tuple(targets),
                              tuple(dict.fromkeys(_OPERAND.findall(rest.split(")", 1)[0]))))

  inner_cache: dict[str, tuple[frozenset, tuple]] = {}

  def inner(computation: str, depth: int = 0) -> tuple[frozenset, tuple]:
    if computation in inner_cache or depth > 8:
      return inner_cache.get(computation, (frozenset(), ()))
    opcodes, targets = set(), []
    for opcode, target, calls in computations.get(computation, ()):
      opcodes.add(opcode)
      if target:
        targets.append(target)
      for callee in calls:
        sub_ops, sub_targets = inner(callee, depth + 1)
        opcodes |= sub_ops
        targets += sub_targets
    inner_cache[computation] = (frozenset(opcodes), tuple(targets))
    return inner_cache[computation]

  for op in ops.values():
    op.bytes = _bytes_moved(op, ops)
  for line in text.splitlines():
    m = INSTRUCTION.match(line)
    if m and m.group("opcode") in ("fusion", "call", "custom-call", "async-start"):
      op = ops[m.group("name")]
      for callee in _CALLS.findall(m.group("rest")):
        sub_ops, sub_targets = inner(callee)
        op.inner_opcodes = op.inner_opcodes | sub_ops
        op.targets = op.targets + sub_targets
  return ops


def array_bytes(shape: str) -> int:
  """Bytes of the arrays an HLO shape names (`bf16[64,512]{1,0}`, or a tuple of them)."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    total += math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES.get(
        dtype, 1 if dtype.startswith("f8") else 4)
  return total


def _bytes_moved(op: Op, ops: dict[str, Op]) -> int:
  """What one run of `op` reads and writes if it touches each operand and result once: the
  results (less a custom call's trailing u8 workspace) and each distinct operand. It is the
  traffic a memory-bound kernel cannot go below; a kernel that reads part of an operand
  (a slice inside a fusion) or one operand twice moves less or more."""
  arrays = _ARRAY.findall(op.shape)
  if op.opcode == "custom-call" and len(arrays) > 1 and arrays[-1][0] in ("u8", "s8"):
    arrays = arrays[:-1]
  results = sum(array_bytes(f"{dtype}[{dims}]") for dtype, dims in arrays)
  return results + sum(array_bytes(ops[name].shape) for name in op.operands if name in ops)


# Kernels that no HLO instruction names (a library's kernels inside a CUDA graph): by name.
_KERNEL_PATTERNS = (
    ("layer norm", re.compile(r"norm", re.IGNORECASE)),  # cuDNN's (--candidates=cudnn_layer_norm)
    ("attention", re.compile(r"sdpa|fmha|flash|dot_do_o|convert_dq", re.IGNORECASE)),
    ("matmul", re.compile(r"nvjet|gemm|xmma|cutlass|splitkreduce|cublas", re.IGNORECASE)),
    ("host transfer", re.compile(r"memcpy(h2d|d2h|htod|dtoh)", re.IGNORECASE)),
    ("copy/transpose", re.compile(r"memcpy|memset", re.IGNORECASE)),
)


def find_op(ops: dict[str, Op], hlo_op: str, kernel: str) -> Op | None:
  """The HLO instruction of a trace event: its `hlo_op`, or, inside a CUDA graph (`hlo_op` is
  the command buffer), the kernel's own name, which XLA derives from the fusion's
  (`loop_add_fusion_174` runs `loop_add_fusion.174`)."""
  for name in (hlo_op, kernel, re.sub(r"_(\d+)$", r".\1", kernel)):
    if name in ops:
      return ops[name]
  return None


def categorise(op: Op | None, event_name: str = "") -> str:
  """One of CATEGORIES for a device op (None: a kernel the HLO does not name, by its name)."""
  if op is None:
    return next((category for category, pattern in _KERNEL_PATTERNS
                 if pattern.search(event_name)), "other")
  targets = " ".join(op.targets).lower()
  opcodes = op.inner_opcodes | {op.opcode}
  path = op.op_name
  if any(t in targets for t in _ATTENTION_TARGETS):
    return "attention"
  if _NORM_TARGET in targets:
    return "layer norm"
  if opcodes & _COLLECTIVES:
    return "collective"
  if op.opcode in _TRANSFERS:
    return "host transfer"
  in_loss = "jvp(" in path
  if opcodes & _MATMUL_OPS or any(t in targets for t in _MATMUL_TARGETS):
    # XLA's own attention: the two batched products over (heads, queries, keys).
    in_attention = "/attn/" in path and not re.search(r"/attn/(query|key|value|out)/", path)
    return "attention" if in_attention else "matmul"
  if path and not in_loss:
    return "optimizer update"
  if (op.inner_opcodes or {op.opcode}) <= _LAYOUT_OPS:
    return "copy/transpose"
  if re.search(r"/ln_\w*/|/ln\w*/|layer_?norm|/norm\w*/", path, re.IGNORECASE):
    return "layer norm"
  if "/attn/" in path:
    return "attention"
  if re.search(r"jvp\([^)]*\)\)?/", path) and re.search(r"jvp\(\)", path):
    return "loss"
  return "elementwise"


def _device_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
  """The trace's device-op events, each op once: an accelerator's "XLA Ops" line where there is
  one, else every event naming an HLO op (a CPU's thunk executor threads)."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  ops_lines = {key for key, name in threads.items() if name == "XLA Ops"}
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  if ops_lines:
    chosen = [e for e in complete if (e["pid"], e.get("tid")) in ops_lines]
    streams = {key for key, name in threads.items() if name.startswith("Stream")}
    chosen += [e for e in complete if (e["pid"], e.get("tid")) in streams
               and "memcpy" in e["name"].lower()]
    return chosen
  return [e for e in complete if "hlo_op" in e.get("args", {})]


def summarise(trace: dict[str, Any], hlo_text: str, *, steps: int,
              top: int | None = 20) -> dict[str, Any]:
  """Device time per step by category and the `top` most expensive ops (None: all), from one
  trace of `steps` steps and the step's compiled HLO."""
  ops = parse_hlo(hlo_text)
  by_category = collections.Counter()
  # Bytes of the ops the HLO names, and their time: library kernels in a CUDA graph (cuBLAS's,
  # cuDNN attention's) name none, so a category's bandwidth is over the time of those it has.
  bytes_of, timed_with_bytes = collections.Counter(), collections.Counter()
  by_op: dict[str, dict[str, Any]] = {}
  # Only the profiled program's ops (not the batch's device_put, ...); events without a module
  # (a memset between kernels) count with it.
  module = re.match(r"HloModule\s+([\w.\-]+)", hlo_text)
  step_module = module.group(1) if module else ""
  for e in _device_events(trace):
    args = e.get("args", {})
    if args.get("hlo_module", step_module) != step_module:
      continue
    op = find_op(ops, args.get("hlo_op", ""), e["name"])
    name = op.name if op else re.sub(r"_\d+$", "", e["name"])[:80]
    category = categorise(op, e["name"])
    by_category[category] += e["dur"]
    if op is not None:
      bytes_of[category] += op.bytes
      timed_with_bytes[category] += e["dur"]
    entry = by_op.setdefault(name, dict(op=name, category=category, us=0.0, count=0,
                                        shape=op.shape if op else "",
                                        source=op.op_name if op else "",
                                        mb_per_call=op.bytes / 1e6 if op else None))
    entry["us"] += e["dur"]
    entry["count"] += 1
  total = sum(by_category.values())
  per_step = lambda us: us / steps / 1e3  # noqa: E731 - microseconds in the trace -> ms/step
  categories = [dict(category=c, ms_per_step=per_step(by_category[c]),
                     share=by_category[c] / total if total else 0.0,
                     gb_per_step=bytes_of[c] / steps / 1e9,
                     # bytes per microsecond / 1e6 = TB/s; None: no op with bytes ran
                     tb_per_s=(bytes_of[c] / timed_with_bytes[c] / 1e6
                               if timed_with_bytes[c] else None),
                     with_bytes=timed_with_bytes[c] / by_category[c])
                for c in CATEGORIES if by_category[c]]
  expensive = sorted(by_op.values(), key=lambda o: -o["us"])[:top]
  for o in expensive:
    o["ms_per_step"] = per_step(o.pop("us"))
    o["calls_per_step"] = o.pop("count") / steps
  return dict(module=step_module, steps=steps, device_ms_per_step=per_step(total),
              categories=categories, top_ops=expensive)


def format_markdown(summary: dict[str, Any], title: str) -> str:
  lines = [f"### {title}", "",
           f"Device time {summary['device_ms_per_step']:.2f} ms per step "
           f"(module `{summary['module']}`, {summary['steps']} traced steps).", "",
           "| category | ms / step | share | GB / step | TB/s |",
           "| --- | --- | --- | --- | --- |"]
  for c in summary["categories"]:
    # Bandwidth only where the HLO names nearly all of the category's kernels.
    named = c.get("with_bytes", 0) >= 0.9 and c.get("tb_per_s") is not None
    lines.append(f"| {c['category']} | {c['ms_per_step']:.3f} | {100 * c['share']:.1f} % | "
                 + (f"{c['gb_per_step']:.2f} | {c['tb_per_s']:.2f} |" if named else "| |"))
  lines += ["", "GB / step: the results and distinct operands of each op the HLO names, each "
            "once (what a memory-bound kernel must move); TB/s: those bytes over those ops' "
            "time. Left blank where library kernels the HLO does not name (cuBLAS's, cuDNN "
            "attention's) hold more than a tenth of the time."]
  lines += ["", "| op | category | ms / step | calls | MB / call | TB/s | shape | source |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for o in summary["top_ops"]:
    source = o["source"].split(";")[0][-90:]
    megabytes = o.get("mb_per_call")
    traffic = ("| |" if megabytes is None else f"{megabytes:.1f} | "
               f"{megabytes * o['calls_per_step'] / o['ms_per_step'] / 1e3:.2f} |")
    lines.append(f"| `{o['op']}` | {o['category']} | {o['ms_per_step']:.3f} | "
                 f"{o['calls_per_step']:g} | {traffic} `{o['shape'][:60]}` | `{source}` |")
  return "\n".join(lines) + "\n"


def capture(step: Callable[[], Any], compiled_text: str, out_dir: str, *,
            steps: int = 3) -> str:
  """Runs `step` `steps` times under the profiler; writes the trace and the HLO into `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  with jax.profiler.trace(out_dir, create_perfetto_trace=True):
    out = None
    for _ in range(steps):
      out = step()
    jax.block_until_ready(out)
  traces = sorted(glob.glob(os.path.join(out_dir, "plugins", "profile", "*", TRACE_NAME)),
                  key=os.path.getmtime)
  if not traces:
    raise RuntimeError(f"jax.profiler wrote no {TRACE_NAME} under {out_dir}")
  os.replace(traces[-1], os.path.join(out_dir, TRACE_NAME))
  with gzip.open(os.path.join(out_dir, HLO_NAME), "wt") as f:
    f.write(compiled_text)
  return out_dir


def read_capture(out_dir: str) -> tuple[dict[str, Any], str]:
  """A `capture` folder's trace and compiled HLO text."""
  with gzip.open(os.path.join(out_dir, TRACE_NAME), "rt") as f:
    trace = json.load(f)
  with gzip.open(os.path.join(out_dir, HLO_NAME), "rt") as f:
    return trace, f.read()


def summarise_dir(out_dir: str, title: str, *, steps: int) -> dict[str, Any]:
  """Summarises a `capture` folder; writes summary.json and summary.md into it."""
  summary = summarise(*read_capture(out_dir), steps=steps)
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(format_markdown(summary, title))
  return summary
