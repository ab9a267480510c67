"""What a compiled persistent kernel does in each time step, read from its TTGIR and PTX (for the resource report).

The time loop is the kernel's outermost loop (one iteration a phase; with a projection a step has two phases, the
two branches of one runtime ``if``, so a count over the loop body is a count per step either way).

- W bytes per step, from the TTGIR: the loads inside the time loop whose pointers derive from the weight arguments
  (def-use chains from the named function arguments), their element counts times the trip counts of the constant
  ``scf.for`` loops around them. 0 means the weights stay on chip for the whole sequence.
- From the PTX, whose basic blocks LLVM annotates with their loop nesting: the matrix instructions in the time loop
  (tensor-core ``mma.sync``/``wgmma`` and their operand type, or none: FMA units), the block barriers (``bar.sync``),
  the grid-barrier arrivals (release reductions) and the polls (acquire loads) per step, and whether any poll loop
  holds a block barrier.
"""

import re
from dataclasses import dataclass, field

_ELEMENT_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8, "i8": 1, "i1": 1}
_SSA = re.compile(r"%[\w.$-]+")
_DEFINITION = re.compile(r"^\s*((?:%[\w.$-]+(?::\d+)?)(?:\s*,\s*%[\w.$-]+)*)\s*=\s*([\w.\"]+)")
_CONSTANT = re.compile(r"^\s*(%[\w.$-]+) = arith\.constant (-?\d+) : i\d+")
_FOR = re.compile(r"scf\.for %[\w.$-]+ = (%[\w.$-]+) to (%[\w.$-]+) step (%[\w.$-]+)")
_LOAD_OPS = ("tt.load", "tt.descriptor_load", "ttg.async_copy_global_to_local")
_POINTER_TYPE = re.compile(r"(?:tensor<((?:\d+x)*)!tt\.ptr<(\w+)>|!tt\.ptr<(\w+)>)")


def _names(text: str) -> list[str]:
    return [name.split("#")[0] for name in _SSA.findall(text)]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _time_loop(lines: list[str]) -> tuple[int, int]:
    """(first, last) line of the outermost loop of the function (its scf.while or scf.for)."""
    for first, line in enumerate(lines):
        if re.search(r"\bscf\.(while|for)\b", line) and "tt.func" not in line:
            indent = _indent(line)
            for last in range(first + 1, len(lines)):
                closing = lines[last].strip()
                if _indent(lines[last]) == indent and closing.startswith("}") and "do {" not in closing:
                    return first, last
    raise ValueError("no loop found in the TTGIR")


