"""Train the example DigitsResNet on the digits train split and save its state_dict.

Usage: python examples/train_digits_resnet.py [--epochs N] [--output PATH]

The split comes from stages.data with the entry the example pipelines use
(seed 0, 600 held-out images, stratified), so training never sees the
evaluation images. Training is reproducible: fixed seeds, deterministic
algorithms and one thread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES))
sys.path.insert(0, str(EXAMPLES.parent))

from digits_resnet import build_model  # noqa: E402

from stages.data import Dataset, load_dataset  # noqa: E402

log = logging.getLogger("train_digits_resnet")

# The data: entries of the example pipelines, minus the split side.
DIGITS_SPLIT = {"source": "digits", "seed": 0, "test_size": 600}
SEED = 0
BATCH_SIZE = 64
# Random shifts of up to this many pixels in each direction.
MAX_SHIFT = 1


def shift_batch(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random offset of up to MAX_SHIFT pixels, filling with zeros."""
    size = inputs.shape[-1]
    padded = nn.functional.pad(inputs, (MAX_SHIFT,) * 4)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (inputs.shape[0], 2), generator=generator)
    shifted = torch.empty_like(inputs)
    for index, (top, left) in enumerate(offsets.tolist()):
        shifted[index] = padded[index, :, top : top + size, left : left + size]
    return shifted


def accuracy(model: nn.Module, data: Dataset) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, labels in data.batches():
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
    return 100.0 * correct / len(data)


def train(epochs: int, output: Path) -> float:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(SEED)

    train_set = load_dataset({**DIGITS_SPLIT, "split": "train", "batch_size": BATCH_SIZE}, EXAMPLES, "digits_train")
    test_set = load_dataset({**DIGITS_SPLIT, "split": "test", "batch_size": 256}, EXAMPLES, "digits_test")
    inputs = torch.from_numpy(train_set.inputs)
    labels = torch.from_numpy(train_set.labels)

    model = build_model(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = -(-len(train_set) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=epochs, steps_per_epoch=steps_per_epoch)
    loss_function = nn.CrossEntropyLoss(label_smoothing=0.05)

    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_function(model(shift_batch(inputs[batch], generator)), labels[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss) * len(batch)
        log.info("epoch %d: loss %.4f", epoch + 1, total_loss / len(train_set))

    test_accuracy = accuracy(model, test_set)
    torch.save(model.state_dict(), output)
    log.info("fp32 top-1 on the %d test images: %.2f%%; wrote %s", len(test_set), test_accuracy, output)
    return test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="passes over the 1197 training images")
    parser.add_argument("--output", type=Path, default=EXAMPLES / "digits_resnet.pt", help="state_dict file to write")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    train(args.epochs, args.output)
    log.info("trained in %.1f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
