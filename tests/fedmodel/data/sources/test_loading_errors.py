"""Every bad input of the issue fails before training, naming the place and the problem."""

import importlib
import re
import sys

import numpy as np
import pytest
from PIL import Image

from fedmodel.data.sources import DataError, DataOptions, load_source
from fedmodel.data.sources import arrays as arrays_module

X = np.random.default_rng(1).random((12, 4), dtype=np.float32)
Y = np.arange(12) % 3


def _npz(path, **arrays):
    np.savez(path / "d.npz", **{"x": X, "y": Y, **arrays})
    return path / "d.npz"


def _csv(path, text):
    (path / "t.csv").write_text(text)
    return path / "t.csv"


def _images(path, *images):
    for n, (folder, image) in enumerate(images):
        (path / "imgs" / folder).mkdir(parents=True, exist_ok=True)
        image.save(path / "imgs" / folder / f"{n}.png")
    return path / "imgs"


def _loader(path, body):
    (path / "bad_loader.py").write_text("import numpy as np, torch\n" + body)
    return "bad_loader:load"


NAN_X = X.copy()
NAN_X[7, 2] = np.nan

CASES = {
    # missing or unreadable file
    "missing": (lambda p: p / "nope.npz", r"nope.npz: no such file or folder"),
    "not a zip": (
        lambda p: (p / "d.npz").write_bytes(b"garbage") and p / "d.npz",
        r"d.npz: cannot read as .npz",
    ),
    "truncated npy": (
        lambda p: _truncated_npy_folder(p),
        r"x.npy: file is truncated",
    ),
    "csv not utf-8": (
        lambda p: (p / "t.csv").write_bytes(b"a,label\n\xff\xfe,1\n") and p / "t.csv",
        r"t.csv: not UTF-8 text",
    ),
    "corrupt image": (
        lambda p: _corrupt_image(p),
        r"0.png: unreadable image",
    ),
    # unknown format
    "unknown suffix": (
        lambda p: (p / "d.txt").write_text("1,2") and p / "d.txt",
        r"d.txt: unknown format '.txt'; expected .npz archive, .csv table",
    ),
    "lone npy": (
        lambda p: np.save(p / "x.npy", X) or p / "x.npy",
        r"x.npy: a single .npy holds one array; put x.npy \(features\) and y.npy",
    ),
    "text in image folder": (
        lambda p: _text_in_image_folder(p),
        r"notes.txt: not a PNG or JPEG image \(unknown format\)",
    ),
    "npz without the arrays": (
        lambda p: np.savez(p / "d.npz", a=X, b=Y) or p / "d.npz",
        r"d.npz: has no array 'x' \(arrays found: \['a', 'b'\]\); set run-config 'x-key'",
    ),
    "csv without the label column": (
        lambda p: _csv(p, "a,b\n1,2\n"),
        r"t.csv: no column 'label' \(columns: \['a', 'b'\]\); set run-config 'label-column'",
    ),
    # non-numeric features
    "csv text cell": (
        lambda p: _csv(p, "f0,f1,label\n1,2,0\n3,abc,1\n"),
        r"t.csv, line 3, column 'f1': 'abc' is not a number",
    ),
    "npz strings": (
        lambda p: _npz(p, x=np.array([["a", "b"]] * 12)),
        r"d.npz\['x'\]: features have dtype <U1; they must be numeric",
    ),
    "npz objects": (
        lambda p: _npz(p, x=np.array([{"a": 1}] * 12, dtype=object)),
        r"d.npz\['x'\]: holds Python objects",
    ),
    # NaN or Inf
    "npz nan": (lambda p: _npz(p, x=NAN_X), r"d.npz\['x'\]: example 7 holds nan"),
    "csv inf": (
        lambda p: _csv(p, "f0,label\n1,0\n2,1\ninf,0\n"),
        r"t.csv, line 4, column 'f0': inf \(features must be finite\)",
    ),
    "memory-mapped nan": (
        lambda p: _npy_folder(p, NAN_X, Y),
        r"folder/x.npy: example 7 holds nan",
    ),
    # labels non-integer or outside 0..C-1
    "npz fractional label": (
        lambda p: _npz(p, y=np.where(np.arange(12) == 2, 1.5, 1.0)),
        r"d.npz\['y'\]: label 2 is 1.5, not an integer",
    ),
    "csv fractional label": (
        lambda p: _csv(p, "f0,label\n1,0\n2,2.5\n"),
        r"t.csv, line 3, column 'label': label '2.5' is not an integer",
    ),
    "negative label": (
        lambda p: _npz(p, y=np.where(np.arange(12) == 4, -1, 0)),
        r"d.npz\['y'\]: label 4 is -1; labels must be >= 0",
    ),
    "label above num-classes": (
        lambda p: _npz(p, y=np.where(np.arange(12) == 5, 3, 0)),
        r"d.npz\['y'\]: label 5 is 3, outside 0..2 \(run-config num-classes = 3\)",
    ),
    "csv label above num-classes": (
        lambda p: _csv(p, "f0,label\n1,0\n2,7\n"),
        r"t.csv, line 3, column 'label': label 7 is outside 0..2",
    ),
    # empty dataset
    "npz empty": (
        lambda p: _npz(p, x=X[:0], y=Y[:0]),
        r"d.npz\['x'\]: the dataset is empty \(0 examples\)",
    ),
    "csv header only": (
        lambda p: _csv(p, "f0,label\n"),
        r"t.csv: the dataset is empty \(a header but no data rows\)",
    ),
    "image folder without images": (
        lambda p: (p / "imgs" / "a").mkdir(parents=True) or p / "imgs",
        r"imgs: the dataset is empty \(no images in 1 class folders\)",
    ),
    # x and y of different lengths
    "lengths differ": (
        lambda p: _npz(p, y=Y[:9]),
        r"d.npz: 12 examples but 9 labels; they must match",
    ),
    "csv row length": (
        lambda p: _csv(p, "f0,f1,label\n1,2,0\n1,0\n"),
        r"t.csv, line 3: 2 fields, but the header has 3",
    ),
    # images of an unexpected mode or size
    "16-bit image": (
        lambda p: _images(p, ("a", Image.fromarray(np.zeros((4, 4), dtype=np.uint16)))),
        r"0.png: image mode 'I;16' cannot be converted to 'L' without losing values",
    ),
    "image sizes differ": (
        lambda p: _images(
            p,
            ("a", Image.new("L", (4, 4))),
            ("b", Image.new("L", (5, 4))),
        ),
        r"b/1.png: image is 5x4 but .*a/0.png is 4x4; set run-config 'image-size'",
    ),
    # callables that do not import or return the wrong type
    "loader module missing": (lambda p: "no_such_module.sub:load", r"no_such_module.sub:load: "
                              r"cannot import module 'no_such_module.sub': ModuleNotFoundError"),
    "loader syntax error": (
        lambda p: _loader(p, "def load(:\n"),
        r"bad_loader:load: cannot import module 'bad_loader': SyntaxError",
    ),
    "loader function missing": (
        lambda p: _loader(p, "x = 1\n"),
        r"bad_loader:load: module 'bad_loader' has no attribute 'load'",
    ),
    "loader returns a list": (
        lambda p: _loader(p, "def load():\n    return [1, 2, 3]\n"),
        r"bad_loader:load: returned a list of length 3; expected a torch Dataset or a "
        r"\(train, test\) pair",
    ),
    "loader raises": (
        lambda p: _loader(p, "def load():\n    raise OSError('disk gone')\n"),
        r"bad_loader:load: calling it raised OSError: disk gone",
    ),
    "loader items are not pairs": (
        lambda p: _loader(p, _DATASET.format(item="torch.zeros(3)")),
        r"bad_loader:load: item 0 is a Tensor; expected a pair \(x, y\)",
    ),
    "loader item shapes differ": (
        lambda p: _loader(p, _DATASET.format(item="(torch.zeros(3 + (i == 2)), 0)")),
        r"bad_loader:load: item 2 has x of shape \(4,\) but item 0 has \(3,\)",
    ),
    "loader label not an integer": (
        lambda p: _loader(p, _DATASET.format(item="(torch.zeros(3), 'cat')")),
        r"bad_loader:load: item 0 has label 'cat'; expected one integer",
    ),
    "loader nan": (
        lambda p: _loader(p, _DATASET.format(item="(torch.full((3,), _value(i)), 0)")),
        r"bad_loader:load: example 3 holds inf",
    ),
}