def weight_bytes_per_step(ttgir: str, weight_args: tuple[str, ...]) -> int:
    """Bytes the time loop loads from global memory through pointers derived from ``weight_args`` per iteration."""
    lines = ttgir.splitlines()
    tainted = {f"%{name}" for name in weight_args}
    constants = {}
    # Definitions appear before uses in the text, but loop-carried values (iter_args) refer back: iterate to a fixed
    # point.
    changed = True
    while changed:
        changed = False
        for line in lines:
            constant = _CONSTANT.match(line)
            if constant:
                constants[constant.group(1)] = int(constant.group(2))
            carried = (
                re.findall(r"(%[\w.$-]+) = (%[\w.$-]+)", line[line.find("iter_args(") :])
                if "iter_args(" in line
                else []
            )
            for new, old in carried:
                if old.split("#")[0] in tainted and new not in tainted:
                    tainted.add(new)
                    changed = True
            definition = _DEFINITION.match(line)
            if not definition or definition.group(2).strip('"') in _LOAD_OPS:
                continue
            results = [name.split(":")[0] for name in _names(definition.group(1))]
            operands = _names(line[definition.end() :])
            if any(o in tainted for o in operands) and not all(r in tainted for r in results):
                tainted.update(results)
                changed = True
    first, last = _time_loop(lines)
    total = 0
    loops = []  # (indent, trip count) of the scf.for loops enclosing the current line inside the time loop
    for line in lines[first + 1 : last]:
        indent = _indent(line)
        loops = [loop for loop in loops if loop[0] < indent]
        bounds = _FOR.search(line)
        if bounds:
            lower, upper, step = (constants.get(name) for name in bounds.groups())
            if None in (lower, upper, step):
                raise ValueError(f"a loop inside the time loop has bounds that are not constants: {line.strip()}")
            loops.append((indent, max(0, -(-(upper - lower) // step))))
        definition = _DEFINITION.match(line)
        if not definition or definition.group(2).strip('"') not in _LOAD_OPS:
            continue
        operands = _names(line[definition.end() :])
        if not operands or operands[0] not in tainted:
            continue
        pointer_type = _POINTER_TYPE.search(line[line.rfind(" : ") :])
        dims, element, scalar_element = pointer_type.groups()
        count = 1
        for dim in (dims or "").split("x"):
            count *= int(dim) if dim else 1
        trips = 1
        for _, trip in loops:
            trips *= trip
        total += count * _ELEMENT_BYTES[element or scalar_element] * trips
    return total


@dataclass
class LoopFacts:
    """Instruction counts in the time loop of the PTX (per step: see the module docstring)."""

    mma: dict = field(default_factory=dict)  # e.g. {"mma.sync f16": 64, "wgmma bf16": 16}
    block_barriers: int = 0
    grid_arrivals: int = 0
    polls: int = 0
    barriers_in_polls: int = 0
    inner_loop_barriers: int = 0  # block barriers inside loops nested in the time loop (per inner iteration)

    @property
    def tensor_cores(self) -> bool:
        return any(kind.startswith(("mma.sync", "wgmma")) for kind in self.mma)

    def mma_summary(self) -> str:
        return ", ".join(f"{kind} x{count}" for kind, count in sorted(self.mma.items())) or "none (FMA)"


def _blocks(ptx: str) -> list[tuple[str, int, str | None, list[str]]]:
    """(label, loop depth, outermost loop header, instructions) of every basic block, from LLVM's annotations."""
    blocks = []
    label, depth, outer, body, notes = "entry", 0, None, [], []

    def close():
        blocks.append((label, depth, outer, body))

    for line in ptx.splitlines():
        head = re.match(r"^\$L__(BB\d+_\d+):(.*)$", line)
        if head:
            close()
            label, body, notes = head.group(1), [], [head.group(2)]
            depth, outer = 0, None
        elif line.strip().startswith("//") and notes is not None and not body:
            notes.append(line)
        else:
            if notes:
                text = " ".join(notes)
                depths = [int(d) for d in re.findall(r"Depth=(\d+)", text)]
                depth = max(depths, default=0)
                parents = re.findall(r"(?:Parent Loop |Header=)(BB\d+_\d+) Depth=1\b", text)
                outer = (
                    parents[0]
                    if parents
                    else (label if re.search(r"This (?:Inner )?Loop Header: Depth=1\b", text) else None)
                )
                notes = []
            body.append(line)
    close()
    return blocks


def loop_facts(ptx: str) -> LoopFacts:
    """Counts over the time loop: the outermost loop that holds the grid barrier's arrival (or the only one)."""
    blocks = _blocks(ptx)
    outers = {outer for _, _, outer, _ in blocks if outer}
    arriving = {outer for _, _, outer, body in blocks if outer and any("red.release" in i for i in body)}
    candidates = arriving or outers
    if len(candidates) != 1:
        raise ValueError(f"expected one time loop, found {sorted(candidates)}")
    (time_loop,) = candidates
    facts = LoopFacts()
    for _, depth, outer, body in blocks:
        if outer != time_loop:
            continue
        polling = False
        for instruction in body:
            text = instruction.split("//")[0].strip()
            if not text:
                continue
            if re.match(r"^WAIT:", text):
                polling = True
            if re.search(r"\b(bar|barrier)\.sync\b", text):
                if polling:
                    facts.barriers_in_polls += 1
                elif depth > 1:
                    facts.inner_loop_barriers += 1
                else:
                    facts.block_barriers += 1
            if "red.release" in text or "atom.release" in text:
                facts.grid_arrivals += 1
            if "ld.acquire" in text:
                facts.polls += 1
            if re.match(r"^@%p\w+ bra WAIT;", text):
                polling = False
            mma = re.search(r"\b(mma\.sync|wgmma\.mma_async)\S*?\.(f16|bf16|tf32|f64|s8|e4m3|e5m2)\b", text)
            if mma:
                kind = f"{'wgmma' if mma.group(1).startswith('wgmma') else 'mma.sync'} {mma.group(2)}"
                facts.mma[kind] = facts.mma.get(kind, 0) + 1
    return facts
