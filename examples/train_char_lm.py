"""Train a small character-level language model with torch.nn.LSTM or triton_lstm.LSTM, and compare the two.

The model (embedding -> LSTM -> linear) learns to predict the next character of the paragraph below. Both
implementations start from the same weights: the model is built with torch.nn.LSTM and, for triton_lstm, converted
in place with ``triton_lstm.convert`` (or, with ``--via patch``, left as it is and run under ``triton_lstm.patched()``).
On a GPU it runs at full size; without one, Triton runs on the CPU through its interpreter, slowly, so the default
sizes shrink to a tiny model and a few dozen steps.

    python examples/train_char_lm.py --impl both              # train with each, then compare losses and times
    python examples/train_char_lm.py --impl both --via patch  # the same model code, torch.nn.LSTM patched
    python examples/train_char_lm.py --impl triton --steps 1000 --hidden 512
"""

import argparse
import contextlib
import math
import os
import sys
import time

import torch
from torch import nn

TEXT = (
    "The lighthouse keeper wrote down the weather every evening: the colour of the sea, the height of the waves, "
    "the direction of the wind and the number of ships that passed before dark. Most evenings the entries were "
    "short, because most evenings nothing happened. The sea was grey, the waves were low, the wind came from the "
    "west and two or three fishing boats went home before the lamp was lit. On stormy nights the entries grew "
    "longer, the handwriting shakier, and the keeper stayed awake until the morning to watch the light turn above "
    "the rocks. Years later, the notebooks were the only record of how the weather on that coast had changed."
)

# Sizes by where it runs: on a GPU a model worth timing; on the CPU through the interpreter (every kernel launch
# is Python) one that trains a few dozen steps in well under a minute.
GPU_DEFAULTS = {"steps": 300, "hidden": 256, "layers": 2, "embed": 64, "seq_len": 64, "batch": 32, "lr": 3e-3}
CPU_DEFAULTS = {"steps": 40, "hidden": 32, "layers": 1, "embed": 16, "seq_len": 16, "batch": 8, "lr": 1e-2}


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=("torch", "triton", "both"), default="both")
    parser.add_argument("--via", choices=("convert", "patch"), default="convert", help="how triton_lstm takes over")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--hidden", type=int, default=defaults["hidden"])
    parser.add_argument("--layers", type=int, default=defaults["layers"])
    parser.add_argument("--embed", type=int, default=defaults["embed"])
    parser.add_argument("--seq-len", type=int, default=defaults["seq_len"])
    parser.add_argument("--batch", type=int, default=defaults["batch"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--sample", type=int, default=60, help="characters to generate after training (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def import_triton_lstm():
    """Import triton_lstm, first switching Triton's interpreter on when there is no GPU. This must happen before
    anything imports triton (torch itself may, once training starts), so ``main`` calls it first."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton_lstm

    return triton_lstm


class CharLM(nn.Module):
    """Next-character model: tokens (B, T) -> logits (B, T, vocab)."""

    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        output, state = self.lstm(self.embed(tokens), state)
        return self.head(output), state


def batches(data, seq_len, batch, generator):
    """Endless random windows of the text: (inputs (B, T), next-character targets (B, T))."""
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
        window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def progress(steps, label):
    """tqdm's bar when it is installed, else a line every tenth of the run."""
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainProgress(steps, label)
    return tqdm(total=steps, desc=label, unit="step")


class PlainProgress:
    def __init__(self, steps, label):
        self.steps, self.label, self.done, self.start = steps, label, 0, time.perf_counter()
        self.every = max(1, steps // 10)
        self.postfix = ""

    def set_postfix_str(self, text):
        self.postfix = text

    def update(self, n=1):
        self.done += n
        if self.done % self.every == 0 or self.done == self.steps:
            elapsed = time.perf_counter() - self.start
            print(f"{self.label}: step {self.done}/{self.steps}  {self.postfix}  {elapsed:.1f} s", flush=True)

    def close(self):
        pass


def train(impl, args, data, vocab, triton_lstm):
    """Train one model; returns (first loss, final loss, seconds, model)."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = CharLM(len(vocab), args.embed, args.hidden, args.layers).to(device)
    if impl == "triton" and args.via == "convert":
        model = triton_lstm.convert(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    windows = batches(data, args.seq_len, args.batch, torch.Generator().manual_seed(args.seed))
    losses = []
    bar = progress(args.steps, impl)
    start = time.perf_counter()
    for _ in range(args.steps):
        inputs, targets = (t.to(device) for t in next(windows))
        logits, _ = model(inputs)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix_str(f"loss {losses[-1]:.3f}")
        bar.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    # The loss of one random batch is noisy: the final loss is the mean of the last tenth of the run.
    tail = losses[-max(1, len(losses) // 10) :]
    return losses[0], sum(tail) / len(tail), seconds, model


@torch.no_grad()
def sample(model, vocab, length, device, seed):
    """Generate ``length`` characters one at a time, carrying the LSTM state."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    token = torch.tensor([[vocab.index("T")]], device=device)
    state, text = None, "T"
    for _ in range(length):
        logits, state = model(token, state)
        probabilities = torch.softmax(logits[0, -1].float().cpu(), dim=-1)
        index = int(torch.multinomial(probabilities, 1, generator=generator))
        text += vocab[index]
        token = torch.tensor([[index]], device=device)
    return text


def main(argv=None):
    args = parse_args(argv)
    vocab = sorted(set(TEXT))
    data = torch.tensor([vocab.index(ch) for ch in TEXT])
    impls = ("torch", "triton") if args.impl == "both" else (args.impl,)
    triton_lstm = import_triton_lstm() if "triton" in impls else None
    print(
        f"device {args.device}, {args.steps} steps, batch {args.batch} x {args.seq_len} characters, "
        f"LSTM {args.embed} -> {args.hidden} x {args.layers} layers, vocabulary {len(vocab)} "
        f"(a uniform guess has loss {math.log(len(vocab)):.3f})",
        flush=True,
    )
    results = {}
    for impl in impls:
        patching = triton_lstm.patched() if impl == "triton" and args.via == "patch" else contextlib.nullcontext()
        with patching:
            first, final, seconds, model = train(impl, args, data, vocab, triton_lstm)
            results[impl] = (final, seconds)
            print(f"{impl}: loss {first:.4f} -> {final:.4f} in {seconds:.1f} s ({args.steps / seconds:.1f} steps/s)")
            if args.sample > 0:
                print(f"{impl} sample: {sample(model, vocab, args.sample, args.device, args.seed)!r}")
    if len(results) == 2:
        (torch_loss, torch_s), (triton_loss, triton_s) = results["torch"], results["triton"]
        print(
            f"compare: torch final loss {torch_loss:.4f} in {torch_s:.1f} s, triton final loss {triton_loss:.4f} in "
            f"{triton_s:.1f} s, difference {abs(torch_loss - triton_loss):.2e}, triton/torch time "
            f"{triton_s / torch_s:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