_DATASET = (
    "from torch.utils.data import Dataset\n"
    "class D(Dataset):\n"
    "    def __len__(self): return 5\n"
    "    def __getitem__(self, i): return {item}\n"
    "def _value(i): return float('inf') if i == 3 else 0.0\n"
    "def load():\n"
    "    return D()\n"
)


def _truncated_npy_folder(path):
    (path / "folder").mkdir()
    np.save(path / "folder" / "x.npy", X)
    data = (path / "folder" / "x.npy").read_bytes()
    (path / "folder" / "x.npy").write_bytes(data[:-20])
    np.save(path / "folder" / "y.npy", Y)
    return path / "folder"


def _npy_folder(path, x, y):
    (path / "folder").mkdir()
    np.save(path / "folder" / "x.npy", x)
    np.save(path / "folder" / "y.npy", y)
    return path / "folder"


def _corrupt_image(path):
    (path / "imgs" / "a").mkdir(parents=True)
    (path / "imgs" / "a" / "0.png").write_bytes(b"\x89PNG not really")
    return path / "imgs"


def _text_in_image_folder(path):
    folder = _images(path, ("a", Image.new("L", (4, 4))))
    (folder / "a" / "notes.txt").write_text("hello")
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_naming_the_place_and_the_problem(case, tmp_path, monkeypatch):
    make, message = CASES[case]
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("bad_loader", None)  # each case writes its own bad_loader.py
    importlib.invalidate_caches()
    if case == "memory-mapped nan":
        monkeypatch.setattr(arrays_module, "ON_DISK_MIN_BYTES", 1)
    spec = make(tmp_path)
    options = DataOptions(num_classes=3 if "num-classes" in case else 0)
    with pytest.raises(DataError) as error:
        load_source(str(spec), options=options)
    assert re.search(message, str(error.value)), str(error.value)
    if not str(spec).endswith(":load"):
        assert str(spec).split("/")[-1] in str(error.value)  # the message names the file


def test_empty_python_dataset_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "empty_loader.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def load():\n    return TensorDataset(torch.zeros(0, 3), torch.zeros(0))\n"
    )
    with pytest.raises(DataError, match=r"empty_loader:load \(features\): the dataset is empty"):
        load_source("empty_loader:load", options=DataOptions())
