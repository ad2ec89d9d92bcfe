"""Agreeing on the model before round 1: every client's data must fit one input shape.

Each client describes its data (input shape, class count, examples, class names); the
server checks the descriptions against each other and against its test set, and builds
the model from the result. A mismatch fails the run before any training, naming the
client that differs from the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from fedmodel.data.sources.base import SourceData
from fedmodel.data.sources.validation import MAX_INFERRED_CLASSES, DataError


@dataclass(frozen=True)
class DataDescription:
    """What a client tells the server about its data (no examples, no labels)."""

    input_shape: tuple[int, ...]
    num_classes: int
    num_examples: int
    class_names: tuple[str, ...] = ()
    origin: str = ""

    @classmethod
    def of(cls, source: SourceData) -> DataDescription:
        return cls(
            input_shape=source.input_shape,
            num_classes=source.num_classes,
            num_examples=len(source.train),
            class_names=source.class_names,
            origin=source.origin,
        )


@dataclass(frozen=True)
class FederationData:
    """The agreed model input: shape of one example, number of classes, class names."""

    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] = ()


def agree(clients: Mapping[str, DataDescription], *, num_classes: int = 0) -> FederationData:
    """The federation's input shape and class count, checked across ``clients``.

    Parameters
    ----------
    clients : mapping of client name to DataDescription
        Every client with usable data; names appear in the messages.
    num_classes : int
        The configured class count (run-config ``num-classes``); 0 infers it as the
        largest client class count.

    The input shape and the class names (image folders) held by most clients are the
    reference; a client that differs fails the run, named.
    """
    if not clients:
        raise DataError("no client has usable data")
    shape = _majority(d.input_shape for d in clients.values())
    for name, description in clients.items():
        if description.input_shape != shape:
            raise DataError(
                f"{name}: examples have shape {description.input_shape} but the other clients' "
                f"have {shape}; every client's data must have the same input shape"
            )
    named = [d.class_names for d in clients.values() if d.class_names]
    class_names = _majority(named) if named else ()
    for name, description in clients.items():
        if description.class_names and description.class_names != class_names:
            advice = (
                "class ids come from sorted folder names, so every client needs the same "
                "class folders (an empty one is fine)"
            )
            raise DataError(
                f"{name}: class folders {list(description.class_names)} differ from the other "
                f"clients' {list(class_names)}; {advice}",
                public=f"{name}: its class folders ({len(description.class_names)}) differ in "
                f"name or number from the other clients' ({len(class_names)}); {advice}",
            )
    count = num_classes or max(d.num_classes for d in clients.values())
    if not num_classes and count > MAX_INFERRED_CLASSES:
        # Each client refuses such labels itself; a description claiming it is not believed.
        holder = next(n for n, d in clients.items() if d.num_classes == count)
        raise DataError(
            f"{holder}: reports {count} classes, more than {MAX_INFERRED_CLASSES} (the most "
            "inferred from labels); set run-config 'num-classes' if that many are meant",
            public=f"{holder}: reports more than {MAX_INFERRED_CLASSES} classes (the most "
            "inferred from labels); set run-config 'num-classes' if that many are meant",
        )
    for name, description in clients.items():
        if description.num_classes > count:
            raise DataError(
                f"{name}: has {description.num_classes} classes but run-config num-classes = "
                f"{count}",
                public=f"{name}: has more classes than run-config num-classes = {count}",
            )
    if class_names and not num_classes and len(class_names) != count:
        holder = next(n for n, d in clients.items() if d.num_classes == count)
        raise DataError(
            f"{holder}: labels reach {count - 1} but the image-folder clients have "
            f"{len(class_names)} classes {list(class_names)}",
            public=f"{holder}: labels are outside the image-folder clients' "
            f"{len(class_names)} classes",
        )
    if count < 2:
        raise DataError(
            "every client's labels are 0: need at least 2 classes (set run-config num-classes "
            "if some classes are missing from all clients)",
            public="the clients' data holds fewer than 2 classes: need at least 2 (set "
            "run-config num-classes if some classes are missing from all clients)",
        )
    return FederationData(input_shape=shape, num_classes=count, class_names=class_names)


def check_test_set(test: SourceData, federation: FederationData) -> None:
    """The server's test set must fit the clients' model."""
    if test.input_shape != federation.input_shape:
        raise DataError(
            f"{test.origin} (test-data): examples have shape {test.input_shape} but the "
            f"clients' have {federation.input_shape}"
        )
    if test.class_names and federation.class_names and test.class_names != federation.class_names:
        raise DataError(
            f"{test.origin} (test-data): class folders {list(test.class_names)} differ from the "
            f"clients' {list(federation.class_names)}",
            public=f"{test.origin} (test-data): its class folders ({len(test.class_names)}) "
            f"differ in name or number from the clients' ({len(federation.class_names)})",
        )
    top = int(test.train.labels.max())
    if top >= federation.num_classes:
        index = int(test.train.labels.argmax())
        raise DataError(
            f"{test.origin} (test-data): label {index} is {top}, outside the clients' classes "
            f"0..{federation.num_classes - 1}",
            public=f"{test.origin} (test-data): label {index} is outside the clients' classes "
            f"0..{federation.num_classes - 1}",
        )


def _majority(values):
    counts = Counter(values)
    return max(counts, key=counts.get)  # first seen wins a tie


def check_fits(source: SourceData, federation: FederationData) -> None:
    """A client's data must fit the model the server built.

    A node that joined after the check before round 1 was never asked; this is its
    check, on the shape and class count that travel with every training message.
    """
    if source.input_shape != federation.input_shape:
        raise DataError(
            f"{source.origin}: examples have shape {source.input_shape} but the federation's "
            f"model takes {federation.input_shape}"
        )
    if source.num_classes > federation.num_classes:
        raise DataError(
            f"{source.origin}: has {source.num_classes} classes but the federation's model "
            f"has {federation.num_classes}",
            public=f"{source.origin}: has more classes than the federation's model "
            f"({federation.num_classes})",
        )
